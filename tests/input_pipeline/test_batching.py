"""Tests for xtal2dos_jax.input_pipeline.batching: padded budgets, masks, epoch plans,
prefetching."""
import functools
import itertools
import threading

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import bulk

from xtal2dos_jax.core.errors import InputError
from xtal2dos_jax.input_pipeline import featurize
from xtal2dos_jax.input_pipeline import batching as ip
from xtal2dos_jax.input_pipeline.graph_cache import GraphSet

RADIUS = 3.0   # small: edge counts differ between crystals (4, 6 or 12 per atom)
MAX_NBR = 12
L_Y = 5


def _small_crystals():
  return {
      "cu": bulk("Cu", "fcc", a=3.61),
      "fe": bulk("Fe", "bcc", a=2.87),
      "nacl": bulk("NaCl", "rocksalt", a=5.64),
      "si": bulk("Si", "diamond", a=5.43),
      "fe_cubic": bulk("Fe", "bcc", a=2.87, cubic=True),
      "nacl_cubic": bulk("NaCl", "rocksalt", a=5.64, cubic=True),
      "si_cubic": bulk("Si", "diamond", a=5.43, cubic=True),
      "cu_cubic": bulk("Cu", "fcc", a=3.61, cubic=True),
      "mgo": bulk("MgO", "rocksalt", a=4.21),
      "gaas": bulk("GaAs", "zincblende", a=5.65),
      "al": bulk("Al", "fcc", a=4.05),
      "cu_x2": bulk("Cu", "fcc", a=3.61).repeat((1, 1, 2)),
      "nacl_x2": bulk("NaCl", "rocksalt", a=5.64).repeat((2, 1, 1)),
      "cu_cubic_x2": bulk("Cu", "fcc", a=3.61, cubic=True).repeat((1, 1, 2)),
  }


def _labelled(ids, atoms_list, seed=0):
  graphs = [featurize.featurize_crystal(a, RADIUS, MAX_NBR, name=i)
            for i, a in zip(ids, atoms_list)]
  gs = GraphSet.from_graphs(ids, graphs)
  rng = np.random.default_rng(seed)
  n = len(ids)
  return ip.LabelledGraphs(gs, rng.random((n, L_Y)).astype(np.float32),
                           (rng.random(n) + 0.5).astype(np.float32),
                           rng.integers(0, 7, n).astype(np.int32))


@pytest.fixture(scope="module")
def data():
  crystals = _small_crystals()
  return _labelled(list(crystals), list(crystals.values()))


@pytest.fixture(scope="module")
def budget(data):
  return ip.make_budget(data.graphs.n_node, data.graphs.n_edge, crystals_per_batch=3)


@pytest.fixture(scope="module")
def big_data(data):
  """The small crystals plus one 64-atom supercell appended at the end."""
  crystals = _small_crystals()
  crystals["big_cu_444"] = bulk("Cu", "fcc", a=3.61).repeat((4, 4, 4))
  return _labelled(list(crystals), list(crystals.values()))


# ----------------------------------------------------------------------------- batches


