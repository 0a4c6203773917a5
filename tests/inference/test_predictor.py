"""The Predictor API, exported models and the predict outputs, on one tiny trained run."""
import csv
import json
import os
import shutil
import subprocess
import sys

import ase
import ase.io
import chex
import jax
import numpy as np
import pytest
from ase.build import bulk

from configs import smoke
from xtal2dos_jax import Predictor
from xtal2dos_jax.core.errors import InputError
from xtal2dos_jax.evaluation import uncertainty as uncertainty_lib
from xtal2dos_jax.inference import export, pretrained
from xtal2dos_jax.inference import predictor as predictor_lib
from xtal2dos_jax.physics import thermodynamics
from xtal2dos_jax.training import restore, train

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A finished one-epoch smoke run on 30 crystals of the embedded DFPT set."""
  config = smoke.get_config()
  config.data.limit = 30
  config.train.num_epochs = 1
  workdir = str(tmp_path_factory.mktemp("predictor") / "run")
  train.train_and_evaluate(config, workdir)
  return workdir


@pytest.fixture(scope="module")
def exports(run, tmp_path_factory):
  """The run exported twice (float32, float16) from a copy of its workdir that is deleted
  afterwards: loading the exports cannot read the workdir."""
  root = tmp_path_factory.mktemp("exports")
  copy = str(root / "workdir_copy")
  shutil.copytree(run, copy)
  export.export_run(copy, str(root / "models" / "f32"))
  export.export_run(copy, str(root / "models" / "f16"), dtype="float16")
  shutil.rmtree(copy)
  return str(root / "models")


def _structures():
  return [bulk("NaCl", "rocksalt", a=5.64), bulk("Si", "diamond", a=5.43),
          bulk("Mg", "hcp", a=3.2, c=5.2)]


def test_workdir_predictions_match_the_csv_and_thermodynamics(run, tmp_path):
  for k, atoms in enumerate(_structures()):
    ase.io.write(tmp_path / f"s{k}.cif", atoms)
  out = predictor_lib.predict_structures(run, str(tmp_path / "*.cif"), str(tmp_path / "out"))
  p = Predictor(run)
  ids = [str(tmp_path / f"s{k}.cif") for k in range(3)]
  pred = p.predict(_structures(), ids=ids)
  assert pred.ids == out["ids"] == ids and pred.num_members == 1
  assert pred.formulas == ["ClNa", "Si2", "Mg2"]
  with open(tmp_path / "out" / "predictions.csv") as f:
    rows = list(csv.DictReader(f))
  assert [r["id"] for r in rows] == ids and [r["formula"] for r in rows] == pred.formulas
  for name, values in pred.columns().items():
    np.testing.assert_allclose([float(r[name]) for r in rows], values, rtol=1e-5, atol=1e-9,
                               err_msg=name)
  dos_csv = np.array([[float(v) for k, v in r.items() if k.startswith("dos@")] for r in rows])
  np.testing.assert_allclose(dos_csv, pred.dos_mean, rtol=1e-5)
  # One model: no spread. The DoS is in modes per cm^-1 per cell (3N modes), and C_v(300 K)
  # is the thermodynamics module's of that DoS (one value; physics.heat_capacity's is gone).
  assert np.all(pred.dos_std == 0) and np.all(pred.thermodynamics_std["cv300_J_per_K_mol"] == 0)
  chex.assert_trees_all_close(pred.dos_mean.sum(1) * 20.0, 3.0 * pred.n_atoms, rtol=1e-4)
  expected = thermodynamics.phonon_thermodynamics(pred.grid, pred.dos_mean, pred.n_atoms, 300.0)
  chex.assert_trees_all_close(pred.thermodynamics["cv300_J_per_K_mol"],
                              expected["cv_J_per_K_mol"], rtol=1e-6)
  assert {"cv300_J_per_K_mol_std", "debye_temperature_nu2_K_std", "flag"} <= set(rows[0])
  with np.load(tmp_path / "out" / "predictions.npz") as z:
    chex.assert_shape(z["dos_members"], (1, 3, 51))
    chex.assert_shape(z["cv_J_per_K_mol"], (3, 101))
    chex.assert_trees_all_close(z["cv_J_per_K_mol"][:, 30], pred.thermodynamics["cv300_J_per_K_mol"])
  assert sorted(os.listdir(tmp_path / "out" / "plots")) == [f"000{k}_s{k}.cif.png" for k in range(3)]
  assert os.path.getsize(tmp_path / "out" / "predictions.png") > 1000
  with pytest.raises(InputError, match="already holds predictions.csv"):
    predictor_lib.predict_structures(run, str(tmp_path / "*.cif"), str(tmp_path / "out"))


def test_permuting_the_inputs_permutes_the_outputs(run):
  p = Predictor(run)
  a = p.predict(_structures(), ids=["a", "b", "c"])
  b = p.predict(_structures()[::-1], ids=["c", "b", "a"])
  assert b.ids == ["c", "b", "a"] and b.formulas == a.formulas[::-1]
  chex.assert_trees_all_close(b.dos_mean, a.dos_mean[::-1], rtol=1e-5, atol=1e-8)
  chex.assert_trees_all_close(b.thermodynamics["cv300_J_per_K_mol"],
                              a.thermodynamics["cv300_J_per_K_mol"][::-1], rtol=1e-5)
  assert len(p._runs) == 1  # one budget: restored (and compiled) once


def test_std_over_members_is_numpys(run, monkeypatch):
  """Three fake members: the mean / std of the DoS and of C_v(300 K) are numpy's over the
  members' own values."""
  real = restore.predict_members
  shapes = np.random.default_rng(0).dirichlet(np.ones(51), 2).astype(np.float32)

  def three(loaded, part, budget):
    one = real(loaded, part, budget)[0]
    return np.stack([one, 0.5 * one + 0.5 * shapes[0], 0.3 * one + 0.7 * shapes[1]])

  monkeypatch.setattr(restore, "predict_members", three)
  pred = Predictor(run).predict(_structures()[:2])
  assert pred.num_members == 3
  members = pred.dos_members
  chex.assert_shape(members, (3, 2, 51))
  assert np.all(np.abs(members[0] - members[1]) > 0)
  chex.assert_trees_all_close(pred.dos_mean, members.mean(0), rtol=1e-6)
  chex.assert_trees_all_close(pred.dos_std, np.std(members, axis=0), rtol=1e-5, atol=1e-9)
  cv = np.stack([thermodynamics.phonon_thermodynamics(pred.grid, m, pred.n_atoms, 300.0)
                 ["cv_J_per_K_mol"] for m in members])
  chex.assert_trees_all_close(pred.thermodynamics["cv300_J_per_K_mol"], cv.mean(0), rtol=1e-9)
  chex.assert_trees_all_close(pred.thermodynamics_std["cv300_J_per_K_mol"], cv.std(0),
                              rtol=1e-6)
  assert np.all(pred.thermodynamics_std["cv300_J_per_K_mol"] > 0)


