"""Tests for xtal2dos_jax.input_pipeline.graph_cache: flat storage, save/load and the featurisation
cache."""
import logging
import os

import ase
import chex
import numpy as np
import pytest
from ase.build import bulk

from xtal2dos_jax.core.errors import InputError
from xtal2dos_jax.input_pipeline import featurize, graph_cache
from xtal2dos_jax.input_pipeline.graph_cache import GraphSet

RADIUS = 6.0
MAX_NBR = 8


def _isolated():
  """Featurisation fails: the Ar atom has no neighbour within RADIUS."""
  return ase.Atoms("NaClAr", positions=[[0, 0, 0], [2.8, 0, 0], [10, 10, 10]],
                   cell=np.eye(3) * 20.0, pbc=True)


def _bad_z():
  return ase.Atoms(numbers=[11, 0], positions=[[0, 0, 0], [1.5, 0, 0]], cell=np.eye(3) * 3.0,
                   pbc=True)


@pytest.fixture(scope="module")
def structures():
  ids = ["nacl", "si", "fe", "nacl_cubic", "cu"]
  atoms = [bulk("NaCl", "rocksalt", a=5.64), bulk("Si", "diamond", a=5.43),
           bulk("Fe", "bcc", a=2.87), bulk("NaCl", "rocksalt", a=5.64, cubic=True),
           bulk("Cu", "fcc", a=3.61)]
  return ids, atoms


@pytest.fixture(scope="module")
def graphs(structures):
  ids, atoms = structures
  return [featurize.featurize_crystal(a, RADIUS, MAX_NBR, name=i) for i, a in zip(ids, atoms)]


def _assert_graph_equal(a, b):
  for field in featurize.CrystalGraph._fields:
    x, y = getattr(a, field), getattr(b, field)
    assert x.dtype == y.dtype, field
    np.testing.assert_array_equal(x, y, err_msg=field)


def _assert_sets_equal(a: GraphSet, b: GraphSet):
  assert list(a.ids) == list(b.ids)
  for field in ("atomic_numbers", "senders", "receivers", "distances", "vectors",
                "node_offsets", "edge_offsets"):
    x, y = getattr(a, field), getattr(b, field)
    assert x.dtype == y.dtype, field
    np.testing.assert_array_equal(x, y, err_msg=field)


# ----------------------------------------------------------------------------- GraphSet


def test_from_graphs_round_trip(structures, graphs):
  ids, atoms = structures
  gs = GraphSet.from_graphs(ids, graphs)
  assert len(gs) == len(ids) and gs.ids == ids
  np.testing.assert_array_equal(gs.n_node, [len(a) for a in atoms])
  np.testing.assert_array_equal(gs.n_edge, [len(g.distances) for g in graphs])
  assert gs.node_offsets[0] == 0 and gs.node_offsets[-1] == len(gs.atomic_numbers)
  assert gs.edge_offsets[-1] == len(gs.distances)
  chex.assert_equal_shape([gs.senders, gs.receivers, gs.distances])
  chex.assert_shape(gs.vectors, (len(gs.distances), 3))
  for i, g in enumerate(graphs):
    _assert_graph_equal(gs.graph(i), g)


def test_subset(structures, graphs):
  ids, _ = structures
  gs = GraphSet.from_graphs(ids, graphs)
  sub = gs.subset([3, 0, 3])
  assert sub.ids == ["nacl_cubic", "nacl", "nacl_cubic"]
  for k, i in enumerate([3, 0, 3]):
    _assert_graph_equal(sub.graph(k), graphs[i])
  np.testing.assert_array_equal(sub.n_node, gs.n_node[[3, 0, 3]])


def test_empty_graphset():
  gs = GraphSet.from_graphs([], [])
  assert len(gs) == 0
  np.testing.assert_array_equal(gs.node_offsets, [0])
  chex.assert_shape(gs.vectors, (0, 3))
  assert gs.n_node.shape == (0,)


