"""Padded jraph batches with fixed budgets, epoch plans and device sharding.

Every batch of a run has the same static shapes (a `Budget`), so a jitted step
compiles once. Crystals are packed greedily in (shuffled) order until the next one
would exceed the node, edge or graph budget; the rest of the budget is padding that
belongs to the last graph(s) and is masked out of every loss and metric. Each epoch
visits every crystal exactly once; the last partial batch is padded, not dropped.
"""
from __future__ import annotations

import math
import queue
import threading
from typing import Iterator, NamedTuple, Sequence

import jax
import jraph
import numpy as np

from xtal2dos_jax.core.errors import InputError
from xtal2dos_jax.input_pipeline.graph_cache import GraphSet
from xtal2dos_jax.input_pipeline.symmetry import check_crystal_systems


class Budget(NamedTuple):
  """Static sizes of one device batch (padding included).

  n_node / n_edge / n_graph: totals in the jraph GraphsTuple (at least one node and
  one graph are always padding); max_atoms: width of the per-crystal atom arrays
  used by source attention.
  """
  n_node: int
  n_edge: int
  n_graph: int
  max_atoms: int

  @property
  def max_crystals(self) -> int:
    return self.n_graph - 1


class Batch(NamedTuple):
  """One padded device batch (arrays; a leading device axis is added by `stack`).

  graph: GraphsTuple with nodes int32[N] atomic numbers (0 = padding), edges
    float32[E] distances in Å, senders/receivers int32[E], n_node/n_edge int32[G].
  atom_index: int32[G, A] flat node index of atom a of crystal g.
  atom_mask: bool[G, A] True for real atoms.
  graph_mask: bool[G] True for real crystals.
  y: float32[G, l_y] scaled labels (zeros for padding or unlabelled inputs).
  y_scale: float32[G] per-crystal scale that maps y back to the original scale.
  crystal_system: int32[G] 0..6 (triclinic..cubic) when the model needs it, else 0.
  edge_vectors: float32[E, 3] displacement of each edge's sender from its receiver
    (neighbour + lattice shift - centre, Å; zeros for padding edges), for encoders that
    set `uses_edge_vectors` (e3nn; 12 bytes per edge beside the 4 of the distance);
    float32[E, 0] for every other model (`models.needs_edge_vectors(config)` decides,
    once per run, so all batches of a run share one shape).
  """
  graph: jraph.GraphsTuple
  atom_index: np.ndarray
  atom_mask: np.ndarray
  graph_mask: np.ndarray
  y: np.ndarray
  y_scale: np.ndarray
  crystal_system: np.ndarray
  edge_vectors: np.ndarray


class LabelledGraphs(NamedTuple):
  """A split ready to batch: graphs plus scaled labels aligned with graphs.ids."""
  graphs: GraphSet
  y: np.ndarray        # float32[n, l_y]
  y_scale: np.ndarray  # float32[n]
  crystal_system: np.ndarray | None = None  # int32[n], only for models that use it


def _round_up(x: float, multiple: int) -> int:
  return int(math.ceil(x / multiple) * multiple)


def make_budget(n_node: np.ndarray, n_edge: np.ndarray, crystals_per_batch: int) -> Budget:
  """Budget sized from per-crystal node/edge counts of a dataset.

  Holds `crystals_per_batch` crystals of mean size plus three standard deviations of
  the sum (so nearly every batch is full), and always at least the largest crystal.
  """
  if len(n_node) == 0:
    raise InputError("dataset", "no crystals to batch")
  b = crystals_per_batch

  def total(sizes):
    sizes = np.asarray(sizes, np.float64)
    typical = b * sizes.mean() + 3.0 * math.sqrt(b) * sizes.std()
    return max(typical, sizes.max())

  return Budget(n_node=_round_up(total(n_node) + 1, 8), n_edge=_round_up(total(n_edge), 8),
                n_graph=b + 1, max_atoms=int(np.max(n_node)))