def test_exported_model_predicts_as_the_workdir(run, exports):
  structures = _structures()
  ref = Predictor(run).predict(structures)
  assert Predictor.available(exports) == ["f16", "f32"]
  f32 = Predictor.pretrained("f32", dir=exports).predict(structures)
  np.testing.assert_array_equal(f32.dos_members, ref.dos_members)
  f16 = Predictor.pretrained("f16", dir=exports).predict(structures)
  assert f16.dos_mean.dtype == np.float32
  chex.assert_trees_all_close(f16.dos_mean, ref.dos_mean, rtol=2e-2, atol=2e-2 * ref.dos_mean.max())
  card = open(os.path.join(exports, "f32", "model_card.md")).read()
  assert "train 24, validation 3, test 3" in card and "| original |" in card
  setup = json.load(open(os.path.join(exports, "f32", "setup.json")))
  assert setup["num_members"] == 1 and setup["param_dtype"] == "float32"
  assert len(json.load(open(os.path.join(exports, "f32", "test_ids.json")))) == 3
  assert (os.path.getsize(os.path.join(exports, "f16", pretrained.PARAMS_FILE))
          < 0.6 * os.path.getsize(os.path.join(exports, "f32", pretrained.PARAMS_FILE)))


def test_bad_and_unseen_structures_are_reported_and_the_rest_predicted(exports, monkeypatch):
  monkeypatch.setenv(pretrained.DIR_ENV, exports)
  p = Predictor.pretrained("f32")
  assert "Au" not in p.training_elements and "Si" in p.training_elements
  lonely = ase.Atoms("Na", cell=[20, 20, 20], pbc=True)       # no neighbour within the radius
  molecule = ase.Atoms("Na2", positions=[[0, 0, 0], [0, 0, 3]])  # not periodic
  si = bulk("Si", "diamond", a=5.43)
  pred = p.predict([si, lonely, {"sites": "x"}, bulk("Au", "fcc", a=4.08), molecule, si.todict()],
                   ids=["si", "lonely", "dict", "au", "molecule", "si_dict"])
  assert pred.ids == ["si", "au", "si_dict"]
  assert pred.flags == ["", "unseen_elements:Au", ""]
  reasons = dict(pred.skipped)
  assert set(reasons) == {"lonely", "dict", "molecule"}
  assert "no neighbour" in reasons["lonely"] and "periodic" in reasons["molecule"]
  np.testing.assert_array_equal(pred.dos_mean[0], pred.dos_mean[2])
  with pytest.raises(InputError, match="no structure could be read"):
    p.predict([lonely])