def _check_batch(data, idx, budget, batch):
  g = data.graphs
  idx = np.asarray(idx, np.int64)
  k = len(idx)
  n_tot, e_tot, n_graph, max_atoms = budget.n_node, budget.n_edge, budget.n_graph, budget.max_atoms
  graph = batch.graph
  chex.assert_shape([graph.nodes], (n_tot,))
  chex.assert_shape([graph.edges, graph.senders, graph.receivers], (e_tot,))
  chex.assert_shape([graph.n_node, graph.n_edge, batch.graph_mask, batch.y_scale,
                     batch.crystal_system], (n_graph,))
  chex.assert_shape([batch.atom_index, batch.atom_mask], (n_graph, max_atoms))
  chex.assert_shape(batch.y, (n_graph, L_Y))
  assert graph.nodes.dtype == np.int32 and graph.edges.dtype == np.float32
  assert graph.senders.dtype == np.int32 and graph.receivers.dtype == np.int32
  assert batch.atom_index.dtype == np.int32 and batch.atom_mask.dtype == bool
  assert batch.graph_mask.dtype == bool

  nn, ne = g.n_node[idx], g.n_edge[idx]
  n_real, e_real = int(nn.sum()), int(ne.sum())
  # Totals and the padding graph.
  assert int(graph.n_node.sum()) == n_tot and int(graph.n_edge.sum()) == e_tot
  np.testing.assert_array_equal(graph.n_node[:k], nn)
  np.testing.assert_array_equal(graph.n_edge[:k], ne)
  assert graph.n_node[k] >= 1
  # Masks.
  assert int(batch.graph_mask.sum()) == k and batch.graph_mask[:k].all()
  np.testing.assert_array_equal(batch.atom_mask.sum(1)[:k], nn)
  assert not batch.atom_mask[k:].any()
  # Nodes: real atoms first (in crystal order), then Z=0 padding.
  assert np.all(graph.nodes[:n_real] > 0)
  np.testing.assert_array_equal(graph.nodes[n_real:], 0)
  # Padding edges sit on the last (padding) node and carry no distance.
  np.testing.assert_array_equal(graph.senders[e_real:], n_tot - 1)
  np.testing.assert_array_equal(graph.receivers[e_real:], n_tot - 1)
  np.testing.assert_array_equal(graph.edges[e_real:], 0.0)
  chex.assert_shape(batch.edge_vectors, (e_tot, 3))
  assert batch.edge_vectors.dtype == np.float32
  np.testing.assert_array_equal(batch.edge_vectors[e_real:], 0.0)
  # Every edge (real or padding) links nodes of the graph that owns it.
  node_graph = np.repeat(np.arange(n_graph), graph.n_node)
  edge_graph = np.repeat(np.arange(n_graph), graph.n_edge)
  np.testing.assert_array_equal(node_graph[graph.senders], edge_graph)
  np.testing.assert_array_equal(node_graph[graph.receivers], edge_graph)

  node_start = np.concatenate([[0], np.cumsum(nn)])
  edge_start = np.concatenate([[0], np.cumsum(ne)])
  for b, i in enumerate(idx):
    ref = g.graph(int(i))
    ns, ne_ = slice(node_start[b], node_start[b + 1]), slice(edge_start[b], edge_start[b + 1])
    a = int(nn[b])
    # atom_index points at this crystal's nodes, in order, with the right elements.
    np.testing.assert_array_equal(batch.atom_index[b, :a], np.arange(node_start[b],
                                                                     node_start[b + 1]))
    np.testing.assert_array_equal(graph.nodes[batch.atom_index[b, :a]], ref.atomic_numbers)
    np.testing.assert_array_equal(graph.nodes[ns], ref.atomic_numbers)
    # Real edges stay inside their crystal's node range and keep their local structure.
    for arr, local in ((graph.senders, ref.senders), (graph.receivers, ref.receivers)):
      assert np.all((arr[ne_] >= node_start[b]) & (arr[ne_] < node_start[b + 1]))
      np.testing.assert_array_equal(arr[ne_] - node_start[b], local)
    np.testing.assert_array_equal(graph.edges[ne_], ref.distances)
    np.testing.assert_array_equal(batch.edge_vectors[ne_], ref.vectors)
  # Masked-out atom slots point at the padding node.
  np.testing.assert_array_equal(batch.atom_index[~batch.atom_mask], n_tot - 1)
  # Labels.
  np.testing.assert_array_equal(batch.y[:k], data.y[idx])
  np.testing.assert_array_equal(batch.y[k:], 0.0)
  np.testing.assert_array_equal(batch.y_scale[:k], data.y_scale[idx])
  np.testing.assert_array_equal(batch.y_scale[k:], 1.0)
  np.testing.assert_array_equal(batch.crystal_system[:k], data.crystal_system[idx])


def test_assemble_masks_and_padding(data, budget):
  plan = ip.epoch_plan(data, budget, 1, seed=3, epoch=0, shuffle=True)
  groups = [step[0] for step in plan]
  assert len(groups) >= 3
  for idx in groups:
    _check_batch(data, idx, budget, ip.assemble(data, idx, budget))


@pytest.mark.parametrize("idx", [[0], [5, 6, 13], [13, 2], []], ids=str)
def test_assemble_specific_groups(data, budget, idx):
  _check_batch(data, idx, budget, ip.assemble(data, np.asarray(idx, np.int64), budget))


