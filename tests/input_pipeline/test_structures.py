"""Tests for xtal2dos_jax.input_pipeline.structures: conversion, file reading, validation."""

import json
import warnings

import ase
import ase.io
import ase.io.jsonio
import chex
import numpy as np
import pytest
from ase.build import bulk

from xtal2dos_jax.core.errors import InputError
from xtal2dos_jax.input_pipeline import structures

ROCKSALT_MATRIX = [[0.0, 2.82, 2.82], [2.82, 0.0, 2.82], [2.82, 2.82, 0.0]]
TRICLINIC_MATRIX = [[4.0, 0.0, 0.0], [1.0, 5.0, 0.0], [0.5, 1.5, 6.0]]


def _site(element, abc=None, xyz=None, occu=1.0):
  site = {"species": [{"element": element, "occu": occu}], "label": element,
          "properties": {}}
  if abc is not None:
    site["abc"] = abc
  if xyz is not None:
    site["xyz"] = xyz
  return site


def _pmg(matrix, sites, cls="Structure"):
  return {"@module": "pymatgen.core.structure", "@class": cls, "charge": 0,
          "lattice": {"matrix": matrix, "pbc": [True, True, True]},
          "properties": {}, "sites": sites}


def _rocksalt_dict():
  return _pmg(ROCKSALT_MATRIX, [_site("Na", [0.0, 0.0, 0.0]),
                                _site("Cl", [0.5, 0.5, 0.5])])


# ---------------------------------------------------------------------------
# pymatgen / ASE dicts.


def test_pymatgen_rocksalt_positions():
  atoms = structures.atoms_from_pymatgen_dict(_rocksalt_dict(), "NaCl")
  assert atoms.get_chemical_symbols() == ["Na", "Cl"]
  assert atoms.pbc.all()
  # Cl at frac (1/2, 1/2, 1/2) = half the sum of the lattice rows.
  chex.assert_trees_all_close(atoms.positions,
                              np.array([[0.0, 0.0, 0.0], [2.82, 2.82, 2.82]]),
                              atol=1e-12)
  chex.assert_trees_all_close(atoms.cell.array, np.array(ROCKSALT_MATRIX))


def test_pymatgen_triclinic_abc_and_xyz():
  d = _pmg(TRICLINIC_MATRIX, [
      _site("O", [0.25, 0.5, 0.75]),
      _site("Ti", [0.5, 0.0, 0.0]),
      _site("Fe", xyz=[1.0, 2.0, 3.0]),  # only cartesian coordinates given
  ])
  atoms = structures.atoms_from_pymatgen_dict(d, "tri")
  # 0.25*(4,0,0) + 0.5*(1,5,0) + 0.75*(0.5,1.5,6) = (1.875, 3.625, 4.5)
  expected = np.array([[1.875, 3.625, 4.5], [2.0, 0.0, 0.0], [1.0, 2.0, 3.0]])
  chex.assert_trees_all_close(atoms.positions, expected, atol=1e-12)
  assert atoms.get_chemical_symbols() == ["O", "Ti", "Fe"]


def test_pymatgen_prefers_abc_over_xyz():
  d = _pmg(TRICLINIC_MATRIX, [_site("O", [0.25, 0.5, 0.75], xyz=[9, 9, 9])])
  atoms = structures.atoms_from_pymatgen_dict(d)
  chex.assert_trees_all_close(atoms.positions[0], np.array([1.875, 3.625, 4.5]))


@pytest.mark.parametrize("sites, needle", [
    ([{"species": [{"element": "Fe", "occu": 0.5},
                   {"element": "Ni", "occu": 0.5}], "abc": [0, 0, 0]}],
     "disordered"),
    ([_site("Fe", [0, 0, 0], occu=0.8)], "partially occupied"),
    ([_site("Qq", [0, 0, 0])], "unknown element"),
    ([{"species": [{"element": "Fe", "occu": 1}]}], "neither 'abc' nor 'xyz'"),
])
def test_pymatgen_bad_sites(sites, needle):
  with pytest.raises(InputError, match=needle) as err:
    structures.atoms_from_pymatgen_dict(_pmg(ROCKSALT_MATRIX, sites), "mp-42")
  assert "mp-42" in str(err.value)
  assert "\n" not in str(err.value)


