"""Crystal systems from spglib space groups (for the DOSTransformer prompts).

`crystal_systems(structures)` maps each structure to 0..6 =
triclinic, monoclinic, orthorhombic, tetragonal, trigonal, hexagonal, cubic
(the International Tables order, by space-group number). It never raises: a structure
spglib cannot analyse at symprec 1e-3 is retried at 1e-1, and otherwise counted as
triclinic (0), the system that assumes no symmetry.
"""
from __future__ import annotations

import warnings
from typing import Any, Iterable, Optional, Sequence, Tuple

import numpy as np

CRYSTAL_SYSTEMS = ("triclinic", "monoclinic", "orthorhombic", "tetragonal", "trigonal",
                   "hexagonal", "cubic")
# Last space-group number of each crystal system, in CRYSTAL_SYSTEMS order.
_LAST_SPACE_GROUP = (2, 15, 74, 142, 167, 194, 230)
SYMPRECS = (1e-3, 1e-1)   # Å; tried in order


def crystal_system_of_space_group(number: int) -> int:
  """Index into CRYSTAL_SYSTEMS of space group `number` (1..230); 0 if out of range."""
  if not 1 <= int(number) <= 230:
    return 0
  return int(np.searchsorted(_LAST_SPACE_GROUP, int(number)))


def _spglib_cell(structure: Any) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(lattice, fractional positions, atomic numbers) of an ase.Atoms or such a tuple."""
  if isinstance(structure, tuple):
    lattice, positions, numbers = structure
  else:
    lattice = structure.cell[:]
    positions = structure.get_scaled_positions(wrap=True)
    numbers = structure.numbers
  return (np.asarray(lattice, np.float64), np.asarray(positions, np.float64),
          np.asarray(numbers, np.int32))


def space_group_number(structure: Any, symprecs: Sequence[float] = SYMPRECS) -> Optional[int]:
  """International space-group number of `structure` (ase.Atoms or a spglib cell
  tuple), trying each symprec in turn; None if spglib fails at all of them."""
  import spglib
  try:
    cell = _spglib_cell(structure)
  except Exception:  # malformed input: no cell, no positions
    return None
  for symprec in symprecs:
    try:
      with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = spglib.get_symmetry_dataset(cell, symprec=symprec)
    except Exception:  # spglib raises SpglibError (or worse) on degenerate cells
      dataset = None
    if dataset is not None and 1 <= int(dataset.number) <= 230:
      return int(dataset.number)
  return None


def crystal_systems(structures: Iterable[Any]) -> np.ndarray:
  """int32[n] crystal system (0 triclinic .. 6 cubic) of each structure; never raises.

  Args:
    structures: ase.Atoms (or (lattice, fractional positions, numbers) tuples).

  Returns:
    int32[n]; structures spglib cannot analyse at symprec 1e-3 or 1e-1 get 0.
  """
  out = []
  for structure in structures:
    number = space_group_number(structure)
    out.append(0 if number is None else crystal_system_of_space_group(number))
  return np.asarray(out, np.int32)