def test_missing_model_names_the_available_ones(exports, tmp_path):
  with pytest.raises(InputError, match="nope: no such model .* available: f16, f32"):
    Predictor.pretrained("nope", dir=exports)
  with pytest.raises(InputError, match="no exported model in"):
    Predictor.pretrained(dir=str(tmp_path))
  assert pretrained.DEFAULT == "phdos_dfpt"


def test_export_refuses_to_overwrite(run, exports, tmp_path):
  target = os.path.join(exports, "f32")
  before = {f: os.path.getmtime(os.path.join(target, f)) for f in os.listdir(target)}
  with pytest.raises(InputError, match="already exists"):
    export.export_run(run, target)
  (tmp_path / "empty").mkdir()
  with pytest.raises(InputError, match="already exists"):
    export.export_run(run, str(tmp_path / "empty"))
  assert {f: os.path.getmtime(os.path.join(target, f)) for f in os.listdir(target)} == before


def test_exported_ensemble_vmaps_over_the_member_axis(exports, tmp_path):
  """Parameters with a leading member axis K = config.train.ensemble_size: each member's
  prediction is the single model's with that member's parameters; the spread threshold
  stored with the model flags the crystals above it."""
  single = pretrained.load_exported(os.path.join(exports, "f32"))
  scales = [1.0, 0.9, 1.1]
  stacked = jax.tree.map(lambda x: np.stack([x * s for s in scales]), single.params)
  path = str(tmp_path / "ens")
  shutil.copytree(os.path.join(exports, "f32"), path)
  config = json.load(open(os.path.join(path, "config.json")))
  config["train"]["ensemble_size"] = 3
  json.dump(config, open(os.path.join(path, "config.json"), "w"))
  setup = json.load(open(os.path.join(path, "setup.json")))
  setup["spread_threshold"] = 0.0
  json.dump(setup, open(os.path.join(path, "setup.json"), "w"))
  pretrained.save_params(os.path.join(path, pretrained.PARAMS_FILE), stacked)
  ens = Predictor.from_exported(path).predict(_structures())
  assert ens.num_members == 3
  assert [f.split(";")[-1] for f in ens.flags] == ["high_spread"] * 3
  for k, s in enumerate(scales):
    one = Predictor(exported=pretrained.ExportedModel(
        **{**vars(single), "params": jax.tree.map(lambda x: x * s, single.params),
           "_apply": None})).predict(_structures())
    chex.assert_trees_all_close(ens.dos_members[k], one.dos_members[0], rtol=1e-5, atol=1e-8)
  chex.assert_trees_all_close(ens.dos_std, ens.dos_members.std(0), rtol=1e-6)
  chex.assert_trees_all_close(ens.relative_spread,
                              ens.dos_std.sum(1) / ens.dos_mean.sum(1), rtol=1e-5)