def test_assemble_empty_group_is_all_padding(data, budget):
  batch = ip.assemble(data, np.zeros(0, np.int64), budget)
  assert not batch.graph_mask.any() and not batch.atom_mask.any()
  assert batch.graph.n_node[0] == budget.n_node and batch.graph.n_edge[0] == budget.n_edge
  np.testing.assert_array_equal(batch.graph.nodes, 0)


def _without_vectors(batch):
  return batch._replace(edge_vectors=None)


@pytest.mark.parametrize("idx", [[5, 6, 13], []], ids=str)
def test_assemble_without_edge_vectors_leaves_a_zero_width_field(data, budget, idx):
  idx = np.asarray(idx, np.int64)
  full = ip.assemble(data, idx, budget)
  bare = ip.assemble(data, idx, budget, edge_vectors=False)
  chex.assert_shape(bare.edge_vectors, (budget.n_edge, 0))
  assert bare.edge_vectors.dtype == np.float32
  chex.assert_trees_all_equal(_without_vectors(bare), _without_vectors(full))
  nbytes = lambda b: sum(x.nbytes for x in jax.tree.leaves(b))
  assert nbytes(full) - nbytes(bare) == 12 * budget.n_edge


def test_step_batches_and_dummy_batch_pass_edge_vectors_on(data, budget):
  plan = ip.epoch_plan(data, budget, 2, seed=0, epoch=0, shuffle=True)
  expected = [ip.stack([ip.assemble(data, g, budget, edge_vectors=False) for g in step])
              for step in plan]
  _assert_batches_equal(list(ip.step_batches(data, budget, plan, edge_vectors=False)),
                        expected)
  member_plan = ip.ensemble_plan([plan, plan])
  first = next(iter(ip.step_batches(data, budget, member_plan, edge_vectors=False)))
  chex.assert_shape(first.edge_vectors, (2, 2, budget.n_edge, 0))   # [devices, members, E, 0]
  chex.assert_shape(ip.dummy_batch(budget, L_Y, edge_vectors=False).edge_vectors,
                    (budget.n_edge, 0))
  chex.assert_shape(ip.dummy_batch(budget, L_Y).edge_vectors, (budget.n_edge, 3))


def test_assemble_without_crystal_system(data, budget):
  no_cs = data._replace(crystal_system=None)
  batch = ip.assemble(no_cs, np.array([1, 2]), budget)
  np.testing.assert_array_equal(batch.crystal_system, 0)


@pytest.mark.parametrize("bad", [7, -1])
def test_assemble_rejects_crystal_systems_outside_the_prompt_table(data, budget, bad):
  systems = np.zeros(len(data.graphs), np.int32)
  systems[2] = bad
  with pytest.raises(InputError, match=r"crystal_system: 1 crystal system\(s\) outside 0..6"):
    ip.assemble(data._replace(crystal_system=systems), np.array([1, 2]), budget)
  ip.assemble(data._replace(crystal_system=systems), np.array([0, 1]), budget)  # not in batch


def test_composition_of_a_batch_ignores_padding(data, budget):
  idx = np.array([2, 8, 5])  # nacl, mgo, nacl_cubic
  batch = ip.assemble(data, idx, budget)
  comp = np.asarray(featurize.composition_fractions(jnp.asarray(batch.graph.nodes),
                                                    jnp.asarray(batch.graph.n_node)))
  np.testing.assert_allclose(comp[:3].sum(-1), 1.0, atol=1e-6)
  np.testing.assert_array_equal(comp[3:], 0.0)
  assert comp[0, 10] == pytest.approx(0.5) and comp[0, 16] == pytest.approx(0.5)
  assert comp[1, 11] == pytest.approx(0.5) and comp[1, 7] == pytest.approx(0.5)
  np.testing.assert_allclose(comp[2], comp[0], atol=1e-6)


# ----------------------------------------------------------------------------- budgets


def test_make_budget_basic(data, budget):
  assert budget.n_graph == 4 and budget.max_crystals == 3
  assert budget.max_atoms == int(data.graphs.n_node.max())
  assert budget.n_node % 8 == 0 and budget.n_edge % 8 == 0
  ip.check_fits(data.graphs, budget)  # does not raise


