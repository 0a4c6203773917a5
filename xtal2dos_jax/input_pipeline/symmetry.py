"""Crystal systems from spglib space groups (for the DOSTransformer prompts).

`crystal_systems(structures)` maps each structure to 0..6 =
triclinic, monoclinic, orthorhombic, tetragonal, trigonal, hexagonal, cubic
(the International Tables order, by space-group number).

spglib is asked at symprec 0.1 Å first: relaxed DFT cells (Materials Project, phonon
databases) carry position noise of ~0.01 Å, which a tight tolerance such as 1e-3 Å reads
as P1, giving a cubic crystal the triclinic prompt. A loose tolerance can make spglib fail
on a cell with close atoms, so a structure it cannot analyse at 0.1 Å is retried at
1e-3 Å. A structure that fails at both gets triclinic (0), the system that assumes no
symmetry; both the retries and the failures are counted and logged as one warning that
names the first ids, so a dataset that loses its symmetry information is visible.
"""
from __future__ import annotations

import warnings
from typing import Any, Iterable, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
from absl import logging

from xtal2dos_jax.core.errors import InputError

CRYSTAL_SYSTEMS = ("triclinic", "monoclinic", "orthorhombic", "tetragonal", "trigonal",
                   "hexagonal", "cubic")
NUM_CRYSTAL_SYSTEMS = len(CRYSTAL_SYSTEMS)
# Last space-group number of each crystal system, in CRYSTAL_SYSTEMS order.
_LAST_SPACE_GROUP = (2, 15, 74, 142, 167, 194, 230)
SYMPRECS = (1e-1, 1e-3)   # Å; tried in order, the next one only when spglib fails
_SHOWN_IDS = 5            # ids named in the warning about retried / failed structures


def crystal_system_of_space_group(number: int) -> int:
  """Index into CRYSTAL_SYSTEMS of space group `number`; raises ValueError outside 1..230
  (a number spglib never returns, so a caller passing one has a bug)."""
  if not 1 <= int(number) <= 230:
    raise ValueError(f"space group {number} is outside 1..230")
  return int(np.searchsorted(_LAST_SPACE_GROUP, int(number)))


def check_crystal_systems(systems: Any, name: str = "crystal_system") -> np.ndarray:
  """`systems` as int32, raising a one-line InputError if any value is outside 0..6.

  The DOSTransformer prompt table has one row per crystal system; a value outside it
  (a corrupt cache, a hand-made array) is an input error, not something to clip."""
  arr = np.asarray(systems)
  if arr.size and not np.issubdtype(arr.dtype, np.integer):
    raise InputError(name, f"crystal systems must be integers, got dtype {arr.dtype}")
  bad = arr[(arr < 0) | (arr >= NUM_CRYSTAL_SYSTEMS)]
  if bad.size:
    raise InputError(name, f"{bad.size} crystal system(s) outside 0..{NUM_CRYSTAL_SYSTEMS - 1} "
                     f"({', '.join(CRYSTAL_SYSTEMS)}), e.g. {bad.ravel()[:5].tolist()}")
  return arr.astype(np.int32)


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


class SpaceGroup(NamedTuple):
  """A space-group number and the symprec (Å) at which spglib found it."""
  number: int
  symprec: float


def find_space_group(structure: Any, symprecs: Sequence[float] = SYMPRECS
                     ) -> Optional[SpaceGroup]:
  """Space group of `structure` (ase.Atoms or a spglib cell tuple) at the first symprec
  in `symprecs` where spglib succeeds; None if it fails at all of them."""
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
      return SpaceGroup(int(dataset.number), float(symprec))
  return None


def space_group_number(structure: Any, symprecs: Sequence[float] = SYMPRECS) -> Optional[int]:
  """International space-group number of `structure` (see `find_space_group`); None if
  spglib fails at every symprec."""
  found = find_space_group(structure, symprecs)
  return None if found is None else found.number


def crystal_systems(structures: Iterable[Any], ids: Optional[Sequence[Any]] = None,
                    symprecs: Sequence[float] = SYMPRECS) -> np.ndarray:
  """int32[n] crystal system (0 triclinic .. 6 cubic) of each structure.

  Args:
    structures: ase.Atoms (or (lattice, fractional positions, numbers) tuples).
    ids: names of the structures for the warning (default: their positions, `#k`).
    symprecs: spglib tolerances in Å, tried in order until spglib succeeds.

  Returns:
    int32[n]. A structure spglib cannot analyse at any symprec gets 0 (triclinic). If any
    structure needed a symprec after the first, or failed at all, one warning gives both
    counts and the first ids of each.
  """
  out: List[int] = []
  retried: List[str] = []
  failed: List[str] = []
  for k, structure in enumerate(structures):
    name = f"#{k}" if ids is None else str(ids[k])
    found = find_space_group(structure, symprecs)
    if found is None:
      failed.append(name)
      out.append(0)
      continue
    if found.symprec != symprecs[0]:
      retried.append(name)
    out.append(crystal_system_of_space_group(found.number))
  if retried or failed:
    n = len(out)
    parts = []
    if retried:
      parts.append(f"{len(retried)} of {n} structure(s) needed a symprec tighter than "
                   f"{symprecs[0]:g} Å (first: {', '.join(retried[:_SHOWN_IDS])})")
    if failed:
      parts.append(f"{len(failed)} of {n} could not be analysed by spglib at symprec "
                   f"{', '.join(f'{s:g}' for s in symprecs)} Å and get the triclinic prompt "
                   f"(first: {', '.join(failed[:_SHOWN_IDS])})")
    logging.warning("crystal systems: %s", "; ".join(parts))
  return np.asarray(out, np.int32)