def test_parse_temperatures():
  np.testing.assert_array_equal(predictor_lib.parse_temperatures("0:1000:10"),
                                thermodynamics.DEFAULT_TEMPERATURES_K)
  np.testing.assert_array_equal(predictor_lib.parse_temperatures("100:300:50"),
                                [100, 150, 200, 250, 300])
  for bad in ("0:100", "a:b:c", "100:0:10", "0:100:0"):
    with pytest.raises(InputError, match="--temperatures"):
      predictor_lib.parse_temperatures(bad)


def test_model_and_workdir_together_is_a_one_line_error(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.predict", "--workdir", str(tmp_path), "--model", "x",
       "--structures", str(tmp_path / "*.cif")],
      cwd=REPO, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1] == (
      "error: --model: give --model or --workdir, not both")


@pytest.mark.long
@pytest.mark.slow
def test_export_and_predict_binaries(run, tmp_path):
  """export writes the model dir (and refuses to overwrite it); predict with --model
  writes predict-1 under the current directory; no exported model: one line, exit 2."""
  env = dict(os.environ, PYTHONPATH=REPO, XTAL2DOS_PRETRAINED_DIR=str(tmp_path / "models"))

  def binary(name, *args):
    return subprocess.run([sys.executable, "-m", f"experiments.{name}", *args], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)

  ase.io.write(tmp_path / "si.cif", bulk("Si", "diamond", a=5.43))
  proc = binary("predict", "--structures=si.cif")
  assert proc.returncode == 2
  assert "no exported model in" in proc.stderr.strip().splitlines()[-1]
  model = str(tmp_path / "models" / "tiny")
  proc = binary("export", f"--workdir={run}", f"--outdir={model}")
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert pretrained.is_model_dir(model)
  proc = binary("export", f"--workdir={run}", f"--outdir={model}")
  assert proc.returncode == 2 and "already exists" in proc.stderr.strip().splitlines()[-1]
  proc = binary("predict", "--structures=si.cif", "--model=tiny", "--temperatures=0:500:100")
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "predicted 1 structures" in proc.stdout
  with np.load(tmp_path / "predict-1" / "predictions.npz") as z:
    np.testing.assert_array_equal(z["temperature_K"], [0, 100, 200, 300, 400, 500])
    chex.assert_shape(z["cv_J_per_K_mol_std"], (1, 6))


def test_fit_std_scales_is_the_quantile_of_error_over_spread():
  """Members whose spread is a third of their error: the DoS factor is numpy's 68.27 %
  quantile of |error| / std over the points with std > 0, C_v(300 K)'s the same over the
  crystals' C_v values, and the per-cell and per-atom forms share a factor."""
  rng = np.random.default_rng(1)
  grid = np.linspace(0.0, 1000.0, 51)
  n_atoms = rng.integers(1, 9, 40)
  true = rng.dirichlet(np.ones(51), 40) * (3 * n_atoms / 20.0)[:, None]
  members = np.clip(true[None] * (1 + 0.2 * rng.standard_normal((4, 40, 51))), 0, None)
  scales = uncertainty_lib.fit_std_scales("phonon", grid, true, members, n_atoms)
  m, s = members.mean(0), members.std(0)
  keep = s > 0
  assert scales["dos"] == pytest.approx(
      np.quantile(np.abs(true - m)[keep] / s[keep], 0.6827), rel=1e-9)
  cv = lambda d: thermodynamics.phonon_thermodynamics(grid, d, n_atoms, 300.0)["cv_J_per_K_mol"]
  cv_true, cv_members = cv(true), np.stack([cv(x) for x in members])
  expect = np.quantile(np.abs(cv_true - cv_members.mean(0)) / cv_members.std(0), 0.6827)
  assert scales["cv300_J_per_K_mol"] == pytest.approx(expect, rel=1e-6)
  assert scales["cv_J_per_K_mol"] == pytest.approx(expect, rel=1e-6)
  assert scales["cv_J_per_K_mol_atom"] == pytest.approx(expect, rel=1e-6)
  assert {"mean_frequency_cm", "s300_J_per_K_mol", "zpe_kJ_per_mol"} <= set(scales)
  electronic = uncertainty_lib.fit_std_scales("electronic", np.linspace(-4, 4, 51), true,
                                            members, n_atoms)
  assert set(electronic) <= {"dos", "band_gap_eV", "dos_at_fermi_level", "gamma_mJ_per_mol_K2"}