@pytest.mark.parametrize("b", [1, 2, 4, 32])
def test_make_budget_always_fits_largest(b):
  rng = np.random.default_rng(b)
  cases = [
      (np.array([1] * 50 + [200]), np.array([12] * 50 + [2400])),
      (rng.integers(1, 20, 100), rng.integers(1, 240, 100)),
      (np.array([7]), np.array([84])),
      (np.array([3, 3, 3]), np.array([0, 0, 0])),
  ]
  for n_node, n_edge in cases:
    bud = ip.make_budget(n_node, n_edge, b)
    assert bud.n_node - 1 >= n_node.max(), (bud, n_node.max())
    assert bud.n_edge >= n_edge.max()
    assert bud.max_atoms == n_node.max()
    assert bud.n_graph == b + 1
    # Any single crystal can be packed alone.
    for i in np.argsort(n_node)[-3:]:
      assert len(ip.pack(n_node, n_edge, np.array([i]), bud)) == 1


def test_make_budget_empty_raises():
  with pytest.raises(InputError):
    ip.make_budget(np.zeros(0, np.int64), np.zeros(0, np.int64), 4)


def test_budget_overflow_names_the_crystal(big_data, data, budget):
  big_id = "big_cu_444"
  big = len(big_data.graphs) - 1
  assert big_data.graphs.ids[big] == big_id and big_data.graphs.n_node[big] == 64
  assert big_data.graphs.n_node[big] > budget.n_node - 1
  with pytest.raises(InputError) as info:
    ip.check_fits(big_data.graphs, budget)
  assert info.value.name == big_id and big_id in str(info.value)
  for idx in ([big], [0, big], [big, 1]):
    with pytest.raises(InputError) as info:
      ip.assemble(big_data, np.array(idx), budget)
    assert info.value.name == big_id, idx
  # Building the budget from the data that includes it makes it fit.
  fitted = ip.make_budget(big_data.graphs.n_node, big_data.graphs.n_edge, 3)
  ip.check_fits(big_data.graphs, fitted)
  _check_batch(big_data, [0, big], fitted, ip.assemble(big_data, np.array([0, big]), fitted))


def test_too_many_crystals_for_budget_raises(data, budget):
  with pytest.raises(InputError):
    ip.assemble(data, np.array([0, 1, 2, 3]), budget)  # max_crystals == 3


def test_crystal_wider_than_max_atoms_is_caught_by_check_fits():
  """Fits the node budget but not max_atoms (width of the per-crystal atom arrays)."""
  small = _labelled(["cu", "fe"], [bulk("Cu", "fcc", a=3.61), bulk("Fe", "bcc", a=2.87)])
  bud = ip.make_budget(small.graphs.n_node, small.graphs.n_edge, crystals_per_batch=32)
  wide = _labelled(["wide"], [bulk("Cu", "fcc", a=3.61).repeat((2, 2, 1))])
  assert wide.graphs.n_node[0] == 4 and bud.max_atoms == 1
  assert wide.graphs.n_node[0] <= bud.n_node - 1 and wide.graphs.n_edge[0] <= bud.n_edge
  with pytest.raises(InputError) as info:
    ip.check_fits(wide.graphs, bud)
  assert info.value.name == "wide"


def test_assemble_rejects_crystal_wider_than_max_atoms():
  small = _labelled(["cu", "fe"], [bulk("Cu", "fcc", a=3.61), bulk("Fe", "bcc", a=2.87)])
  bud = ip.make_budget(small.graphs.n_node, small.graphs.n_edge, crystals_per_batch=32)
  wide = _labelled(["wide"], [bulk("Cu", "fcc", a=3.61).repeat((2, 2, 1))])
  with pytest.raises(InputError) as info:
    ip.assemble(wide, np.array([0]), bud)
  assert info.value.name == "wide"


# ----------------------------------------------------------------------------- packing