def test_save_load_round_trip(tmp_path, structures, graphs):
  ids, _ = structures
  gs = GraphSet.from_graphs(ids, graphs)
  skipped = [("mp-1", "atom 2 (Ar) has no neighbour within 6.0 Å"), ("mp-2", "bad Z")]
  path = str(tmp_path / "sub" / "graphs.npz")
  gs.save(path, skipped)
  loaded, loaded_skipped = GraphSet.load(path)
  _assert_sets_equal(loaded, gs)
  assert loaded_skipped == skipped
  for i, g in enumerate(graphs):
    _assert_graph_equal(loaded.graph(i), g)
  # No temp files are left behind by the atomic write.
  assert os.listdir(tmp_path / "sub") == ["graphs.npz"]
  # Empty skipped list round-trips too.
  gs.save(path)
  assert GraphSet.load(path)[1] == []


# ----------------------------------------------------------------------------- cache


def _forbid_featurisation(monkeypatch):
  def boom(*args, **kwargs):
    raise AssertionError("featurize_crystal called although the cache should be used")
  monkeypatch.setattr(graph_cache, "featurize_crystal", boom)
  monkeypatch.setattr(featurize, "featurize_crystal", boom)


def _count_featurisation(monkeypatch):
  calls = []
  real = featurize.featurize_crystal

  def counting(*args, **kwargs):
    calls.append(kwargs.get("name"))
    return real(*args, **kwargs)
  monkeypatch.setattr(graph_cache, "featurize_crystal", counting)
  return calls


def test_cache_hit_does_not_featurise(tmp_path, monkeypatch, structures, graphs):
  ids, atoms = structures
  cache = str(tmp_path)
  first, skipped, from_cache = graph_cache.load_or_featurize(ids, atoms, RADIUS, MAX_NBR, cache)
  assert not from_cache and skipped == []
  assert len([f for f in os.listdir(cache) if f.endswith(".npz")]) == 1
  for i, g in enumerate(graphs):
    _assert_graph_equal(first.graph(i), g)
  with monkeypatch.context() as m:
    _forbid_featurisation(m)
    second, skipped2, from_cache2 = graph_cache.load_or_featurize(ids, atoms, RADIUS, MAX_NBR, cache)
  assert from_cache2 and skipped2 == []
  _assert_sets_equal(second, first)


def test_use_cache_false_always_featurises(tmp_path, monkeypatch, structures):
  ids, atoms = structures
  graph_cache.load_or_featurize(ids, atoms, RADIUS, MAX_NBR, str(tmp_path))
  calls = _count_featurisation(monkeypatch)
  _, _, from_cache = graph_cache.load_or_featurize(ids, atoms, RADIUS, MAX_NBR, str(tmp_path),
                                                use_cache=False)
  assert not from_cache and len(calls) == len(ids)


def test_default_cache_dir_respects_xdg(tmp_path, monkeypatch, structures):
  ids, atoms = structures
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  _, _, from_cache = graph_cache.load_or_featurize(ids[:2], atoms[:2], RADIUS, MAX_NBR)
  assert not from_cache
  assert os.listdir(tmp_path / "xtal2dos_jax")
  _, _, from_cache = graph_cache.load_or_featurize(ids[:2], atoms[:2], RADIUS, MAX_NBR)
  assert from_cache


def _moved_one_atom(atoms):
  out = [a.copy() for a in atoms]
  out[1].positions[1] += np.array([0.0, 0.0, 1e-3])
  return out


