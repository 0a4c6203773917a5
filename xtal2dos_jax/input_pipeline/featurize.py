"""Crystal -> graph featurisation (the CGCNN convention Xtal2DoS uses).

A crystal becomes a directed graph: nodes are the atoms of the unit cell, and each
atom i receives an edge from each of its `max_num_nbr` nearest periodic neighbours j
within `radius`, or from every neighbour within `radius` when `max_num_nbr` is 0 (the
radius graph of equivariant models such as E3NN); message direction neighbour ->
centre: sender j, receiver i. The host stores one int per node (atomic number) and per
edge its distance (Å) and displacement vector r_j + image - r_i (Å, the geometry an
equivariant encoder needs); the 92-d element vectors and the Gaussian distance
expansion are computed on device (`atom_feature_table`, `gaussian_expansion`), so
batches stay small.

Structures are checked by `structures.validate_atoms` (the one definition of what the
model accepts); neighbours come from vesin's cell-list neighbour search (C++), sorted
here into the graph's edge order.
"""
from __future__ import annotations

import functools
import json
import os
from typing import NamedTuple

import ase
import ase.data
import jax.numpy as jnp
import numpy as np
import vesin

from xtal2dos_jax.core import paths
from xtal2dos_jax.core.errors import InputError
from xtal2dos_jax.input_pipeline.structures import MIN_DISTANCE, validate_atoms

# Bump whenever the featurisation or its stored layout changes: it is part of the cache key.
FEATURIZER_VERSION = 2
NUM_COMPOSITION_ELEMENTS = 103
MAX_Z = 100
# Å added to the neighbour-search cutoff so that no pair at d <= radius is lost to
# rounding in the library's own distance.
_CUTOFF_MARGIN = 1e-6


class CrystalGraph(NamedTuple):
  """One featurised crystal (host numpy arrays).

  atomic_numbers: int32[n] element of each atom.
  senders: int32[e] neighbour atom j of each edge (local index).
  receivers: int32[e] centre atom i of each edge, sorted ascending.
  distances: float32[e] |r_j + image - r_i| in Å.
  vectors: float32[e, 3] displacement r_j + image - r_i in Å (Cartesian, the frame of
    the input cell); `distances` is its norm, computed in float64 before rounding.
  """
  atomic_numbers: np.ndarray
  senders: np.ndarray
  receivers: np.ndarray
  distances: np.ndarray
  vectors: np.ndarray


# config.model.atom_features: the element vectors the graph encoders embed.
ATOM_FEATURES = ("cgcnn", "cgcnn_mass")
# The heaviest standard atomic mass of Z <= MAX_Z is ~257 u; ln(m) / ln(_MASS_SCALE) is in (0, 1].
_MASS_SCALE = 260.0


def mass_features(atomic_numbers: np.ndarray) -> np.ndarray:
  """float32[n, 2]: [ln(m / u) / ln(260), sqrt(1 u / m)] of each element's standard atomic
  mass m (ASE's table). Harmonic frequencies scale as sqrt(k / m), so 1 / sqrt(m) is the
  factor a phonon model needs; the CGCNN vectors carry mass only through one-hot periods."""
  m = ase.data.atomic_masses[np.asarray(atomic_numbers)].astype(np.float64)
  return np.stack([np.log(m) / np.log(_MASS_SCALE), 1.0 / np.sqrt(m)], axis=-1).astype(np.float32)


@functools.lru_cache(maxsize=None)
def atom_feature_table(features: str = "cgcnn") -> np.ndarray:
  """float32[MAX_Z + 1, F]: element vectors; row Z is element Z, row 0 (padding) is zeros.

  "cgcnn": the 92-d CGCNN one-hot vectors (F = 92); "cgcnn_mass": those and the two
  `mass_features` columns (F = 94).
  """
  with open(os.path.join(paths.DATA_DIR, "atom_init.json")) as f:
    raw = json.load(f)
  table = np.zeros((MAX_Z + 1, len(raw["1"])), np.float32)
  for z, vec in raw.items():
    table[int(z)] = vec
  if features == "cgcnn_mass":
    mass = np.zeros((MAX_Z + 1, 2), np.float32)
    mass[1:] = mass_features(np.arange(1, MAX_Z + 1))
    table = np.concatenate([table, mass], axis=1)
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