def test_pack_is_greedy_and_within_budget():
  rng = np.random.default_rng(0)
  n_node = rng.integers(1, 30, 200)
  n_edge = n_node * rng.integers(1, 13, 200)
  bud = ip.make_budget(n_node, n_edge, 6)
  order = rng.permutation(200)
  groups = ip.pack(n_node, n_edge, order, bud)
  np.testing.assert_array_equal(np.concatenate(groups), order)
  for gi, grp in enumerate(groups):
    assert 1 <= len(grp) <= bud.max_crystals
    assert n_node[grp].sum() <= bud.n_node - 1 and n_edge[grp].sum() <= bud.n_edge
    if gi + 1 < len(groups):  # greedy: the next crystal would not have fitted
      nxt = groups[gi + 1][0]
      assert (len(grp) == bud.max_crystals or n_node[grp].sum() + n_node[nxt] > bud.n_node - 1
              or n_edge[grp].sum() + n_edge[nxt] > bud.n_edge)


# ----------------------------------------------------------------------------- epochs


@pytest.mark.parametrize("num_devices", [1, 3])
def test_epoch_plan_covers_each_crystal_once(data, budget, num_devices):
  n = len(data.graphs)
  orders = {}
  for seed, epoch in itertools.product([0, 1], range(4)):
    plan = ip.epoch_plan(data, budget, num_devices, seed=seed, epoch=epoch, shuffle=True)
    assert all(len(step) == num_devices for step in plan)
    groups = [grp for step in plan for grp in step]
    flat = np.concatenate(groups)
    np.testing.assert_array_equal(np.sort(flat), np.arange(n))  # each exactly once
    # Only the final step may contain empty (all-padding) groups, and only at its end.
    sizes = [len(grp) for grp in groups]
    first_empty = sizes.index(0) if 0 in sizes else len(sizes)
    assert all(s == 0 for s in sizes[first_empty:])
    assert len(sizes) - first_empty < num_devices
    for grp in groups:
      ip.assemble(data, grp, budget)  # every group fits
    orders[seed, epoch] = flat
    # Same seed and epoch: same plan.
    again = ip.epoch_plan(data, budget, num_devices, seed=seed, epoch=epoch, shuffle=True)
    np.testing.assert_array_equal(np.concatenate([g for s in again for g in s]), flat)
  for seed in (0, 1):
    for e1, e2 in itertools.combinations(range(4), 2):
      assert not np.array_equal(orders[seed, e1], orders[seed, e2]), (seed, e1, e2)
  assert not np.array_equal(orders[0, 0], orders[1, 0])


@pytest.mark.parametrize("num_devices", [1, 2])
def test_epoch_plan_without_shuffle_is_balanced_and_fixed(data, budget, num_devices):
  plans = [ip.epoch_plan(data, budget, num_devices, seed=seed, epoch=epoch, shuffle=False)
           for seed, epoch in [(7, 0), (7, 5), (1, 0)]]
  groups = [g for s in plans[0] for g in s]
  np.testing.assert_array_equal(np.sort(np.concatenate(groups)), np.arange(len(data.graphs)))
  assert all(np.all(np.diff(g) > 0) for g in groups)   # each group in index order
  for other in plans[1:]:  # independent of seed and epoch
    chex.assert_trees_all_equal([list(s) for s in other], [list(s) for s in plans[0]])