@pytest.mark.parametrize("change", ["radius", "max_num_nbr", "position", "id", "species", "cell"])
def test_cache_invalidated_by_any_change(tmp_path, monkeypatch, structures, change):
  ids, atoms = structures
  cache = str(tmp_path)
  graph_cache.load_or_featurize(ids, atoms, RADIUS, MAX_NBR, cache)
  radius, k, new_ids, new_atoms = RADIUS, MAX_NBR, list(ids), [a.copy() for a in atoms]
  if change == "radius":
    radius = RADIUS + 0.5
  elif change == "max_num_nbr":
    k = MAX_NBR + 1
  elif change == "position":
    new_atoms = _moved_one_atom(atoms)
  elif change == "id":
    new_ids[0] = "renamed"
  elif change == "species":
    new_atoms[0].numbers[0] = 19  # Na -> K
  elif change == "cell":
    new_atoms[2].set_cell(new_atoms[2].cell.array * 1.01, scale_atoms=True)
  calls = _count_featurisation(monkeypatch)
  got, _, from_cache = graph_cache.load_or_featurize(new_ids, new_atoms, radius, k, cache)
  assert not from_cache
  assert len(calls) == len(ids)
  # The result is the featurisation of the *new* inputs, not stale data.
  for i, a in enumerate(new_atoms):
    _assert_graph_equal(got.graph(i), featurize.featurize_crystal(a, radius, k))
  assert got.ids == new_ids
  # The original entry is still valid.
  _, _, from_cache = graph_cache.load_or_featurize(ids, atoms, RADIUS, MAX_NBR, cache)
  assert from_cache


def test_cache_key_includes_featurizer_version(tmp_path, monkeypatch, structures):
  ids, atoms = structures
  p1 = graph_cache.cache_path(str(tmp_path), ids, atoms, RADIUS, MAX_NBR)
  # Deterministic: equal content (fresh copies) gives the same key.
  assert p1 == graph_cache.cache_path(str(tmp_path), list(ids), [a.copy() for a in atoms], RADIUS,
                                   MAX_NBR)
  monkeypatch.setattr(graph_cache, "FEATURIZER_VERSION", featurize.FEATURIZER_VERSION + 1)
  p2 = graph_cache.cache_path(str(tmp_path), ids, atoms, RADIUS, MAX_NBR)
  assert p1 != p2