def test_pymatgen_molecule_and_garbage_rejected():
  with pytest.raises(InputError, match="Molecule"):
    structures.atoms_from_pymatgen_dict(
        _pmg(ROCKSALT_MATRIX, [], cls="Molecule"), "mol")
  with pytest.raises(InputError, match="lattice.matrix"):
    structures.atoms_from_pymatgen_dict({"sites": []}, "nolattice")
  with pytest.raises(InputError, match="shape"):
    structures.atoms_from_pymatgen_dict(_pmg([[1, 0], [0, 1]], []), "bad")


def test_atoms_from_dict_dispatch():
  ref = structures.atoms_from_pymatgen_dict(_rocksalt_dict())
  wrapped = structures.atoms_from_dict({"structure": _rocksalt_dict()}, "w")
  chex.assert_trees_all_close(wrapped.positions, ref.positions)
  ase_dict = bulk("Si", "diamond", a=5.43).todict()
  si = structures.atoms_from_dict(ase_dict, "si")
  chex.assert_trees_all_close(si.positions, ase_dict["positions"])
  assert si.pbc.all() and list(si.numbers) == [14, 14]
  scaled = structures.atoms_from_dict(
      {"symbols": "Si2", "scaled_positions": [[0, 0, 0], [0.25, 0.25, 0.25]],
       "cell": ase_dict["cell"], "pbc": True}, "si")
  chex.assert_trees_all_close(scaled.positions, ase_dict["positions"],
                              atol=1e-12)
  original = bulk("Cu")
  copy = structures.atoms_from_dict(original)
  assert copy is not original and copy == original
  with pytest.raises(InputError, match="thing: unrecognised"):
    structures.atoms_from_dict({"foo": 1}, "thing")
  with pytest.raises(InputError, match="x: expected a structure dict"):
    structures.atoms_from_dict([1, 2], "x")


def test_ase_dict_mismatched_lengths():
  with pytest.raises(InputError, match="2 species but 1 positions"):
    structures.atoms_from_dict({"numbers": [1, 1], "positions": [[0, 0, 0]],
                                "cell": np.eye(3) * 3, "pbc": True}, "h2")


# ---------------------------------------------------------------------------
# Files.


def _write_formats(tmp_path):
  nacl = bulk("NaCl", "rocksalt", a=5.64)
  paths = {
      "cif": tmp_path / "nacl.cif",
      "vasp": tmp_path / "POSCAR",
      "extxyz": tmp_path / "nacl.extxyz",
  }
  ase.io.write(paths["cif"], nacl)
  ase.io.write(paths["vasp"], nacl, format="vasp")
  ase.io.write(paths["extxyz"], nacl)
  return nacl, paths


def test_read_structure_formats(tmp_path):
  nacl, paths = _write_formats(tmp_path)
  for path in paths.values():
    with warnings.catch_warnings():
      warnings.simplefilter("error")  # the CIF reader must not warn
      atoms = structures.read_structure(str(path))
    assert atoms.get_chemical_formula() == "ClNa"
    assert atoms.pbc.all()
    np.testing.assert_allclose(atoms.get_volume(), nacl.get_volume(),
                               rtol=1e-6)
    np.testing.assert_allclose(atoms.get_distance(0, 1, mic=True),
                               nacl.get_distance(0, 1, mic=True), rtol=1e-6)


def test_read_structure_json(tmp_path):
  top = tmp_path / "top.json"
  top.write_text(json.dumps(_rocksalt_dict()))
  wrapped = tmp_path / "dos_mp-1.json"
  wrapped.write_text(json.dumps({"structure": _rocksalt_dict()}))
  for path in (top, wrapped):
    atoms = structures.read_structure(str(path))
    chex.assert_trees_all_close(atoms.positions[1], np.full(3, 2.82))
  ase_json = tmp_path / "ase.json"  # ASE's own JSON encoding of an Atoms
  ase_json.write_text(ase.io.jsonio.encode(bulk("Si", "diamond", a=5.43)))
  chex.assert_trees_all_close(structures.read_structure(str(ase_json)).positions,
                              bulk("Si", "diamond", a=5.43).positions)
  bad = tmp_path / "bad.json"
  bad.write_text('{"structure": ')
  with pytest.raises(InputError, match="bad.json: invalid JSON"):
    structures.read_structure(str(bad))


