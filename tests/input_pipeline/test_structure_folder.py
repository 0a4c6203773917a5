"""Tests for xtal2dos_jax.input_pipeline.readers.structure_folder: the structure files predict
reads."""

import os

import ase.io
import pytest
from ase.build import bulk

from xtal2dos_jax.core.errors import InputError
from xtal2dos_jax.input_pipeline import readers


def _write_folder(folder):
  folder.mkdir()
  nacl = bulk("NaCl", "rocksalt", a=5.64)
  ase.io.write(folder / "nacl.cif", nacl)
  ase.io.write(folder / "POSCAR", bulk("Si", "diamond", a=5.43), format="vasp")
  ase.io.write(folder / "cu.extxyz", bulk("Cu"))
  (folder / "garbage.dat").write_bytes(os.urandom(64) + bytes(range(256)))
  text = (folder / "nacl.cif").read_text()
  (folder / "truncated.cif").write_text(text[: len(text) // 2])


def test_read_structure_folder(tmp_path):
  folder = tmp_path / "structs"
  _write_folder(folder)
  ds = readers.read_structure_folder(str(folder))
  assert sorted(os.path.basename(i) for i in ds.ids) == [
      "POSCAR", "cu.extxyz", "nacl.cif"]
  assert ds.labels is None and len(ds.structures) == 3
  skipped = dict(ds.skipped)
  assert set(skipped) == {str(folder / "garbage.dat"),
                          str(folder / "truncated.cif")}
  assert all("\n" not in r and r for r in skipped.values())
  # Glob pattern: only the cif files.
  ds = readers.read_structure_folder(str(folder / "*.cif"))
  assert ds.ids == [str(folder / "nacl.cif")]
  assert [p for p, _ in ds.skipped] == [str(folder / "truncated.cif")]


def test_read_structure_folder_nothing_usable(tmp_path):
  folder = tmp_path / "bad"
  folder.mkdir()
  (folder / "a.cif").write_text("data_x\n_cell_length_a")
  pattern = str(folder / "*.cif")
  with pytest.raises(InputError, match=r"\*\.cif: none of the 1 file"):
    readers.read_structure_folder(pattern)
  with pytest.raises(InputError, match=r"\*\.xyz: no files match"):
    readers.read_structure_folder(str(folder / "*.xyz"))

