"""Tests for xtal2dos_jax.input_pipeline.readers: the container, label validation, the ASE-db and
Mat2Spec
readers, and load_raw_dataset (the phononDoS CSV, structure-folder and split tests have
files of their own)."""

import csv
import json
import logging
import pickle

import ase
import ase.db
import chex
import ml_collections
import numpy as np
import pytest

from configs import smoke
from ase.build import bulk

from xtal2dos_jax.core.errors import InputError
from xtal2dos_jax.input_pipeline import graph_cache, readers
from xtal2dos_jax.input_pipeline.readers import validation
from xtal2dos_jax.training.config_check import validate

L_Y = 8


def _crystals():
  return {
      "mp-1": bulk("NaCl", "rocksalt", a=5.64),
      "mp-2": bulk("Si", "diamond", a=5.43),
      "mp-3": bulk("Cu", "fcc", a=3.6),
  }


def _pmg_dict(atoms):
  """pymatgen Structure.as_dict() layout, written by hand (no pymatgen)."""
  frac = atoms.get_scaled_positions(wrap=False)
  return {
      "@module": "pymatgen.core.structure", "@class": "Structure",
      "charge": 0, "properties": {},
      "lattice": {"matrix": atoms.cell.array.tolist(),
                  "pbc": [True, True, True]},
      "sites": [{"species": [{"element": s, "occu": 1}], "abc": f.tolist(),
                 "xyz": p.tolist(), "label": s, "properties": {}}
                for s, f, p in zip(atoms.get_chemical_symbols(), frac,
                                   atoms.positions)],
  }


def _labels(n, l_y=L_Y):
  return (np.arange(n * l_y, dtype=np.float32).reshape(n, l_y) + 1.0) / 10


def _data_config(**overrides):
  cfg = ml_collections.ConfigDict(dict(
      format="ase_db", path="", label_key="dos", l_y=L_Y, grid_start=0.0,
      grid_stop=float(L_Y - 1)))
  cfg.update(overrides)
  return cfg


# ---------------------------------------------------------------------------
# RawDataset, label validation.


def test_raw_dataset_len_and_subset():
  crystals = _crystals()
  ds = readers.RawDataset(
      ids=list(crystals), structures=list(crystals.values()),
      labels=_labels(3), grid=np.arange(L_Y, dtype=np.float32),
      extras={"cv300": np.array([1.0, 2.0, 3.0])}, skipped=[("x", "bad")])
  assert len(ds) == 3
  sub = ds.subset([2, 0])
  assert sub.ids == ["mp-3", "mp-1"]
  assert sub.structures[0] is crystals["mp-3"]
  chex.assert_trees_all_close(sub.labels, _labels(3)[[2, 0]])
  chex.assert_trees_all_close(sub.extras["cv300"], np.array([3.0, 1.0]))
  assert sub.skipped == [("x", "bad")] and len(sub) == 2
  with pytest.raises(ValueError):
    readers.RawDataset(ids=["a"], structures=[])


def test_validate_labels():
  labels = _labels(5)
  labels[1, 3] = np.nan
  labels[2, 0] = -0.5
  labels[3] = 0.0
  labels[4, 2] = np.inf
  ids = ["a", "b", "c", "d", "e"]
  bad = dict(readers.validate_labels(ids, labels, L_Y, "src"))
  assert set(bad) == {"b", "c", "d", "e"}
  assert "NaN" in bad["b"] and "negative" in bad["c"]
  assert "all zero" in bad["d"] and "inf" in bad["e"]
  assert readers.validate_labels(ids[:1], labels[:1], L_Y, "src") == []
  with pytest.raises(InputError, match=r"src: .*8.*51|src: .*51.*8"):
    readers.validate_labels(ids, labels, 51, "src")
  with pytest.raises(InputError, match="src: .*2-D"):
    readers.validate_labels(ids, labels[0], L_Y, "src")


