"""Neighbour search speed: `python -m experiments.neighbour_bench`.

Times `featurize.featurize_crystal` (vesin's cell-list neighbour search plus a per-atom
top-k) against `brute_force_graph`, an all-image distance tensor: for every lattice
translation that can hold a neighbour within the radius it computes the distance from
every atom to every image of every atom. The brute force is also the reference the
tests hold the featuriser to: both must give identical graphs (senders, receivers,
distances bit for bit, edge order).

Inputs are supercells of one shipped crystal (BaTe, mp-1000, 2 atoms, from the DFPT
set) with 8, 32, 64, 128 and 256 atoms, featurised with the default radius (8 Å) and
12 neighbours. Each row is a dict {name, value, unit, notes}; the value is the best of
`repeats` timed calls (milliseconds per crystal) after one warm-up call, and the notes
give the median.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable

import ase
import numpy as np

from xtal2dos_jax.input_pipeline import featurize, readers
from xtal2dos_jax.input_pipeline.featurize import CrystalGraph

BASE_ID = "mp-1000"
# Supercell repetitions of the 2-atom base cell: atoms -> (na, nb, nc).
SUPERCELLS = {8: (2, 2, 1), 32: (4, 2, 2), 64: (4, 4, 2), 128: (4, 4, 4), 256: (8, 4, 4)}


def _image_offsets(cell: np.ndarray, radius: float) -> np.ndarray:
  """int[m, 3]: every lattice translation that can hold a neighbour within `radius` of an
  atom whose position is wrapped into the cell, in lexicographic order of (a, b, c)."""
  volume = abs(np.linalg.det(cell))
  # Distance between opposite faces of the cell along each reciprocal direction.
  heights = volume / np.linalg.norm(np.cross(cell[[1, 2, 0]], cell[[2, 0, 1]]), axis=1)
  # +1: positions are wrapped into the cell, so an atom can sit up to one cell away.
  reps = np.ceil(radius / heights).astype(int) + 1
  ranges = [np.arange(-r, r + 1) for r in reps]
  return np.stack(np.meshgrid(*ranges, indexing="ij"), -1).reshape(-1, 3)


def brute_force_graph(atoms: ase.Atoms, radius: float = 8.0,
                      max_num_nbr: int = 12) -> CrystalGraph:
  """Reference graph of a valid periodic crystal by exhaustive search over images.

  Positions are wrapped into the cell; d[i, j, m] = |pos_j + offset_m @ cell - pos_i|
  for all atoms i, j and all offsets of `_image_offsets`, the atom itself (i = j,
  offset 0) excluded by index. Each atom i keeps the `max_num_nbr` (0: all) smallest d <= radius
  (stable argsort over the flat (j, m) index, so ties go to the smaller j, then to the
  lexicographically smaller offset). Atoms with no neighbour get no edge; no input
  checks are made.
  """
  numbers = np.asarray(atoms.numbers, np.int32)
  n = len(numbers)
  cell = np.asarray(atoms.cell.array, np.float64)
  frac = np.linalg.solve(cell.T, np.asarray(atoms.positions, np.float64).T).T
  frac -= np.floor(frac)
  pos = frac @ cell
  offsets = _image_offsets(cell, radius)
  shifts = offsets @ cell                                               # [m, 3]
  disp = pos[None, :, None, :] + shifts[None, None, :, :] - pos[:, None, None, :]
  dist = np.sqrt(np.einsum("ijmk,ijmk->ijm", disp, disp))
  home = int(np.flatnonzero(~offsets.any(1))[0])
  dist[np.arange(n), np.arange(n), home] = np.inf                       # the atom itself
  dist = dist.reshape(n, -1)
  dist[dist > radius] = np.inf
  k = dist.shape[1] if max_num_nbr == 0 else min(max_num_nbr, dist.shape[1])  # 0: all
  order = np.argsort(dist, axis=1, kind="stable")[:, :k]
  nbr_dist = np.take_along_axis(dist, order, axis=1)
  valid = np.isfinite(nbr_dist)
  receivers = np.repeat(np.arange(n, dtype=np.int32), k).reshape(n, k)[valid]
  senders = (order // shifts.shape[0]).astype(np.int32)[valid]
  vectors = np.take_along_axis(disp.reshape(n, -1, 3), order[..., None], axis=1)[valid]
  return CrystalGraph(numbers, senders, receivers, nbr_dist[valid].astype(np.float32),
                      vectors.astype(np.float32))


def base_crystal() -> ase.Atoms:
  """The shipped crystal the supercells repeat (BASE_ID of the embedded DFPT set)."""
  from configs import phdos
  raw = readers.load_raw_dataset(phdos.get_config().data)
  return raw.structures[raw.ids.index(BASE_ID)]


def _best_and_median_ms(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
  fn()  # warm-up
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(1e3 * (time.perf_counter() - t0))
  return min(times), statistics.median(times)


def neighbour_rows(radius: float = 8.0, max_num_nbr: int = 12, repeats: int = 5,
                   sizes: tuple[int, ...] = tuple(SUPERCELLS)) -> list[dict]:
  """Milliseconds per crystal of the library search and of the brute force, per size.

  Args:
    radius: neighbour cutoff, Å.
    max_num_nbr: neighbours kept per atom.
    repeats: timed calls per measurement (after one warm-up call).
    sizes: atoms per supercell, keys of SUPERCELLS.

  Returns:
    Rows {name, value, unit, notes}: `featurise <n> atoms: vesin + top-k`,
    `featurise <n> atoms: brute force` (ms, best of `repeats`) and
    `featurise <n> atoms: speed-up` (brute force / library, best over best).
  """
  base = base_crystal()
  rows = []
  for size in sizes:
    atoms = base.repeat(SUPERCELLS[size])
    lib = featurize.featurize_crystal(atoms, radius, max_num_nbr)
    ref = brute_force_graph(atoms, radius, max_num_nbr)
    same = all(np.array_equal(a, b) for a, b in zip(lib, ref))
    lib_best, lib_med = _best_and_median_ms(
        lambda: featurize.featurize_crystal(atoms, radius, max_num_nbr), repeats)
    ref_best, ref_med = _best_and_median_ms(
        lambda: brute_force_graph(atoms, radius, max_num_nbr), repeats)
    where = (f"{BASE_ID} x {SUPERCELLS[size]}, {radius:g} A, {max_num_nbr} nbrs, "
             f"best of {repeats}")
    rows += [
        {"name": f"featurise {size} atoms: vesin + top-k", "value": lib_best, "unit": "ms",
         "notes": f"vesin cell list + top-k, incl. validate_atoms; {where}; median "
                  f"{lib_med:.3g} ms"},
        {"name": f"featurise {size} atoms: brute force", "value": ref_best, "unit": "ms",
         "notes": f"all-image distance tensor; {where}; median {ref_med:.3g} ms"},
        {"name": f"featurise {size} atoms: speed-up", "value": ref_best / lib_best, "unit": "x",
         "notes": f"brute force / library; graphs {'identical' if same else 'DIFFER'}"},
    ]
  return rows


def main() -> None:
  for r in neighbour_rows():
    print(f"{r['name']:<38}{r['value']:>10.3g}  {r['unit']:<4}{r['notes']}")


if __name__ == "__main__":
  main()