def check_fits(graphs: GraphSet, budget: Budget) -> None:
  """Raises InputError naming the first crystal that no batch of `budget` can hold."""
  too_big = ((graphs.n_node > budget.n_node - 1) | (graphs.n_edge > budget.n_edge)
             | (graphs.n_node > budget.max_atoms))
  if too_big.any():
    i = int(np.argmax(too_big))
    raise InputError(graphs.ids[i], f"crystal has {graphs.n_node[i]} atoms / {graphs.n_edge[i]} "
                     f"edges but the padding budget holds {min(budget.n_node - 1, budget.max_atoms)}"
                     f" atoms / {budget.n_edge} edges; rebuild the budget from this data")


def pack(n_node: np.ndarray, n_edge: np.ndarray, order: np.ndarray,
         budget: Budget) -> list[np.ndarray]:
  """Splits `order` (crystal indices) into consecutive groups that fit the budget."""
  groups, start, nodes, edges = [], 0, 0, 0
  for pos, i in enumerate(order):
    if (pos - start == budget.max_crystals or nodes + n_node[i] > budget.n_node - 1
        or edges + n_edge[i] > budget.n_edge):
      groups.append(order[start:pos])
      start, nodes, edges = pos, 0, 0
    nodes += n_node[i]
    edges += n_edge[i]
  if start < len(order):
    groups.append(order[start:])
  return groups


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
  """Concatenation of arange(s, s + l) for each (s, l), vectorised."""
  total = int(lengths.sum())
  first = np.repeat(np.cumsum(lengths) - lengths, lengths)
  return np.repeat(starts, lengths) + (np.arange(total) - first)


def assemble(data: LabelledGraphs, idx: np.ndarray, budget: Budget, *,
             edge_vectors: bool = True) -> Batch:
  """The padded device batch holding crystals `idx` (in that order).

  `edge_vectors`: fill `Batch.edge_vectors` float32[E, 3]; False leaves it zero-width,
  float32[E, 0] (models whose encoder reads distances only), which neither gathers the
  vectors on the host nor ships them to the device.
  """
  g = data.graphs
  idx = np.asarray(idx, np.int64)
  k = len(idx)
  nn, ne = g.n_node[idx], g.n_edge[idx]
  n_real, e_real = int(nn.sum()), int(ne.sum())
  if (k > budget.max_crystals or n_real > budget.n_node - 1 or e_real > budget.n_edge
      or (k and nn.max() > budget.max_atoms)):
    check_fits(g.subset(idx), budget)
    raise InputError("batch", f"{k} crystals with {n_real} atoms / {e_real} edges exceed the "
                     f"budget {budget}")
  node_src = _ranges(g.node_offsets[idx], nn)
  edge_src = _ranges(g.edge_offsets[idx], ne)
  new_node_start = np.cumsum(nn) - nn
  shift = np.repeat(new_node_start, ne)

  pad_node = budget.n_node - 1
  atomic_numbers = np.zeros(budget.n_node, np.int32)
  atomic_numbers[:n_real] = g.atomic_numbers[node_src]
  senders = np.full(budget.n_edge, pad_node, np.int32)
  receivers = np.full(budget.n_edge, pad_node, np.int32)
  senders[:e_real] = g.senders[edge_src] + shift
  receivers[:e_real] = g.receivers[edge_src] + shift
  distances = np.zeros(budget.n_edge, np.float32)
  distances[:e_real] = g.distances[edge_src]
  vectors = np.zeros((budget.n_edge, 3 if edge_vectors else 0), np.float32)
  if edge_vectors:
    vectors[:e_real] = g.vectors[edge_src]
  n_node = np.zeros(budget.n_graph, np.int32)
  n_edge = np.zeros(budget.n_graph, np.int32)
  n_node[:k], n_edge[:k] = nn, ne
  n_node[k] = budget.n_node - n_real      # the padding graph owns all padding
  n_edge[k] = budget.n_edge - e_real

  a = np.arange(budget.max_atoms)
  atom_mask = np.zeros((budget.n_graph, budget.max_atoms), bool)
  atom_mask[:k] = a[None, :] < nn[:, None]
  atom_index = np.full((budget.n_graph, budget.max_atoms), pad_node, np.int32)
  atom_index[:k] = np.where(atom_mask[:k], new_node_start[:, None] + a[None, :], pad_node)
  graph_mask = np.arange(budget.n_graph) < k
  y = np.zeros((budget.n_graph, data.y.shape[1]), np.float32)
  y[:k] = data.y[idx]
  y_scale = np.ones(budget.n_graph, np.float32)
  y_scale[:k] = data.y_scale[idx]
  crystal_system = np.zeros(budget.n_graph, np.int32)
  if data.crystal_system is not None:
    # Checked here, on the host: the jitted prompt lookup cannot raise, and an id outside
    # 0..6 would read past the prompt table.
    crystal_system[:k] = check_crystal_systems(data.crystal_system[idx])
  graph = jraph.GraphsTuple(nodes=atomic_numbers, edges=distances, senders=senders,
                            receivers=receivers, n_node=n_node, n_edge=n_edge, globals=None)
  return Batch(graph, atom_index, atom_mask, graph_mask, y, y_scale, crystal_system, vectors)