def _truncated(raw):
  return raw[:len(raw) // 2]


CORRUPTIONS = [
    pytest.param(lambda raw: b"this is not an npz file" * 20, id="garbage"),
    pytest.param(_truncated, id="truncated"),
    pytest.param(lambda raw: b"", id="empty"),
]


@pytest.mark.parametrize("corrupt", CORRUPTIONS)
def test_corrupt_cache_is_rebuilt_with_warning(tmp_path, caplog, structures, graphs, corrupt):
  ids, atoms = structures
  cache = str(tmp_path)
  graph_cache.load_or_featurize(ids, atoms, RADIUS, MAX_NBR, cache)
  path = graph_cache.cache_path(cache, ids, atoms, RADIUS, MAX_NBR)
  with open(path, "rb") as f:
    raw = f.read()
  with open(path, "wb") as f:
    f.write(corrupt(raw))
  with caplog.at_level(logging.WARNING):
    got, skipped, from_cache = graph_cache.load_or_featurize(ids, atoms, RADIUS, MAX_NBR, cache)
  assert not from_cache and skipped == []
  for i, g in enumerate(graphs):
    _assert_graph_equal(got.graph(i), g)
  assert any(r.levelno == logging.WARNING and path in r.getMessage() for r in caplog.records)
  # The rebuilt cache is good again.
  _, _, from_cache = graph_cache.load_or_featurize(ids, atoms, RADIUS, MAX_NBR, cache)
  assert from_cache


def test_cache_missing_array_is_rebuilt(tmp_path, structures, graphs):
  """A readable npz without the expected arrays (e.g. from another tool) is not trusted."""
  ids, atoms = structures
  cache = str(tmp_path)
  path = graph_cache.cache_path(cache, ids, atoms, RADIUS, MAX_NBR)
  with open(path, "wb") as f:
    np.savez(f, ids=np.asarray(ids))
  got, _, from_cache = graph_cache.load_or_featurize(ids, atoms, RADIUS, MAX_NBR, cache)
  assert not from_cache
  _assert_graph_equal(got.graph(0), graphs[0])


def _drop_vectors(path):
  """Rewrites a saved GraphSet as the featuriser without edge vectors wrote it."""
  with np.load(path) as z:
    arrays = {k: z[k] for k in z.files if k != "vectors"}
  with open(path, "wb") as f:
    np.savez(f, **arrays)


def test_cache_without_vectors_is_rebuilt_with_warning(tmp_path, caplog, structures, graphs):
  """A cache file lacking the edge vectors (an older layout under this key) never loads."""
  ids, atoms = structures
  cache = str(tmp_path)
  graph_cache.load_or_featurize(ids, atoms, RADIUS, MAX_NBR, cache)
  path = graph_cache.cache_path(cache, ids, atoms, RADIUS, MAX_NBR)
  _drop_vectors(path)
  with caplog.at_level(logging.WARNING):
    got, _, from_cache = graph_cache.load_or_featurize(ids, atoms, RADIUS, MAX_NBR, cache)
  assert not from_cache
  assert any("vectors" in r.getMessage() for r in caplog.records)
  _assert_graph_equal(got.graph(0), graphs[0])


def test_saved_set_without_vectors_loads_with_nan_vectors(tmp_path, structures, graphs):
  """A workdir's eval_data/ written before the vectors were stored still loads."""
  ids, _ = structures
  path = str(tmp_path / "graphs.npz")
  GraphSet.from_graphs(ids, graphs).save(path)
  _drop_vectors(path)
  loaded, _ = GraphSet.load(path)
  np.testing.assert_array_equal(loaded.distances, GraphSet.from_graphs(ids, graphs).distances)
  assert loaded.vectors.shape == (len(loaded.distances), 3) and np.isnan(loaded.vectors).all()
  with pytest.raises(KeyError, match="vectors"):
    GraphSet.load(path, require_vectors=True)


def test_failed_crystals_are_skipped_and_reported(tmp_path, monkeypatch, structures, graphs):
  ids, atoms = structures
  all_ids = [ids[0], "isolated", ids[1], "bad-z", ids[2]]
  all_atoms = [atoms[0], _isolated(), atoms[1], _bad_z(), atoms[2]]
  cache = str(tmp_path)
  got, skipped, from_cache = graph_cache.load_or_featurize(all_ids, all_atoms, RADIUS, MAX_NBR, cache)
  assert not from_cache
  assert got.ids == [ids[0], ids[1], ids[2]]
  for i in range(3):
    _assert_graph_equal(got.graph(i), graphs[i])
  assert [s[0] for s in skipped] == ["isolated", "bad-z"]
  assert all(isinstance(s[1], str) and s[1] for s in skipped)
  assert "atom 2" in skipped[0][1] and "Ar" in skipped[0][1]
  # The reasons are the InputError reasons.
  with pytest.raises(InputError) as info:
    featurize.featurize_crystal(_isolated(), RADIUS, MAX_NBR, name="isolated")
  assert skipped[0][1] == info.value.reason
  # Cache hit: same graphs, same skipped list, no featurisation.
  with monkeypatch.context() as m:
    _forbid_featurisation(m)
    got2, skipped2, from_cache2 = graph_cache.load_or_featurize(all_ids, all_atoms, RADIUS, MAX_NBR,
                                                             cache)
  assert from_cache2
  assert skipped2 == skipped
  _assert_sets_equal(got2, got)


def test_all_crystals_fail(tmp_path):
  got, skipped, _ = graph_cache.load_or_featurize(["a"], [_isolated()], RADIUS, MAX_NBR,
                                               str(tmp_path))
  assert len(got) == 0 and [s[0] for s in skipped] == ["a"]
  got2, skipped2, from_cache = graph_cache.load_or_featurize(["a"], [_isolated()], RADIUS, MAX_NBR,
                                                          str(tmp_path))
  assert from_cache and len(got2) == 0 and skipped2 == skipped
