"""Crystal-system detection for the DOSTransformer prompts
(xtal2dos_jax/input_pipeline/symmetry.py).

Noisy structures are real ase cells with seeded position jitter of 0.01-0.02 Å, the
noise level of relaxed DFT cells, so the tests exercise spglib itself.
"""
from __future__ import annotations

import logging

import ase
import ase.build
import numpy as np
import pytest

from xtal2dos_jax.core.errors import InputError
from xtal2dos_jax.input_pipeline import symmetry


def _jittered(atoms: ase.Atoms, distance: float, rng: np.random.Generator) -> ase.Atoms:
  """`atoms` with every atom moved by `distance` Å in a random direction."""
  out = atoms.copy()
  step = rng.normal(size=out.positions.shape)
  out.positions += distance * step / np.linalg.norm(step, axis=1, keepdims=True)
  return out


def _warnings(caplog):
  return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_crystal_systems_of_ideal_cells():
  wurtzite = ase.build.bulk("ZnO", "wurtzite", a=3.25, c=5.21)
  cells = [ase.build.bulk("NaCl", "rocksalt", a=5.64), wurtzite, ase.build.bulk("Mg"),
           ase.build.bulk("Bi"), ase.build.bulk("Si", "diamond", a=5.43).repeat((2, 1, 1))]
  np.testing.assert_array_equal(symmetry.crystal_systems(cells), [6, 5, 5, 4, 6])
  assert symmetry.CRYSTAL_SYSTEMS[5] == "hexagonal" and symmetry.CRYSTAL_SYSTEMS[4] == "trigonal"
  assert symmetry.crystal_systems([]).shape == (0,)


@pytest.mark.parametrize("distance", [0.01, 0.015, 0.02])
def test_noisy_cubic_cells_stay_cubic(distance, caplog):
  """Position noise of relaxed cells must not turn rocksalt / diamond into P1 (the
  triclinic prompt): spglib is asked at 0.1 Å first."""
  rng = np.random.default_rng(0)
  ideal = [ase.build.bulk("NaCl", "rocksalt", a=5.64), ase.build.bulk("Si", "diamond", a=5.43),
           ase.build.bulk("NaCl", "rocksalt", a=5.64, cubic=True),
           ase.build.bulk("Si", "diamond", a=5.43, cubic=True)]
  noisy = [_jittered(cell, distance, rng) for cell in ideal for _ in range(5)]
  with caplog.at_level(logging.WARNING):
    out = symmetry.crystal_systems(noisy)
  np.testing.assert_array_equal(out, np.full(len(noisy), 6))
  assert out.dtype == np.int32
  assert not _warnings(caplog)          # nothing fell back


def test_noisy_hexagonal_cell_stays_hexagonal():
  rng = np.random.default_rng(1)
  wurtzite = ase.build.bulk("ZnO", "wurtzite", a=3.25, c=5.21)
  assert symmetry.crystal_systems([_jittered(wurtzite, 0.01, rng)]).tolist() == [5]


def test_generic_cell_is_triclinic_without_a_warning(caplog):
  rng = np.random.default_rng(0)
  triclinic = ase.Atoms("MgAlO", scaled_positions=rng.random((3, 3)),
                        cell=[[4.2, 0.3, 0.2], [0.6, 4.0, 0.3], [0.4, 0.5, 4.4]], pbc=True)
  with caplog.at_level(logging.WARNING):
    assert symmetry.crystal_systems([triclinic]).tolist() == [0]
  assert not _warnings(caplog)


def test_failures_are_triclinic_counted_and_named(caplog):
  bad = [ase.Atoms("H"), "not a structure", (np.zeros((3, 3)), np.zeros((1, 3)), [1])]
  with caplog.at_level(logging.WARNING):
    out = symmetry.crystal_systems([ase.build.bulk("Mg")] + bad,
                                   ids=["mg", "no-cell", "string", "zero-lattice"])
  np.testing.assert_array_equal(out, [5, 0, 0, 0])
  (message,) = _warnings(caplog)
  assert "3 of 4" in message and "no-cell, string, zero-lattice" in message
  assert "triclinic" in message and "mg" not in message.split("first:")[1]


def test_failures_are_named_by_position_without_ids(caplog):
  with caplog.at_level(logging.WARNING):
    symmetry.crystal_systems([ase.build.bulk("Mg"), ase.Atoms("H")])
  (message,) = _warnings(caplog)
  assert "1 of 2" in message and "#1" in message


def test_tighter_symprec_is_tried_when_the_loose_one_fails(monkeypatch, caplog):
  """spglib can fail at 0.1 Å where atoms are closer than that; 1e-3 Å is then tried and
  the retry is reported."""
  import spglib
  real = spglib.get_symmetry_dataset
  calls = []

  def fails_when_loose(cell, symprec):
    calls.append(symprec)
    if symprec > 1e-2:
      raise RuntimeError("spglib failed")
    return real(cell, symprec=symprec)

  monkeypatch.setattr(spglib, "get_symmetry_dataset", fails_when_loose)
  with caplog.at_level(logging.WARNING):
    assert symmetry.crystal_systems([ase.build.bulk("Mg")], ids=["mp-153"]).tolist() == [5]
  assert calls == [1e-1, 1e-3]
  (message,) = _warnings(caplog)
  assert "1 of 1" in message and "mp-153" in message and "tighter" in message


def test_find_space_group_reports_the_symprec_used():
  rng = np.random.default_rng(0)
  found = symmetry.find_space_group(_jittered(ase.build.bulk("Si", "diamond", a=5.43), 0.02, rng))
  assert found == symmetry.SpaceGroup(227, 0.1)
  assert symmetry.space_group_number(ase.Atoms("H")) is None


def test_crystal_system_of_space_group():
  first = {1: 0, 3: 1, 16: 2, 75: 3, 143: 4, 168: 5, 195: 6}
  last = {2: 0, 15: 1, 74: 2, 142: 3, 167: 4, 194: 5, 230: 6}
  for number, system in {**first, **last}.items():
    assert symmetry.crystal_system_of_space_group(number) == system
  for number in (0, 231, -1):
    with pytest.raises(ValueError, match="outside 1..230"):
      symmetry.crystal_system_of_space_group(number)


def test_check_crystal_systems_raises_instead_of_clipping():
  np.testing.assert_array_equal(symmetry.check_crystal_systems(np.arange(7)), np.arange(7))
  assert symmetry.check_crystal_systems(np.arange(7, dtype=np.int64)).dtype == np.int32
  for bad in ([0, 7], [-1, 3]):
    with pytest.raises(InputError, match=r"crystal_system: 1 crystal system\(s\) outside 0..6"):
      symmetry.check_crystal_systems(bad)
  with pytest.raises(InputError, match="must be integers"):
    symmetry.check_crystal_systems([0.5])