def test_summarise_skipped_groups_by_reason_and_caps_the_list():
  skipped = [(f"mp-{i}", "label is all zero") for i in range(5)] + [("mp-9", "no label")]
  line = validation.summarise_skipped(skipped, 20, "src.db")
  assert line == ("src.db: skipped 6 of 20 crystals: mp-0, mp-1, mp-2 and 2 more "
                  "(label is all zero); mp-9 (no label)")
  many = [(f"id{i}", f"reason {i}") for i in range(12)]
  line = validation.summarise_skipped(many, 12, "src")
  assert line.endswith("id9 (reason 9); ... and 2 more reasons") and "\n" not in line


# ---------------------------------------------------------------------------
# ASE db.


def _write_db(path, crystals, labels, metadata=True, extra_rows=()):
  with ase.db.connect(str(path)) as db:
    for k, (rid, atoms) in enumerate(crystals.items()):
      db.write(atoms, material_id=rid, source="test", cv300=10.0 + k,
               data={"dos": labels[k]})
    for atoms, kvp, data in extra_rows:
      db.write(atoms, data=data, **kvp)
  if metadata:
    db = ase.db.connect(str(path))
    db.metadata = {"freq_cm": list(np.arange(L_Y) * 20.0)}


def test_read_ase_db(tmp_path):
  crystals = _crystals()
  path = tmp_path / "small.db"
  _write_db(path, crystals, _labels(3), extra_rows=[
      (bulk("Al"), {"material_id": "mp-4", "cv300": 1.0}, {}),  # no label
  ])
  ds = readers.read_ase_db(str(path), l_y=L_Y)
  assert ds.ids == ["mp-1", "mp-2", "mp-3"]
  chex.assert_shape(ds.labels, (3, L_Y))
  assert ds.labels.dtype == np.float32
  chex.assert_trees_all_close(ds.labels, _labels(3))
  chex.assert_trees_all_close(ds.grid, np.arange(L_Y, dtype=np.float32) * 20)
  assert set(ds.extras) == {"cv300"}  # 'source' is a string
  chex.assert_trees_all_close(ds.extras["cv300"], np.array([10.0, 11.0, 12.0]))
  np.testing.assert_allclose(ds.structures[1].positions,
                             crystals["mp-2"].positions)
  assert ds.skipped == [("mp-4", "no data['dos'] label")]


def test_read_ase_db_without_material_id(tmp_path):
  path = tmp_path / "plain.db"
  with ase.db.connect(str(path)) as db:
    for atoms in _crystals().values():
      db.write(atoms, data={"dos": np.ones(L_Y)})
  ds = readers.read_ase_db(str(path))
  assert ds.ids == ["1", "2", "3"] and ds.grid is None


def test_read_ase_db_errors(tmp_path):
  path = tmp_path / "small.db"
  _write_db(path, _crystals(), _labels(3))
  with pytest.raises(InputError, match=f"{path}: .*length 8.*l_y = 51"):
    readers.read_ase_db(str(path), l_y=51)
  missing = tmp_path / "missing.db"
  with pytest.raises(InputError, match="missing.db: no such file"):
    readers.read_ase_db(str(missing))
  assert not missing.exists()  # ase.db.connect would have created it
  empty = tmp_path / "empty.db"
  empty.write_bytes(b"")
  with pytest.raises(InputError, match="empty.db: file is empty"):
    readers.read_ase_db(str(empty))
  assert empty.stat().st_size == 0  # not turned into a new database
  junk = tmp_path / "junk.db"
  junk.write_bytes(b"this is not sqlite" * 100)
  with pytest.raises(InputError, match="junk.db: not a readable ASE database"):
    readers.read_ase_db(str(junk))


def test_embedded_phdos_db():
  ds = readers.read_ase_db(readers.embedded_phdos_path())
  assert len(ds) == 1024 and not ds.skipped
  assert len(set(ds.ids)) == 1024  # version 1.1: one row per material id
  chex.assert_shape(ds.labels, (1024, 51))
  chex.assert_trees_all_close(ds.grid, np.linspace(0, 1000, 51,
                                                   dtype=np.float32))
  assert {"cv300", "max_freq_cm", "imag_frac"} <= set(ds.extras)
  chex.assert_shape(ds.extras["cv300"], (1024,))
  assert np.all(ds.extras["cv300"] > 0)
  assert ds.ids[0].startswith("mp-")