def test_read_structure_multi_frame(tmp_path):
  path = tmp_path / "two.extxyz"
  ase.io.write(path, [bulk("Cu"), bulk("Al")])
  assert len(structures.read_structures(str(path))) == 2
  with pytest.raises(InputError, match="holds 2 structures"):
    structures.read_structure(str(path))


def test_read_structure_bad_files(tmp_path):
  _, paths = _write_formats(tmp_path)
  text = paths["cif"].read_text()
  truncated = tmp_path / "cut.cif"
  truncated.write_text(text[: len(text) // 2])
  garbage = tmp_path / "garbage.bin"
  garbage.write_bytes(bytes(range(256)) * 8)
  empty = tmp_path / "empty.cif"
  empty.write_text("")
  disordered = tmp_path / "dis.cif"
  disordered.write_text(text.replace(
      "Na  Na1       1.0  0.0  0.0  0.0  1.0000",
      "Na  Na1       1.0  0.0  0.0  0.0  0.5000\n  K  K1  1.0  0.0  0.0  0.0  "
      "0.5000"))
  assert "K1" in disordered.read_text()
  cases = {truncated: "cif", garbage: "format", empty: "empty",
           disordered: "disordered", tmp_path / "missing.cif": "no such file",
           tmp_path: "directory"}
  for path, needle in cases.items():
    with pytest.raises(InputError, match=needle) as err:
      structures.read_structure(str(path))
    assert str(path) in str(err.value)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------------------
# Validation.


def test_validate_good_structure():
  structures.validate_atoms(bulk("NaCl", "rocksalt", a=5.64), "ok")
  structures.validate_atoms(bulk("Si", "diamond", a=5.43), "ok")


@pytest.mark.parametrize("atoms, needle", [
    (ase.Atoms(cell=np.eye(3) * 3, pbc=True), "no atoms"),
    (ase.Atoms("X", positions=[[0, 0, 0]], cell=np.eye(3) * 3, pbc=True),
     r"X \(Z=0\)"),
    (ase.Atoms(numbers=[1, 101], positions=[[0, 0, 0], [1, 1, 1]],
               cell=np.eye(3) * 3, pbc=True), r"Md \(Z=101\)"),
    (ase.Atoms("H2", positions=[[0, 0, 0], [1, 1, 1]], cell=np.eye(3) * 3,
               pbc=[True, True, False]), "not periodic"),
    (ase.Atoms("H2", positions=[[0, 0, 0], [1, 1, 1]],
               cell=[[3, 0, 0], [0, 3, 0], [3, 3, 0]], pbc=True),
     "zero volume"),
    (ase.Atoms("H2", positions=[[0, 0, 0], [np.nan, 1, 1]],
               cell=np.eye(3) * 3, pbc=True), "NaN"),
    (ase.Atoms("NaCl", positions=[[1, 1, 1], [1.05, 1, 1]],
               cell=np.eye(3) * 4, pbc=True), r"atoms 0 \(Na\) and 1 \(Cl\)"),
    # Overlap only through the periodic boundary: 0.01 and 3.99 in a 4 A box.
    (ase.Atoms("NaCl", positions=[[0.01, 1, 1], [3.99, 1, 1]],
               cell=np.eye(3) * 4, pbc=True), "overlap"),
    (ase.Atoms("H", positions=[[0, 0, 0]], cell=np.diag([0.05, 3, 3]),
               pbc=True), "own periodic image"),
])
def test_validate_bad_structures(atoms, needle):
  with pytest.raises(InputError, match=needle) as err:
    structures.validate_atoms(atoms, "crystal-9")
  assert str(err.value).startswith("crystal-9: ")


def test_validate_max_z():
  atoms = ase.Atoms("U", positions=[[0, 0, 0]], cell=np.eye(3) * 3, pbc=True)
  structures.validate_atoms(atoms, "u")
  with pytest.raises(InputError, match=r"U \(Z=92\).*1\.\.80"):
    structures.validate_atoms(atoms, "u", max_z=80)
