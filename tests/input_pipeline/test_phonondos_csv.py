"""Tests for xtal2dos_jax.input_pipeline.readers.phonondos_csv: structure strings and the CSV
reader."""

import csv
import json

import chex
import numpy as np
import pytest
from ase.build import bulk

from xtal2dos_jax.core.errors import InputError
from xtal2dos_jax.input_pipeline.readers import phonondos_csv


# ---------------------------------------------------------------------------
# Structure strings.



def test_parse_atoms_repr_and_todict_repr():
  atoms = phonondos_csv.parse_atoms_string(
      "Atoms(symbols='Si2', pbc=True, cell=[5.43, 5.43, 5.43], "
      "positions=[[0.0, 0.0, 0.0], [1.3575, 1.3575, 1.3575]])", "row0")
  chex.assert_trees_all_close(atoms.cell.array, np.diag([5.43] * 3))
  chex.assert_trees_all_close(atoms.positions[1], np.full(3, 1.3575))
  assert atoms.pbc.all()
  si = bulk("Si", "diamond", a=5.43)
  # numpy repr of Atoms.todict(), the phononDoS tutorial's format.
  text = repr(si.todict())
  assert "array(" in text
  parsed = phonondos_csv.parse_atoms_string(text, "row1")
  chex.assert_trees_all_close(parsed.positions, si.positions)
  chex.assert_trees_all_close(parsed.cell.array, si.cell.array)
  as_json = json.dumps({k: np.asarray(v).tolist()
                        for k, v in si.todict().items()})
  chex.assert_trees_all_close(
      phonondos_csv.parse_atoms_string(as_json, "row2").positions, si.positions)


def test_parse_atoms_string_never_runs_code(tmp_path):
  marker = tmp_path / "pwned"
  for text in (f"__import__('os').system('touch {marker}')",
               f"Atoms(symbols=open('{marker}', 'w'), positions=[[0,0,0]])"):
    with pytest.raises(InputError, match="row7"):
      phonondos_csv.parse_atoms_string(text, "row7")
  assert not marker.exists()


def test_parse_atoms_string_bad_inputs():
  with pytest.raises(InputError, match="no positions"):
    phonondos_csv.parse_atoms_string(repr(bulk("Si")), "r")  # repr omits them
  with pytest.raises(InputError, match="empty"):
    phonondos_csv.parse_atoms_string("{}", "r")
  with pytest.raises(InputError, match="r: structure string"):
    phonondos_csv.parse_atoms_string("Atoms(symbols=", "r")


# ---------------------------------------------------------------------------
# The CSV.


def test_read_phonondos_csv(tmp_path):
  si = bulk("Si", "diamond", a=5.43)
  path = tmp_path / "phdos.csv"
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["mp_id", "structure", "phfreq", "phdos"])
    w.writerow(["mp-149", repr(si.todict()), "[0.0, 50.0, 100.0]",
                "[0.0, 1.0, 0.0]"])
    w.writerow(["", "Atoms(symbols='Cu', pbc=True, cell=[2.5, 2.5, 2.5], "
                "positions=[[0.0, 0.0, 0.0]])", "[10. 30. 50.]", "[2. 4. 6.]"])
    w.writerow(["mp-bad", "{}", "[0, 1]", "[0, 1]"])
    w.writerow(["mp-len", repr(si.todict()), "[0, 1, 2]", "[0, 1]"])
  grid = np.array([0.0, 25.0, 50.0, 75.0, 100.0, 125.0])
  ds = phonondos_csv.read_phonondos_csv(str(path), grid)
  assert ds.ids == ["mp-149", "1"]  # empty id -> row index
  expected = np.array([
      [0.0, 0.5, 1.0, 0.5, 0.0, 0.0],  # tent 0..100
      [0.0, 3.5, 6.0, 0.0, 0.0, 0.0],  # zero outside [10, 50]
  ], np.float32)
  chex.assert_trees_all_close(ds.labels, expected, atol=1e-6)
  chex.assert_trees_all_close(ds.grid, grid.astype(np.float32))
  np.testing.assert_allclose(ds.structures[0].positions, si.positions)
  assert ds.structures[1].get_chemical_symbols() == ["Cu"]
  reasons = dict(ds.skipped)
  assert set(reasons) == {"mp-bad", "mp-len"}
  assert "empty structure" in reasons["mp-bad"]
  assert "3 values" in reasons["mp-len"]


def test_a_file_is_parsed_once_and_read_again_when_it_changes(tmp_path, monkeypatch):
  """The parsed rows are kept per file: a second read parses nothing, returns structures
  of its own, and interpolates onto its own grid; a rewritten file is parsed again, and
  `forget_parsed_files` drops what is kept."""
  path = tmp_path / "phdos.csv"

  def write(rows):
    with open(path, "w", newline="") as f:
      w = csv.writer(f)
      w.writerow(["mp_id", "structure", "phfreq", "phdos"])
      for rid, a in rows:
        w.writerow([rid, repr(bulk(a).todict()), "[0.0, 100.0]", "[1.0, 1.0]"])

  parsed = []
  real = phonondos_csv.parse_atoms_string
  monkeypatch.setattr(phonondos_csv, "parse_atoms_string",
                      lambda *a: parsed.append(a[1]) or real(*a))
  phonondos_csv.forget_parsed_files()
  write([("a", "Cu")])
  first = phonondos_csv.read_phonondos_csv(str(path), np.array([0.0, 50.0]))
  first.structures[0].positions += 1.0                  # a caller changes its structures
  again = phonondos_csv.read_phonondos_csv(str(path), np.array([0.0, 50.0, 100.0]))
  assert parsed == ["a"]
  np.testing.assert_allclose(again.structures[0].positions, bulk("Cu").positions)
  chex.assert_shape(again.labels, (1, 3))
  write([("b", "Al"), ("c", "Cu")])                     # rewritten: another size
  assert phonondos_csv.read_phonondos_csv(str(path), np.zeros(2)).ids == ["b", "c"]
  phonondos_csv.forget_parsed_files()
  phonondos_csv.read_phonondos_csv(str(path), np.zeros(2))
  assert parsed == ["a", "b", "c", "b", "c"]


def test_read_phonondos_csv_missing_columns(tmp_path):
  path = tmp_path / "cols.csv"
  path.write_text("structure,phdos\n{},[1]\n")
  with pytest.raises(InputError, match="cols.csv: missing column.*phfreq"):
    phonondos_csv.read_phonondos_csv(str(path), np.arange(3.0))
