"""Crystal -> graph featurisation (CGCNN / Xtal2DoS convention, DESIGN 3.1).

A crystal becomes a directed graph: nodes are the atoms of the unit cell, and each
atom i receives an edge from each of its `max_num_nbr` nearest periodic neighbours j
within `radius` (message direction neighbour -> centre: sender j, receiver i). The
host stores one int per node (atomic number) and one float per edge (distance, Å);
the 92-d element vectors and the Gaussian distance expansion are computed on device
(`atom_feature_table`, `gaussian_expansion`), so batches stay small.
"""
from __future__ import annotations

import functools
import json
import os
from typing import NamedTuple

import ase
import jax.numpy as jnp
import numpy as np

from xtal2dos_jax.errors import InputError
from xtal2dos_jax.structures import MIN_DISTANCE

# Bump whenever the featurisation changes: it is part of the cache key.
FEATURIZER_VERSION = 1
NUM_COMPOSITION_ELEMENTS = 103
MAX_Z = 100

_DATA_DIR = os.path.join(os.path.dirname(__file__), "data")


class CrystalGraph(NamedTuple):
  """One featurised crystal (host numpy arrays).

  atomic_numbers: int32[n] element of each atom.
  senders: int32[e] neighbour atom j of each edge (local index).
  receivers: int32[e] centre atom i of each edge, sorted ascending.
  distances: float32[e] |r_j + image - r_i| in Å.
  """
  atomic_numbers: np.ndarray
  senders: np.ndarray
  receivers: np.ndarray
  distances: np.ndarray


@functools.lru_cache(maxsize=None)
def atom_feature_table() -> np.ndarray:
  """float32[MAX_Z + 1, 92]: CGCNN element vectors; row Z is element Z, row 0 is zeros."""
  with open(os.path.join(_DATA_DIR, "atom_init.json")) as f:
    raw = json.load(f)
  table = np.zeros((MAX_Z + 1, len(raw["1"])), np.float32)
  for z, vec in raw.items():
    table[int(z)] = vec
  return table


def gaussian_centres(radius: float, step: float) -> np.ndarray:
  """Centres 0, step, ..., radius (41 for 8 Å / 0.2 Å)."""
  return np.linspace(0.0, radius, int(round(radius / step)) + 1).astype(np.float32)


def gaussian_expansion(distances: jnp.ndarray, radius: float, step: float) -> jnp.ndarray:
  """Edge features exp(-(d - mu)^2 / step^2): float[e] Å -> float[e, num_centres]."""
  mu = jnp.asarray(gaussian_centres(radius, step))
  return jnp.exp(-jnp.square(distances[..., None] - mu) / step**2)


def composition_fractions(atomic_numbers: jnp.ndarray, n_node: jnp.ndarray) -> jnp.ndarray:
  """Element fractions per graph: int[N] Z, int[G] atoms per graph -> float[G, 103].

  Column Z-1 holds the fraction of atoms with atomic number Z; padding nodes (Z=0)
  are ignored, so each real graph's row sums to 1 (empty graphs give zeros).
  """
  num_graphs = n_node.shape[0]
  graph_of_node = jnp.repeat(jnp.arange(num_graphs), n_node,
                             total_repeat_length=atomic_numbers.shape[0])
  onehot = (atomic_numbers[:, None] == jnp.arange(1, NUM_COMPOSITION_ELEMENTS + 1)).astype(
      jnp.float32)
  counts = jnp.zeros((num_graphs, NUM_COMPOSITION_ELEMENTS), jnp.float32).at[graph_of_node].add(
      onehot)
  return counts / jnp.maximum(counts.sum(-1, keepdims=True), 1.0)


def _image_offsets(cell: np.ndarray, radius: float) -> np.ndarray:
  """All integer lattice translations that can hold a neighbour within `radius`."""
  volume = abs(np.linalg.det(cell))
  # Distance between opposite faces of the cell along each reciprocal direction.
  heights = volume / np.linalg.norm(np.cross(cell[[1, 2, 0]], cell[[2, 0, 1]]), axis=1)
  # +1: positions are wrapped into the cell, so an atom can sit up to one cell away.
  reps = np.ceil(radius / heights).astype(int) + 1
  ranges = [np.arange(-r, r + 1) for r in reps]
  return np.stack(np.meshgrid(*ranges, indexing="ij"), -1).reshape(-1, 3)


def featurize_crystal(atoms: ase.Atoms, radius: float = 8.0, max_num_nbr: int = 12,
                      name: str = "crystal") -> CrystalGraph:
  """Graph of one periodic crystal; see the module docstring for the convention.

  Neighbours of atom i are the `max_num_nbr` closest atoms (any periodic image,
  including i's own images) with 0 < d <= radius, ordered by distance (stable in
  neighbour index on ties). Raises InputError if some atom has no neighbour or two
  atoms (or an atom and an image) are closer than MIN_DISTANCE.
  """
  numbers = np.asarray(atoms.numbers, np.int32)
  n = len(numbers)
  if n == 0:
    raise InputError(name, "structure has no atoms")
  bad = (numbers < 1) | (numbers > MAX_Z)
  if bad.any():
    raise InputError(name, f"atomic number {int(numbers[bad][0])} outside the supported 1..{MAX_Z}")
  cell = np.asarray(atoms.cell.array, np.float64)
  if abs(np.linalg.det(cell)) < 1e-8:
    raise InputError(name, "cell has zero volume (a periodic crystal is required)")
  frac = np.linalg.solve(cell.T, np.asarray(atoms.positions, np.float64).T).T
  frac -= np.floor(frac)
  pos = frac @ cell
  offsets = _image_offsets(cell, radius)
  shifts = offsets @ cell                                               # [m, 3]
  # d[i, j, m] = |pos_j + shift_m - pos_i|
  disp = pos[None, :, None, :] + shifts[None, None, :, :] - pos[:, None, None, :]
  dist = np.sqrt(np.einsum("ijmk,ijmk->ijm", disp, disp))
  home = int(np.flatnonzero(~offsets.any(1))[0])
  dist[np.arange(n), np.arange(n), home] = np.inf                       # the atom itself
  dist = dist.reshape(n, -1)
  closest = dist.min()
  if closest < MIN_DISTANCE:
    i, jm = np.unravel_index(np.argmin(dist), dist.shape)
    j = jm // len(offsets)
    sym = atoms.get_chemical_symbols()
    raise InputError(name, f"atoms {i} ({sym[i]}) and {j} ({sym[j]}) overlap: {closest:.3g} Å "
                     f"apart (minimum {MIN_DISTANCE} Å)")
  dist[dist > radius] = np.inf
  k = min(max_num_nbr, dist.shape[1])
  order = np.argsort(dist, axis=1, kind="stable")[:, :k]
  nbr_dist = np.take_along_axis(dist, order, axis=1)
  valid = np.isfinite(nbr_dist)
  counts = valid.sum(1)
  if (counts == 0).any():
    i = int(np.argmin(counts))
    raise InputError(name, f"atom {i} ({atoms.get_chemical_symbols()[i]}) has no neighbour "
                     f"within {radius} Å")
  receivers = np.repeat(np.arange(n, dtype=np.int32), k).reshape(n, k)[valid]
  senders = (order // shifts.shape[0]).astype(np.int32)[valid]
  return CrystalGraph(numbers, senders, receivers, nbr_dist[valid].astype(np.float32))