def test_balanced_groups_use_the_fewest_batches_where_greedy_packing_does_not():
  # A set like the embedded one: mostly small cells, a cluster of large ones in a row.
  rng = np.random.default_rng(0)
  n_node = np.concatenate([rng.integers(2, 8, 300), rng.integers(24, 41, 40),
                           rng.integers(2, 8, 300)])
  n_edge = 12 * n_node
  bud = ip.make_budget(n_node, n_edge, 64)
  greedy = ip.pack(n_node, n_edge, np.arange(len(n_node)), bud)
  assert len(greedy) > 10                                  # the cluster splits batches
  for multiple in (1, 4):
    groups = ip.balanced_groups(n_node, n_edge, bud, multiple=multiple)
    assert len(groups) == -(-10 // multiple) * multiple    # ceil(640 / 64) = 10 batches
    np.testing.assert_array_equal(np.sort(np.concatenate(groups)), np.arange(len(n_node)))
    for g in groups:
      assert len(g) <= bud.max_crystals
      assert n_node[g].sum() <= bud.n_node - 1 and n_edge[g].sum() <= bud.n_edge
    sums = [n_node[g].sum() for g in groups]
    assert max(sums) - min(sums) <= n_node.max()


def test_balanced_groups_fall_back_to_greedy_packing_when_dealing_overflows():
  n_node = np.array([10, 10, 1, 1])
  n_edge = 12 * n_node
  bud = ip.Budget(n_node=21, n_edge=240, n_graph=4, max_atoms=10)  # 3 crystals, 20 atoms
  # Dealing into ceil(4 / 3) = 2 groups puts 10 + 1 atoms in each: fits.
  assert sorted(g.tolist() for g in ip.balanced_groups(n_node, n_edge, bud)) == [[0, 3], [1, 2]]
  tight = bud._replace(n_edge=130)   # 11 atoms = 132 edges: no dealt group fits
  groups = ip.balanced_groups(n_node, n_edge, tight)
  chex.assert_trees_all_equal(groups, ip.pack(n_node, n_edge, np.arange(4), tight))


@pytest.mark.parametrize("num_devices", [1, 2, 3])
def test_last_partial_batch_is_padded_not_dropped(num_devices):
  ids = [f"cu{i}" for i in range(7)]
  uniform = _labelled(ids, [bulk("Cu", "fcc", a=3.61)] * 7)
  bud = ip.make_budget(uniform.graphs.n_node, uniform.graphs.n_edge, crystals_per_batch=3)
  plan = ip.epoch_plan(uniform, bud, num_devices)
  groups = [g for s in plan for g in s]
  real = [g for g in groups if len(g)]
  assert sum(len(g) for g in real) == 7 and max(len(g) for g in real) <= 3
  assert len(plan) == -(-3 // num_devices)
  batches = list(ip.step_batches(uniform, bud, plan, prefetch=0))
  chex.assert_shape(batches[-1].graph_mask, (num_devices, bud.n_graph))
  total_real = sum(int(b.graph_mask.sum()) for b in batches)
  assert total_real == 7
  last = [g for g in groups if len(g)][-1]
  _check_batch(uniform, last, bud, ip.assemble(uniform, last, bud))


# ----------------------------------------------------------------------------- stacking


def test_stack_adds_leading_axis(data, budget):
  groups = [np.array([0, 1]), np.array([2]), np.zeros(0, np.int64)]
  batches = [ip.assemble(data, g, budget) for g in groups]
  stacked = ip.stack(batches)
  chex.assert_shape(stacked.graph.nodes, (3, budget.n_node))
  chex.assert_shape([stacked.graph.edges, stacked.graph.senders], (3, budget.n_edge))
  chex.assert_shape(stacked.graph.n_node, (3, budget.n_graph))
  chex.assert_shape([stacked.atom_index, stacked.atom_mask], (3, budget.n_graph,
                                                              budget.max_atoms))
  chex.assert_shape(stacked.y, (3, budget.n_graph, L_Y))
  chex.assert_shape(stacked.graph_mask, (3, budget.n_graph))
  assert stacked.graph.globals is None
  for orig, back in zip(batches, ip.unstack(stacked)):
    chex.assert_trees_all_equal(orig, back)


def _assert_batches_equal(xs, ys):
  assert len(xs) == len(ys)
  for x, y in zip(xs, ys):
    chex.assert_trees_all_equal(x, y)


@pytest.mark.parametrize("num_devices", [1, 3])
def test_step_batches_prefetch_matches_sync(data, budget, num_devices):
  plan = ip.epoch_plan(data, budget, num_devices, seed=1, epoch=2, shuffle=True)
  sync = list(ip.step_batches(data, budget, plan, prefetch=0))
  expected = [ip.stack([ip.assemble(data, g, budget) for g in step]) for step in plan]
  _assert_batches_equal(sync, expected)
  for prefetch in (1, 2, 8):
    _assert_batches_equal(list(ip.step_batches(data, budget, plan, prefetch=prefetch)), sync)


def test_step_batches_device_slice(data, budget):
  plan = ip.epoch_plan(data, budget, 3, seed=0, epoch=0, shuffle=True)
  part = list(ip.step_batches(data, budget, plan, devices=slice(1, 3), prefetch=2))
  expected = [ip.stack([ip.assemble(data, g, budget) for g in step[1:3]]) for step in plan]
  _assert_batches_equal(part, expected)
  chex.assert_shape(part[0].graph.nodes, (2, budget.n_node))


@pytest.mark.parametrize("prefetch", [0, 2])
def test_step_batches_reraises_worker_errors(big_data, budget, prefetch):
  big = len(big_data.graphs) - 1
  plan = [[np.array([0, 1])], [np.array([2, big])], [np.array([3])]]
  it = ip.step_batches(big_data, budget, plan, prefetch=prefetch)
  first = next(it)
  chex.assert_trees_all_equal(first, ip.stack([ip.assemble(big_data, np.array([0, 1]), budget)]))
  with pytest.raises(InputError) as info:
    next(it)
  assert info.value.name == "big_cu_444"


def test_step_batches_abandoned_iterator_stops_worker(data):
  bud = ip.make_budget(data.graphs.n_node, data.graphs.n_edge, crystals_per_batch=1)
  plan = ip.epoch_plan(data, bud, 1)
  assert len(plan) > 4
  before = set(threading.enumerate())
  it = ip.step_batches(data, bud, plan, prefetch=2)
  next(it)
  it.close()
  new = [t for t in threading.enumerate() if t not in before]
  for t in new:
    t.join(timeout=2.0)
  assert not any(t.is_alive() for t in new), "prefetch worker still running"


def test_dummy_batch_has_the_budget_shapes_and_initialises_the_same_parameters(
    tiny_config, tiny_model, tiny_batch, tiny_budget, tiny_variables):
  """Model set-up needs no data: an all-padding batch of the budget's shapes gives the
  parameters a batch of real crystals gives (same key)."""
  dummy = ip.dummy_batch(tiny_budget, tiny_config.data.l_y)
  chex.assert_trees_all_equal_shapes_and_dtypes(dummy, tiny_batch)
  assert not dummy.graph_mask.any() and not dummy.atom_mask.any()
  assert dummy.graph.n_node[0] == tiny_budget.n_node and not dummy.y.any()
  chex.assert_trees_all_equal(tiny_model.init(jax.random.key(0), dummy, train=False),
                              tiny_variables)
  # The default encoder reads distances only: the same parameters from no vectors.
  bare = ip.dummy_batch(tiny_budget, tiny_config.data.l_y, edge_vectors=False)
  chex.assert_trees_all_equal_shapes_and_dtypes(
      jax.eval_shape(functools.partial(tiny_model.init, train=False), jax.random.key(0), bare),
      tiny_variables)


@pytest.mark.parametrize("encoder,width", [("unimp", 0), ("gat", 0), ("gatgnn", 0),
                                           ("graph_network", 0), ("e3nn", 3),
                                           ("dostransformer_gnn", 3)])
def test_only_encoders_that_read_them_get_edge_vectors(data, budget, encoder, width):
  """Decided once from the config: `needs_edge_vectors`, which the Trainer's batches
  (train, evaluate, predict) and the model set-up follow."""
  from configs import phdos, smoke
  from xtal2dos_jax import models
  from xtal2dos_jax.training import train
  assert not models.needs_edge_vectors(phdos.get_config())   # the default model
  config = smoke.get_config()
  config.model.encoder = encoder
  assert models.needs_edge_vectors(config) == (width == 3)
  trainer = train.Trainer(config, scaler=None, devices=jax.local_devices()[:1])
  plan = trainer.plan(data, budget)
  batches = list(trainer.batches(data, budget, plan))
  assert len(batches) == len(plan)
  for step, batch in zip(plan, batches):
    chex.assert_shape(batch.edge_vectors, (1, budget.n_edge, width))
    expected = ip.stack([ip.assemble(data, g, budget) for g in step])
    np.testing.assert_array_equal(batch.edge_vectors, expected.edge_vectors[..., :width])
    chex.assert_trees_all_equal(_without_vectors(batch), _without_vectors(expected))


def test_an_encoder_that_reads_edge_vectors_refuses_a_batch_without_them(budget):
  from configs import smoke
  from xtal2dos_jax import models
  config = smoke.get_config()
  config.model.encoder = "e3nn"
  batch = ip.dummy_batch(budget, config.data.l_y, edge_vectors=False)
  with pytest.raises(ValueError, match="reads edge vectors, but the batch's are 0 wide"):
    models.create_model(config).init(jax.random.PRNGKey(0), batch, train=False)