def dummy_batch(budget: Budget, l_y: int, *, edge_vectors: bool = True) -> Batch:
  """A batch of `budget`'s shapes holding no crystal (every node, edge and graph is
  padding; y zeros float32[n_graph, l_y]; `edge_vectors` as in `assemble`): what model
  initialisation needs, since parameter shapes depend only on the config and the static
  shapes, never on data."""
  empty = GraphSet.from_graphs([], [])
  return assemble(LabelledGraphs(empty, np.zeros((0, l_y), np.float32),
                                 np.ones(0, np.float32)), np.zeros(0, np.int64), budget,
                  edge_vectors=edge_vectors)


def stack(batches: Sequence[Batch]) -> Batch:
  """Stacks device batches on a new leading axis (for jax.pmap)."""
  return jax.tree.map(lambda *xs: np.stack(xs), *batches)


def unstack(batch: Batch) -> list[Batch]:
  n = batch.graph_mask.shape[0]
  return [jax.tree.map(lambda x, i=i: x[i], batch) for i in range(n)]


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
  """Seeded permutation of the crystals for one training epoch."""
  return np.random.default_rng([seed, epoch]).permutation(n)


def balanced_groups(n_node: np.ndarray, n_edge: np.ndarray, budget: Budget,
                    multiple: int = 1) -> list[np.ndarray]:
  """Groups for passes whose order does not matter (evaluation, prediction): as few as
  the crystal count allows (rounded up to a multiple of `multiple`, the device count),
  each with about the same number of atoms and edges.

  Greedy packing in dataset order leaves batches part-empty wherever large crystals
  cluster (the embedded set: 17 batches of 64 for 1,024 crystals instead of 16). Here
  the crystals are dealt largest first, back and forth across the groups; each group
  is returned in ascending index order. Falls back to `pack` in dataset order if a
  dealt group would not fit the budget.
  """
  n = len(n_node)
  if n == 0:
    return []
  k = -(-n // budget.max_crystals)
  k = -(-k // multiple) * multiple
  order = np.lexsort((n_node, n_edge))[::-1]            # most edges (then atoms) first
  rank = np.arange(n)
  lap, pos = rank // k, rank % k
  group_of = np.where(lap % 2 == 0, pos, k - 1 - pos)   # back and forth: balanced sums
  groups = [np.sort(order[group_of == g]) for g in range(k)]
  fits = all(len(g) <= budget.max_crystals and n_node[g].sum() <= budget.n_node - 1
             and n_edge[g].sum() <= budget.n_edge for g in groups)
  return groups if fits else pack(n_node, n_edge, np.arange(n), budget)


def epoch_plan(data: LabelledGraphs, budget: Budget, num_devices: int, *, seed: int = 0,
               epoch: int = 0, shuffle: bool = False) -> list[list[np.ndarray]]:
  """Crystal indices for every step of an epoch: a list of steps, each `num_devices`
  groups (one per device, possibly empty at the end of the epoch).

  Shuffled (training): a seeded permutation per epoch, packed greedily. Unshuffled
  (evaluation, prediction): `balanced_groups`, the fewest full batches.
  """
  n_node, n_edge = data.graphs.n_node, data.graphs.n_edge
  if shuffle:
    groups = pack(n_node, n_edge, epoch_order(len(data.graphs), seed, epoch), budget)
  else:
    groups = balanced_groups(n_node, n_edge, budget, multiple=num_devices)
  steps = []
  for s in range(0, len(groups), num_devices):
    step = groups[s:s + num_devices]
    step += [np.zeros(0, np.int64)] * (num_devices - len(step))
    steps.append(step)
  return steps


def ensemble_plan(member_plans: Sequence[list[list[np.ndarray]]]) -> list[list[list[np.ndarray]]]:
  """One plan from K members' epoch plans: step s, device d holds the K members'
  groups [plan_k[s][d] for k]. A member whose plan is shorter gets empty groups for the
  extra steps, steps in which the train step leaves its state unchanged."""
  length = max(len(p) for p in member_plans)
  num_devices = len(member_plans[0][0])
  empty = [np.zeros(0, np.int64)] * num_devices
  padded = [p + [empty] * (length - len(p)) for p in member_plans]
  return [[[p[s][d] for p in padded] for d in range(num_devices)] for s in range(length)]


def step_crystals(step) -> float:
  """Crystals of one plan step (for an ensemble step, per member: the mean over members)."""
  sizes = [len(g) if isinstance(g, np.ndarray) else np.mean([len(i) for i in g]) for g in step]
  return float(sum(sizes))


def step_batches(data: LabelledGraphs, budget: Budget, plan: list[list[np.ndarray]],
                 devices: slice = slice(None), prefetch: int = 2, *,
                 edge_vectors: bool = True) -> Iterator[Batch]:
  """Stacked batches for each step of `plan` (only the `devices` slice of each step,
  e.g. this process's devices in multi-host runs), assembled in a background thread
  so the host pipeline overlaps the device step; `edge_vectors` as in `assemble`.

  A device's group is an index array (one batch), or a list of K index arrays for
  an ensemble's members (`ensemble_plan`), stacked as [K, ...] under the device axis.
  """
  def device_batch(group) -> Batch:
    if isinstance(group, np.ndarray):
      return assemble(data, group, budget, edge_vectors=edge_vectors)
    return stack([assemble(data, idx, budget, edge_vectors=edge_vectors)
                  for idx in group])                                # [K members, ...]

  def produce():
    for step in plan:
      yield stack([device_batch(group) for group in step[devices]])

  if prefetch <= 0:
    yield from produce()
    return
  q: queue.Queue = queue.Queue(maxsize=prefetch)
  sentinel = object()
  error: list[BaseException] = []
  stop = threading.Event()

  def put(item) -> bool:
    while not stop.is_set():
      try:
        q.put(item, timeout=0.1)
        return True
      except queue.Full:
        pass
    return False

  def worker():
    try:
      for item in produce():
        if not put(item):
          return
    except BaseException as e:  # re-raised in the consumer
      error.append(e)
    put(sentinel)

  thread = threading.Thread(target=worker, daemon=True)
  thread.start()
  try:
    while True:
      item = q.get()
      if item is sentinel:
        break
      yield item
  finally:  # also runs when the consumer stops early: the worker must not block forever
    stop.set()
    thread.join()
  if error:
    raise error[0]
