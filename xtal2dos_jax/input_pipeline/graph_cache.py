"""A featurised dataset stored as flat arrays, with an on-disk cache.

All crystals' nodes and edges are concatenated (CSR style: `node_offsets`,
`edge_offsets`), so slicing one crystal or gathering a batch is a few numpy ops and
the whole set saves to one `.npz`. The cache key covers the structures' content,
the featurisation settings and `FEATURIZER_VERSION`, so a second run with the same
data does no featurisation and any change invalidates it.
"""
from __future__ import annotations

import hashlib
import os
import zipfile
from typing import Sequence

import ase
import numpy as np
from absl import logging

from xtal2dos_jax.core.atomic_io import mkstemp_like_open
from xtal2dos_jax.core.errors import InputError
from xtal2dos_jax.input_pipeline.featurize import (CrystalGraph, featurize_crystal,
                                                   FEATURIZER_VERSION)


class GraphSet:
  """Featurised crystals: flat node/edge arrays plus per-crystal offsets.

  atomic_numbers int32[total_nodes]; senders/receivers int32[total_edges] (local
  to their crystal); distances float32[total_edges] (Å); vectors float32[total_edges, 3]
  (displacements, Å; see `CrystalGraph`); node_offsets/edge_offsets int64[n + 1]; ids:
  crystal ids in the same order.

  A file written before the vectors were stored (a workdir's eval_data/) loads with
  vectors NaN: the distance models never read them, and an equivariant model fed
  them gives non-finite outputs instead of silently wrong ones.
  """

  def __init__(self, ids: Sequence[str], atomic_numbers, senders, receivers, distances,
               vectors, node_offsets, edge_offsets):
    self.ids = list(ids)
    self.atomic_numbers = np.asarray(atomic_numbers, np.int32)
    self.senders = np.asarray(senders, np.int32)
    self.receivers = np.asarray(receivers, np.int32)
    self.distances = np.asarray(distances, np.float32)
    self.vectors = np.asarray(vectors, np.float32).reshape(len(self.distances), 3)
    self.node_offsets = np.asarray(node_offsets, np.int64)
    self.edge_offsets = np.asarray(edge_offsets, np.int64)

  def __len__(self) -> int:
    return len(self.ids)

  @property
  def n_node(self) -> np.ndarray:
    """int64[n] atoms per crystal."""
    return np.diff(self.node_offsets)

  @property
  def n_edge(self) -> np.ndarray:
    """int64[n] edges per crystal."""
    return np.diff(self.edge_offsets)

  def graph(self, i: int) -> CrystalGraph:
    ns, ne = slice(*self.node_offsets[i:i + 2]), slice(*self.edge_offsets[i:i + 2])
    return CrystalGraph(self.atomic_numbers[ns], self.senders[ne], self.receivers[ne],
                        self.distances[ne], self.vectors[ne])

  @classmethod
  def from_graphs(cls, ids: Sequence[str], graphs: Sequence[CrystalGraph]) -> "GraphSet":
    def cat(field, dtype, shape=(0,)):
      parts = [getattr(g, field) for g in graphs]
      return np.concatenate(parts).astype(dtype) if parts else np.zeros(shape, dtype)
    offsets = lambda sizes: np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    return cls(ids, cat("atomic_numbers", np.int32), cat("senders", np.int32),
               cat("receivers", np.int32), cat("distances", np.float32),
               cat("vectors", np.float32, (0, 3)),
               offsets([len(g.atomic_numbers) for g in graphs]),
               offsets([len(g.distances) for g in graphs]))

  def subset(self, indices: Sequence[int]) -> "GraphSet":
    return GraphSet.from_graphs([self.ids[i] for i in indices], [self.graph(i) for i in indices])

  def save(self, path: str, skipped: Sequence[tuple[str, str]] = ()) -> None:
    """Writes atomically (temp file + rename): a killed run never leaves a torn cache.

    `skipped` ((id, reason) of crystals that could not be featurised) is stored too,
    so a cache hit reports them exactly as the first run did.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = mkstemp_like_open(directory, suffix=".npz.tmp")
    skipped = list(skipped)
    with os.fdopen(fd, "wb") as f:
      np.savez(f, ids=np.asarray(self.ids, dtype=str), atomic_numbers=self.atomic_numbers,
               senders=self.senders, receivers=self.receivers, distances=self.distances,
               vectors=self.vectors, node_offsets=self.node_offsets, edge_offsets=self.edge_offsets,
               skipped=np.asarray(skipped, dtype=str).reshape(len(skipped), 2))
    os.replace(tmp, path)

  @classmethod
  def load(cls, path: str, require_vectors: bool = False
           ) -> tuple["GraphSet", list[tuple[str, str]]]:
    """(graphs, skipped) as written by `save`.

    A file without edge vectors raises KeyError when `require_vectors` (the cache: it
    is rebuilt), else loads with NaN vectors (see the class docstring).
    """
    with np.load(path) as z:
      if "vectors" in z:
        vectors = z["vectors"]
      elif require_vectors:
        raise KeyError("vectors (featurised by an older version)")
      else:
        vectors = np.full((len(z["distances"]), 3), np.nan, np.float32)
      graphs = cls(z["ids"].tolist(), z["atomic_numbers"], z["senders"], z["receivers"],
                   z["distances"], vectors, z["node_offsets"], z["edge_offsets"])
      return graphs, [tuple(row) for row in z["skipped"].tolist()]


def structures_hash(ids: Sequence[str], structures: Sequence[ase.Atoms]) -> str:
  """Content hash of the crystals (ids, species, cells, positions, pbc)."""
  h = hashlib.sha256()
  for i, atoms in zip(ids, structures):
    h.update(str(i).encode())
    h.update(np.asarray(atoms.numbers, np.int64).tobytes())
    h.update(np.asarray(atoms.cell.array, np.float64).tobytes())
    h.update(np.asarray(atoms.positions, np.float64).tobytes())
    h.update(np.asarray(atoms.pbc, bool).tobytes())
  return h.hexdigest()


def default_cache_dir() -> str:
  return os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")),
                      "xtal2dos_jax")


def cache_path(cache_dir: str, ids, structures, radius: float, max_num_nbr: int) -> str:
  """The cache file of these crystals featurised with these settings. The key includes
  FEATURIZER_VERSION, so a cache of an older featurisation is never found (it is
  rebuilt, and `load_or_featurize` logs that it featurised)."""
  key = hashlib.sha256(
      f"{structures_hash(ids, structures)}|r={radius!r}|k={max_num_nbr}|v={FEATURIZER_VERSION}"
      .encode()).hexdigest()[:24]
  return os.path.join(cache_dir or default_cache_dir(), f"graphs_{key}.npz")


def featurize_structures(ids: Sequence[str], structures: Sequence[ase.Atoms], radius: float,
                         max_num_nbr: int) -> tuple[GraphSet, list[tuple[str, str]]]:
  """Featurises every crystal; bad ones are returned as (id, reason), not raised."""
  good_ids, graphs, skipped = [], [], []
  for i, atoms in zip(ids, structures):
    try:
      graphs.append(featurize_crystal(atoms, radius, max_num_nbr, name=str(i)))
      good_ids.append(i)
    except InputError as e:
      skipped.append((str(i), e.reason))
  return GraphSet.from_graphs(good_ids, graphs), skipped


def load_or_featurize(ids: Sequence[str], structures: Sequence[ase.Atoms], radius: float,
                      max_num_nbr: int, cache_dir: str = "",
                      use_cache: bool = True) -> tuple[GraphSet, list[tuple[str, str]], bool]:
  """Featurised graphs from the cache if present, else featurise and cache them.

  Returns (graphs, skipped, from_cache). Crystals that cannot be featurised (e.g.
  an atom with no neighbour within the radius) are reported in `skipped` and left
  out of `graphs`; a cache hit returns the same list.
  """
  path = cache_path(cache_dir, ids, structures, radius, max_num_nbr) if use_cache else ""
  if path and os.path.exists(path):
    try:
      graphs, skipped = GraphSet.load(path, require_vectors=True)
      return graphs, skipped, True
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:  # a corrupt cache is rebuilt, never trusted
      logging.warning("featurisation cache %s unreadable (%s); rebuilding", path, e)
  elif path:
    logging.info("no featurisation cache for these crystals and settings (featuriser "
                 "version %d); featurising", FEATURIZER_VERSION)
  graphs, skipped = featurize_structures(ids, structures, radius, max_num_nbr)
  if path:
    try:
      graphs.save(path, skipped)
    except OSError as e:
      logging.warning("could not write featurisation cache %s: %s", path, e)
  return graphs, skipped, False