def featurize_crystal(atoms: ase.Atoms, radius: float = 8.0, max_num_nbr: int = 12,
                      name: str = "crystal") -> CrystalGraph:
  """Graph of one periodic crystal; see the module docstring for the convention.

  Neighbours of atom i are the `max_num_nbr` closest atoms (any periodic image,
  including i's own images) with 0 < d <= radius, ordered by distance and, at equal
  distances, by neighbour index j; `max_num_nbr=0` keeps all of them (radius graph).
  Candidates come from vesin's cell-list neighbour search on the positions wrapped into
  the cell; their displacements pos_j + offset @ cell - pos_i and distances are
  recomputed here (float64, rounded to float32 at the end), so the cutoff and the ties
  are decided by this one formula, not by the library's rounding. Wrapping moves an
  atom by a lattice vector, which changes no displacement.

  Raises:
    InputError: `structures.validate_atoms` rejects the structure (no atoms, Z outside
      1..MAX_Z, non-finite or non-periodic or zero-volume cell, atoms or an atom and its
      image closer than MIN_DISTANCE), or some atom has no neighbour within `radius`.
  """
  validate_atoms(atoms, name, max_z=MAX_Z, check_overlap=False)
  numbers = np.asarray(atoms.numbers, np.int32)
  n = len(numbers)
  cell = np.asarray(atoms.cell.array, np.float64)
  frac = np.linalg.solve(cell.T, np.asarray(atoms.positions, np.float64).T).T
  frac -= np.floor(frac)
  pos = frac @ cell
  # The library keeps pairs with its own distance < cutoff; the margin makes sure every
  # pair with d <= radius (and every overlap) is among the candidates.
  cutoff = max(radius, MIN_DISTANCE) + _CUTOFF_MARGIN
  centre, nbr, offset = vesin.NeighborList(cutoff=cutoff, full_list=True).compute(
      points=pos, box=cell, periodic=True, quantities="ijS")
  centre, nbr = centre.astype(np.int64), nbr.astype(np.int64)
  disp = pos[nbr] + offset @ cell - pos[centre]                          # [c, 3]
  dist = np.sqrt(np.einsum("ck,ck->c", disp, disp))
  if dist.size and dist.min() < MIN_DISTANCE + _CUTOFF_MARGIN:
    # Possibly overlapping: validate_atoms decides, and names the atoms.
    validate_atoms(atoms, name, max_z=MAX_Z, check_overlap=True)
  keep = dist <= radius
  centre, nbr, dist, disp, offset = (centre[keep], nbr[keep], dist[keep], disp[keep],
                                     offset[keep])
  # Receivers ascending; per receiver by distance, ties by neighbour index, then by the
  # image's lattice shift. (Images of one neighbour at one distance give identical
  # senders and distances; the shift only fixes which of their vectors the k-nearest
  # cut keeps, independently of the library's output order.)
  order = np.lexsort((offset[:, 2], offset[:, 1], offset[:, 0], nbr, dist, centre))
  centre, nbr, dist, disp = centre[order], nbr[order], dist[order], disp[order]
  counts = np.bincount(centre, minlength=n)
  if (counts == 0).any():
    i = int(np.argmin(counts))
    raise InputError(name, f"atom {i} ({atoms.get_chemical_symbols()[i]}) has no neighbour "
                     f"within {radius} Å")
  rank = np.arange(len(centre)) - np.repeat(np.cumsum(counts) - counts, counts)
  top = rank < max_num_nbr if max_num_nbr > 0 else np.ones(len(centre), bool)
  return CrystalGraph(numbers, nbr[top].astype(np.int32), centre[top].astype(np.int32),
                      dist[top].astype(np.float32), disp[top].astype(np.float32))