def test_embedded_edos_mat2spec():
  ds = readers.read_mat2spec(readers.embedded_edos_path(), l_y=128)
  assert len(ds) == 164 and not ds.skipped
  chex.assert_shape(ds.labels, (164, 128))
  chex.assert_trees_all_close(ds.grid[[0, -1]],
                              np.array([-3.96875, 3.96875], np.float32))
  assert all(a.pbc.all() for a in ds.structures)


# ---------------------------------------------------------------------------
# Mat2Spec layout.


def _write_mat2spec(root, crystals, labels, structures="json"):
  label_dir = root / "label_edos"
  label_dir.mkdir(parents=True)
  with open(label_dir / "mpids.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["mpid"])
    for rid in crystals:
      w.writerow([rid])
  np.save(label_dir / f"total_dos_{labels.shape[1]}.npy", labels)
  np.save(label_dir / "energies_ev.npy",
          np.linspace(-1, 1, labels.shape[1]).astype(np.float32))
  if structures == "json":
    sdir = root / "materials_with_edos"
    sdir.mkdir()
    for rid, atoms in crystals.items():
      (sdir / f"dos_{rid}.json").write_text(
          json.dumps({"structure": _pmg_dict(atoms)}))
  elif structures == "pkl_dict":
    with open(root / "structures.pkl", "wb") as f:
      pickle.dump({rid: _pmg_dict(a) for rid, a in crystals.items()}, f)
  elif structures == "pkl_list":
    with open(root / "structures.pkl", "wb") as f:
      pickle.dump(list(crystals.values()), f)  # ase.Atoms objects


@pytest.mark.parametrize("variant", ["json", "pkl_dict", "pkl_list"])
def test_read_mat2spec(tmp_path, variant):
  crystals = _crystals()
  _write_mat2spec(tmp_path, crystals, _labels(3), structures=variant)
  ds = readers.read_mat2spec(str(tmp_path), l_y=L_Y)
  assert ds.ids == list(crystals) and not ds.skipped
  chex.assert_trees_all_close(ds.labels, _labels(3))
  chex.assert_trees_all_close(ds.grid, np.linspace(-1, 1, L_Y,
                                                   dtype=np.float32))
  for atoms, ref in zip(ds.structures, crystals.values()):
    assert atoms.get_chemical_symbols() == ref.get_chemical_symbols()
    np.testing.assert_allclose(atoms.positions, ref.positions, atol=1e-9)
    np.testing.assert_allclose(atoms.cell.array, ref.cell.array)


def test_read_mat2spec_missing_and_broken_structures(tmp_path):
  crystals = _crystals()
  _write_mat2spec(tmp_path, crystals, _labels(3))
  (tmp_path / "materials_with_edos" / "dos_mp-2.json").unlink()
  (tmp_path / "materials_with_edos" / "dos_mp-3.json").write_text("{trunc")
  ds = readers.read_mat2spec(str(tmp_path))
  assert ds.ids == ["mp-1"]
  chex.assert_trees_all_close(ds.labels, _labels(3)[:1])
  reasons = dict(ds.skipped)
  assert "dos_mp-2.json is missing" in reasons["mp-2"]
  assert "dos_mp-3.json" in reasons["mp-3"] and "JSON" in reasons["mp-3"]


def test_read_mat2spec_row_count_and_duplicates(tmp_path):
  crystals = _crystals()
  _write_mat2spec(tmp_path / "a", crystals, _labels(4))
  with pytest.raises(InputError,
                     match=r"total_dos_8\.npy: has 4 label rows .* 3 ids"):
    readers.read_mat2spec(str(tmp_path / "a"))
  _write_mat2spec(tmp_path / "b", crystals, _labels(3))
  with open(tmp_path / "b" / "label_edos" / "mpids.csv", "w") as f:
    f.write("mpid\nmp-1\nmp-2\nmp-1\n")
  with pytest.raises(InputError, match="duplicate id 'mp-1'"):
    readers.read_mat2spec(str(tmp_path / "b"))
  with pytest.raises(InputError, match=r"total_dos_8\.npy: .*8.*l_y = 128"):
    readers.read_mat2spec(str(tmp_path / "b"), l_y=128)
  with pytest.raises(InputError, match="mpids.csv"):
    readers.read_mat2spec(str(tmp_path))  # no label_edos in the root


def test_read_mat2spec_pickle_problems(tmp_path):
  crystals = _crystals()
  _write_mat2spec(tmp_path / "a", crystals, _labels(3), structures="pkl_list")
  with open(tmp_path / "a" / "structures.pkl", "wb") as f:
    pickle.dump([bulk("Cu")], f)
  with pytest.raises(InputError, match=r"structures\.pkl: holds 1 .* 3 ids"):
    readers.read_mat2spec(str(tmp_path / "a"))
  # A pickle of objects from a module we do not have (e.g. pymatgen).
  (tmp_path / "a" / "structures.pkl").write_bytes(
      b"cno_such_module_xyz\nStructure\n(tR.")
  with pytest.raises(InputError, match="no_such_module_xyz"):
    readers.read_mat2spec(str(tmp_path / "a"))
  # A dict missing one id: that id is skipped, the rest read.
  with open(tmp_path / "a" / "structures.pkl", "wb") as f:
    pickle.dump({"mp-1": crystals["mp-1"], "mp-3": {"bad": 1}}, f)
  ds = readers.read_mat2spec(str(tmp_path / "a"))
  assert ds.ids == ["mp-1"]
  reasons = dict(ds.skipped)
  assert "no structure" in reasons["mp-2"]
  assert "unrecognised" in reasons["mp-3"]


# ---------------------------------------------------------------------------
# load_raw_dataset.


def test_load_raw_dataset_skips_and_warns(tmp_path, caplog):
  crystals = _crystals()
  labels = _labels(3)
  labels[1, 0] = np.nan  # mp-2: bad label
  overlapping = ase.Atoms("H2", positions=[[0, 0, 0], [0.01, 0, 0]],
                          cell=np.eye(3) * 3, pbc=True)
  path = tmp_path / "d.db"
  _write_db(path, crystals, labels, extra_rows=[
      (overlapping, {"material_id": "mp-5", "cv300": 1.0},
       {"dos": np.ones(L_Y)}),
      (bulk("NaCl", "rocksalt", a=5.7), {"material_id": "mp-1", "cv300": 1.0},
       {"dos": np.ones(L_Y)}),  # same material again: skipped
  ])
  with caplog.at_level(logging.WARNING, logger="xtal2dos_jax.input_pipeline.readers"):
    ds = readers.load_raw_dataset(_data_config(path=str(path),
                                                grid_stop=20.0 * (L_Y - 1)))
  # Overlapping atoms are found at featurisation (it has the distances anyway).
  assert ds.ids == ["mp-1", "mp-3", "mp-5"]
  chex.assert_trees_all_close(ds.labels[:2], labels[[0, 2]])
  chex.assert_trees_all_close(ds.extras["cv300"], np.array([10.0, 12.0, 1.0]))
  reasons = dict(ds.skipped)
  assert "NaN" in reasons["mp-2"]
  assert "duplicate id" in reasons["mp-1"]
  warnings = [r.getMessage() for r in caplog.records]
  assert len(warnings) == 1
  assert "skipped 2 of 5 crystals" in warnings[0]
  assert "mp-2 (" in warnings[0]
  _, featurisation_skipped = graph_cache.featurize_structures(ds.ids, ds.structures, 8.0, 12)
  assert [i for i, _ in featurisation_skipped] == ["mp-5"]
  assert "overlap" in featurisation_skipped[0][1]


def test_load_raw_dataset_refuses_a_label_grid_other_than_the_configs(tmp_path):
  """Training on the data's grid while predict uses the config's would mislabel every
  prediction's x-axis, so a mismatch is a one-line error saying what to set."""
  path = tmp_path / "d.db"
  _write_db(path, _crystals(), _labels(3))          # metadata freq_cm: 0, 20, .., 140
  with pytest.raises(InputError) as info:
    readers.load_raw_dataset(_data_config(path=str(path)))  # config grid 0..7
  message = str(info.value)
  assert message == (
      f"{path}: label grid 0..140 (8 points) does not match the config's grid 0..7 "
      "(8 points); set config.data.grid_start=0, config.data.grid_stop=140 and "
      "config.data.l_y=8")
  ds = readers.load_raw_dataset(_data_config(path=str(path), grid_stop=140.0))
  chex.assert_trees_all_close(ds.grid, np.arange(L_Y, dtype=np.float32) * 20)


def test_load_raw_dataset_names_an_uneven_label_grid(tmp_path):
  path = tmp_path / "d.db"
  _write_db(path, _crystals(), _labels(3), metadata=False)
  ase.db.connect(str(path)).metadata = {"freq_cm": [0.0, 1, 2, 4, 8, 16, 32, 64]}
  with pytest.raises(InputError, match=r"label grid 0..64 \(8 points\) \(not evenly spaced"):
    readers.load_raw_dataset(_data_config(path=str(path), grid_stop=64.0))


def test_load_raw_dataset_errors(tmp_path):
  crystals = _crystals()
  path = tmp_path / "d.db"
  _write_db(path, crystals, _labels(3), extra_rows=[
      (bulk("Cu"), {"material_id": "mp-1"}, {"dos": np.ones(L_Y)})])
  with pytest.raises(InputError, match="duplicate id 'mp-1' for different"):
    readers.load_raw_dataset(_data_config(path=str(path)))
  config = smoke.get_config()
  config.data.format = "xyz"
  with pytest.raises(InputError, match="config.data.format: unknown format "
                     "'xyz'; expected one of ase_db"):
    validate(config)
  with pytest.raises(InputError, match="missing.csv: no such file"):
    readers.load_raw_dataset(_data_config(format="phonondos_csv",
                                           path=str(tmp_path / "missing.csv")))
  zero = tmp_path / "zero.db"
  _write_db(zero, crystals, np.zeros((3, L_Y), np.float32))
  with pytest.raises(InputError, match="zero.db: no usable crystals among 3"):
    readers.load_raw_dataset(_data_config(path=str(zero)))
  nolabel = tmp_path / "nolabel.db"
  with ase.db.connect(str(nolabel)) as db:
    db.write(bulk("Cu"))
  with pytest.raises(InputError, match="nolabel.db: has no labels"):
    readers.load_raw_dataset(_data_config(path=str(nolabel)))


def test_load_raw_dataset_formats(tmp_path):
  crystals = _crystals()
  _write_mat2spec(tmp_path / "m2s", crystals, _labels(3))
  ds = readers.load_raw_dataset(_data_config(format="mat2spec", path=str(tmp_path / "m2s"),
                                              grid_start=-1.0, grid_stop=1.0))
  assert ds.ids == list(crystals)
  csv_path = tmp_path / "p.csv"
  with open(csv_path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["structure", "phfreq", "phdos"])
    w.writerow([repr(bulk("Si", "diamond", a=5.43).todict()),
                "[0, 7]", "[1, 1]"])
  ds = readers.load_raw_dataset(_data_config(format="phonondos_csv",
                                              path=str(csv_path)))
  assert ds.ids == ["0"]
  chex.assert_trees_all_close(ds.labels, np.ones((1, L_Y), np.float32))


def test_load_embedded_defaults():
  from configs import phdos, phdos_chgnet  # pylint: disable=g-import-not-at-top
  ds = readers.load_raw_dataset(phdos.get_config().data)
  assert ds.source == readers.embedded_dfpt_path()
  assert ds.labels.shape == (1521, 51) and not ds.skipped
  chgnet = readers.load_raw_dataset(phdos_chgnet.get_config().data)
  assert chgnet.source == readers.embedded_phdos_path()
  assert chgnet.labels.shape == (1024, 51) and not chgnet.skipped
  edos = readers.load_raw_dataset(_data_config(
      format="mat2spec", l_y=128, grid_start=-3.96875, grid_stop=3.96875))
  assert len(edos) == 164 and edos.labels.shape == (164, 128)
