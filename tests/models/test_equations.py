"""The model's equations against independent numpy references (paper Eq. 2-9).

Every reference below is written from the equations, not from the Flax code: plain
float64 numpy, one node / crystal / position / head at a time, with the weights pulled
out of the Flax parameter tree. The tests perturb the initial parameters (so biases and
LayerNorm scales are not 0 / 1) and compare the modules, jitted and op by op, with the
references on tiny hand-built inputs that include padding.

Graph convention (`batching`): edge e carries a message from senders[e] = j (the
neighbour) to receivers[e] = i (the centre atom); attention at i normalises over the
incoming edges of i.

The references are imported by test_models.py and test_ablations.py, which check the
same equations on the fixture batches.
"""
from __future__ import annotations

import functools
from typing import Callable

import chex
import jax
import jax.numpy as jnp
import jraph
import numpy as np
import pytest

from xtal2dos_jax.input_pipeline.featurize import atom_feature_table
from xtal2dos_jax.models import graph_layers
from xtal2dos_jax.models.gat import GATEncoder, GATLayer
from xtal2dos_jax.models.transformer_decoder import (AtomStates, CausalTransformerDecoder,
                                                     TransformerDecoderLayer)
from xtal2dos_jax.models.unimp import UniMPEncoder, UniMPLayer
from xtal2dos_jax.models.xtal2dos import CrystalContext

# float32 module vs float64 reference.
REF_TOL = dict(rtol=1e-4, atol=2e-5)
NUM_ELEMENTS = 103   # composition vector: column Z - 1 holds the fraction of element Z


# --------------------------------------------------------------------------------------------
# numpy building blocks


def as_numpy(tree):
  """A parameter tree as float64 numpy arrays."""
  return jax.tree.map(lambda x: np.asarray(x, np.float64), tree)


def perturb(params, seed: int = 0, scale: float = 0.2):
  """params + scale * N(0, 1) leaf by leaf (float32): nonzero biases, LayerNorm scales != 1."""
  leaves, treedef = jax.tree.flatten(params)
  rng = np.random.default_rng(seed)
  return jax.tree.unflatten(treedef, [
      jnp.asarray(np.asarray(x) + scale * rng.normal(size=np.shape(x)), jnp.float32)
      for x in leaves])


def dense(p, x):
  """x W + b (b absent for use_bias=False layers)."""
  return x @ p["kernel"] + p.get("bias", 0.0)


def layer_norm(p, x, eps=1e-6):
  """(x - mean) / sqrt(var + eps) * scale + bias over the last axis."""
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def leaky_relu(x, slope=0.01):
  return np.where(x >= 0, x, slope * x)


def sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def softplus(x):
  return np.logaddexp(0.0, x)


def relu(x):
  return np.maximum(x, 0.0)


def softmax(x):
  """Softmax of a 1-d array."""
  e = np.exp(x - x.max())
  return e / e.sum()


def incoming_edges(i, receivers, edge_mask):
  """The real edges whose receiver (centre) is node i."""
  return [e for e in range(len(receivers)) if receivers[e] == i and edge_mask[e]]


def attend_over_incoming_edges(num_nodes, width, num_heads, receivers, edge_mask, score):
  """float[num_nodes, width] messages m: for each node i and head h (columns s of width
  d_h = width / num_heads), the softmax over the real incoming edges of i of their logits,
  times their values, summed; m_i = 0 for a node without real incoming edges.

  score(i, edges, head, s) -> (logits float[len(edges)], values float[len(edges), d_h]).
  """
  dh = width // num_heads
  m = np.zeros((num_nodes, width))
  for i in range(num_nodes):
    edges = incoming_edges(i, receivers, edge_mask)
    if not edges:
      continue
    for head in range(num_heads):
      s = slice(head * dh, (head + 1) * dh)
      logits, values = score(i, edges, head, s)
      m[i, s] = softmax(np.asarray(logits)) @ np.asarray(values)
  return m


# --------------------------------------------------------------------------------------------
# Encoder references


def unimp_layer_reference(p, h, g, senders, receivers, edge_mask, num_heads, last):
  """UniMP layer (paper Eq. 2, 4-6), node by node and head by head.

  q_i, k_j, v_j = W h + b; alpha_ij = softmax over the incoming edges of i of
  q_i . (k_j + g_ij) / sqrt(d_h); m_i = sum_j alpha_ij (v_j + g_ij) (heads concatenated);
  r_i = W_r h_i + b_r; beta_i = sigmoid(w . [m_i; r_i; m_i - r_i]);
  h'_i = leaky_relu(LN((1 - beta_i) m_i + beta_i r_i)), LN and activation skipped if last.
  """
  q, k, v, r = (dense(p[name], h) for name in ("query", "key", "value", "skip"))
  num_nodes, d = q.shape
  dh = d // num_heads

  def score(i, edges, head, s):
    logits = [q[i, s] @ (k[senders[e], s] + g[e, s]) / np.sqrt(dh) for e in edges]
    return logits, [v[senders[e], s] + g[e, s] for e in edges]

  m = attend_over_incoming_edges(num_nodes, d, num_heads, receivers, edge_mask, score)
  beta = sigmoid(np.concatenate([m, r, m - r], axis=-1) @ p["gate"]["kernel"])   # [N, 1]
  out = (1.0 - beta) * m + beta * r
  return out if last else leaky_relu(layer_norm(p["LayerNorm_0"], out))


def gat_layer_reference(p, h, g, senders, receivers, edge_mask, num_heads, last, slope=0.2):
  """GAT layer with edge features (`models/gat.py` docstring), node by node, head by head.

  z_i = W_n h_i + b_n + W_e g_ij, z_j = W_n h_j + b_n + W_e g_ij;
  alpha_ij = softmax over the incoming edges of i of leaky_relu_0.2(a_c . z_i + a_n . z_j);
  m_i = sum_j alpha_ij z_j; h'_i = softplus(LN(m_i + W_r h_i + b_r)) (plain if last).
  """
  node, edge = dense(p["node"], h), dense(p["edge"], g)
  num_nodes, d = node.shape
  a_centre, a_neighbour = p["attention_centre"], p["attention_neighbour"]      # [H, d_h]

  def score(i, edges, head, s):
    z_centre = [node[i, s] + edge[e, s] for e in edges]
    z_neighbour = [node[senders[e], s] + edge[e, s] for e in edges]
    logits = np.array([a_centre[head] @ zc + a_neighbour[head] @ zn
                       for zc, zn in zip(z_centre, z_neighbour)])
    return leaky_relu(logits, slope), z_neighbour

  m = attend_over_incoming_edges(num_nodes, d, num_heads, receivers, edge_mask, score)
  out = m + dense(p["skip"], h)
  return out if last else softplus(layer_norm(p["LayerNorm_0"], out))


def real_edges_reference(nodes, senders, receivers, n_node, n_edge):
  """bool[E]: both ends are real atoms (Z > 0) and the edge's graph has a real atom."""
  real = nodes > 0
  node_graph = np.repeat(np.arange(len(n_node)), n_node)
  graph_has_atoms = np.array([real[node_graph == gi].any() for gi in range(len(n_node))])
  edge_graph = np.repeat(np.arange(len(n_edge)), n_edge)
  return real[senders] & real[receivers] & graph_has_atoms[edge_graph]


def encoder_reference(p, graph, num_heads, num_layers, radius, step,
                      layer_reference: Callable = unimp_layer_reference):
  """Graph encoder: h = Dense(CGCNN vector of Z); ONE edge embedding
  g = W_e exp(-(d - mu)^2 / step^2) + b_e (mu = 0, step, ..., radius), shared by all
  `num_layers` layers (paper Eq. 3); then the layers (the last without LN / activation)."""
  nodes, senders, receivers = (np.asarray(x) for x in (graph.nodes, graph.senders,
                                                      graph.receivers))
  distances = np.asarray(graph.edges, np.float64)
  h = dense(p["AtomEmbedding_0"]["Dense_0"], atom_feature_table().astype(np.float64)[nodes])
  mu = np.arange(0.0, radius + step / 2, step)
  gaussians = np.exp(-(distances[:, None] - mu[None, :]) ** 2 / step ** 2)
  g = dense(p["EdgeEmbedding_0"]["Dense_0"], gaussians)
  mask = real_edges_reference(nodes, senders, receivers, np.asarray(graph.n_node),
                              np.asarray(graph.n_edge))
  for layer in range(num_layers):
    h = layer_reference(p[f"layer_{layer}"], h, g, senders, receivers, mask, num_heads,
                        last=layer == num_layers - 1)
  return h


def context_reference(p, node_states, nodes, n_node, activation: str = "none"):
  """Crystal context [mean of the crystal's real node states; act(Dense(composition))],
  composition = fraction of each element Z among the crystal's real atoms."""
  graph_of_node = np.repeat(np.arange(len(n_node)), n_node)
  rows = []
  for gi in range(len(n_node)):
    idx = np.flatnonzero((graph_of_node == gi) & (nodes > 0))
    pooled = node_states[idx].mean(0) if len(idx) else np.zeros(node_states.shape[1])
    composition = np.zeros(NUM_ELEMENTS)
    for z in nodes[idx]:
      composition[z - 1] += 1.0 / len(idx)
    embedded = dense(p["composition"], composition)
    if activation == "leaky_relu":
      embedded = leaky_relu(embedded, 0.2)
    rows.append(np.concatenate([pooled, embedded]))
  return np.stack(rows)


# --------------------------------------------------------------------------------------------
# Decoder references


def attention_reference(p, xq, xkv, mask, num_heads):
  """Multi-head attention (paper Eq. 8-9): per head softmax(q k^T / sqrt(d_h)) v over the
  keys allowed by bool[Q, K] `mask` (none allowed: zero), heads concatenated, Dense.

  xq: [Q, d_q], xkv: [K, d_kv] -> [Q, d]. The kernels are [d_in, H, d_h] (query / key /
  value) and [H, d_h, d] (out): flattening the head axes gives the concatenated heads.
  """
  flat = lambda q: (q["kernel"].reshape(q["kernel"].shape[0], -1), q["bias"].reshape(-1))
  (wq, bq), (wk, bk), (wv, bv) = (flat(p[n]) for n in ("query", "key", "value"))
  q, k, v = xq @ wq + bq, xkv @ wk + bk, xkv @ wv + bv
  d = q.shape[1]
  dh = d // num_heads
  heads = np.zeros((xq.shape[0], d))
  for t in range(xq.shape[0]):
    keys = np.flatnonzero(mask[t])
    if not len(keys):
      continue
    for head in range(num_heads):
      s = slice(head * dh, (head + 1) * dh)
      weights = softmax(np.array([q[t, s] @ k[u, s] for u in keys]) / np.sqrt(dh))
      heads[t, s] = sum(w * v[u, s] for w, u in zip(weights, keys))
  w_out = p["out"]["kernel"].reshape(d, -1)
  return heads @ w_out + p["out"]["bias"]


def feed_forward_reference(p, x):
  """Dense(d_model)(relu(Dense(ff_dim)(x)))."""
  return dense(p["Dense_1"], relu(dense(p["Dense_0"], x)))


def decoder_layer_reference(p, x, atoms, atom_mask, causal, num_heads, source_attention=True):
  """One transformer decoder layer for one crystal, pre-norm residual sublayers:
  x += SelfAttn(LN(x)) (position t sees s <= t if causal); x += SrcAttn(LN(x), atoms)
  (real atoms only); x += FF(LN(x)).  x: [L, d], atoms: [A, d], atom_mask: bool[A]."""
  length = x.shape[0]
  self_mask = np.tril(np.ones((length, length), bool)) if causal else np.ones((length,) * 2,
                                                                              bool)
  y = layer_norm(p["self_attention_norm"], x)
  x = x + attention_reference(p["self_attention"], y, y, self_mask, num_heads)
  if source_attention:
    y = layer_norm(p["source_attention_norm"], x)
    source_mask = np.broadcast_to(atom_mask, (length, len(atom_mask)))
    x = x + attention_reference(p["source_attention"], y, atoms, source_mask, num_heads)
  y = layer_norm(p["feed_forward_norm"], x)
  return x + feed_forward_reference(p["feed_forward"], y)


def transformer_decoder_reference(p, context, atom_states, atom_index, atom_mask, l_y,
                                  num_layers, num_heads, causal=True, source_attention=True):
  """Xtal2DoS decoder: z_t = leaky_relu(Dense([onehot_t; context])), the layers, final LN,
  Dense(1) -> float[G, l_y]. The Dense of [onehot_t; context] is one weight matrix: the
  position and context projections stacked."""
  w = np.concatenate([p["position_projection"]["kernel"], p["context_projection"]["kernel"]])
  b = p["context_projection"]["bias"]
  out = []
  for gi in range(context.shape[0]):
    inputs = np.concatenate([np.eye(l_y), np.broadcast_to(context[gi], (l_y, len(context[gi])))],
                            axis=-1)
    x = leaky_relu(inputs @ w + b)
    atoms = atom_states[atom_index[gi]]
    for layer in range(num_layers):
      x = decoder_layer_reference(p[f"layers_{layer}"], x, atoms, atom_mask[gi], causal,
                                  num_heads, source_attention)
    out.append(dense(p["head"], layer_norm(p["final_norm"], x))[:, 0])
  return np.stack(out)


def attention_block_reference(p, x, memory, memory_mask, num_heads, norm_memory=True):
  """DOSTransformer block: x += Attn(LN(x), M) with M = LN(x) for self-attention, else
  the memory (through the same LN when norm_memory); x += FF(LN(x))."""
  y = layer_norm(p["attention_norm"], x)
  if memory is not None and norm_memory:
    memory = layer_norm(p["attention_norm"], memory)
  if memory is None:
    x = x + attention_reference(p["attention"], y, y, np.ones((len(x), len(x)), bool), num_heads)
  else:
    mask = np.broadcast_to(memory_mask, (len(x), len(memory_mask)))
    x = x + attention_reference(p["attention"], y, memory, mask, num_heads)
  y = layer_norm(p["feed_forward_norm"], x)
  return x + feed_forward_reference(p["feed_forward"], y)


def dostransformer_reference(p, context, atom_states, atom_index, atom_mask, crystal_system,
                             num_layers, num_heads, norm_memory=True):
  """DOSTransformer decoder in its documented stage order, crystal by crystal:
  energy embeddings -> (energy x atoms cross-attention) x num_layers -> leaky_relu(Dense(
  [x; context])) -> prepend the crystal-system prompt -> self-attention x num_layers ->
  drop the prompt -> (cross-attention) x num_layers -> LN -> Dense(1)."""
  out = []
  for gi in range(context.shape[0]):
    atoms, mask = atom_states[atom_index[gi]], atom_mask[gi]
    x = p["energy_embedding"]["embedding"]
    for i in range(num_layers):
      x = attention_block_reference(p[f"energy_atom_{i}"], x, atoms, mask, num_heads,
                                    norm_memory)
    x = leaky_relu(dense(p["fuse_context"],
                         np.concatenate([x, np.broadcast_to(context[gi], (len(x),
                                                                          len(context[gi])))],
                                        axis=-1)))
    x = np.concatenate([p["crystal_system_prompt"]["embedding"][crystal_system[gi]][None], x])
    for i in range(num_layers):
      x = attention_block_reference(p[f"self_{i}"], x, None, None, num_heads)
    x = x[1:]
    for i in range(num_layers):
      x = attention_block_reference(p[f"source_{i}"], x, atoms, mask, num_heads, norm_memory)
    out.append(dense(p["head"], layer_norm(p["final_norm"], x))[:, 0])
  return np.stack(out)


def mlp_reference(p, x, num_layers):
  """num_layers x leaky_relu(Dense(hidden)), then Dense(out)."""
  for i in range(num_layers):
    x = leaky_relu(dense(p[f"hidden_{i}"], x))
  return dense(p["out"], x)


# --------------------------------------------------------------------------------------------
# Tiny hand-built inputs

# Six nodes: 0-3 real atoms of graph 0, 4-5 padding nodes of the padding graph 1.
# Directed edges j -> i, grouped by receiver i; not symmetric (3 -> 0 and 2 -> 3 have no
# reverse), node 2 has one incoming edge, node 3 two parallel edges from node 1 (two
# periodic images) and one from node 2; edges 9-10 are padding.
NODES = np.array([8, 12, 13, 8, 0, 0], np.int32)
SENDERS = np.array([1, 2, 3, 0, 3, 0, 1, 1, 2, 4, 5], np.int32)
RECEIVERS = np.array([0, 0, 0, 1, 1, 2, 3, 3, 3, 4, 4], np.int32)
DISTANCES = np.array([2.1, 2.6, 3.3, 2.1, 4.0, 2.6, 2.9, 4.4, 3.7, 1.0, 1.0], np.float32)
N_NODE, N_EDGE = np.array([4, 2], np.int32), np.array([9, 2], np.int32)
# The layer-level mask also drops the real edge 2 -> 3 (masked edges carry nothing).
LAYER_EDGE_MASK = np.array([True] * 8 + [False] * 3)
D_MODEL, NUM_HEADS = 8, 2


def hand_graph() -> jraph.GraphsTuple:
  return jraph.GraphsTuple(nodes=NODES, edges=DISTANCES, senders=SENDERS, receivers=RECEIVERS,
                           n_node=N_NODE, n_edge=N_EDGE, globals=None)


def _layer_inputs(seed=0, d_in=6):
  rng = np.random.default_rng(seed)
  h = rng.normal(size=(len(NODES), d_in)).astype(np.float32)
  g = rng.normal(size=(len(SENDERS), D_MODEL)).astype(np.float32)
  return h, g


def _check_layer(layer_cls, reference, last):
  """`layer_cls` against `reference` on the hand graph: jitted and op by op, and with the
  edges shuffled (`sorted_receivers=False`). Returns (params, output, inputs)."""
  h, g = _layer_inputs()
  layer = layer_cls(d_model=D_MODEL, num_heads=NUM_HEADS, last=last)
  args = (h, g, SENDERS, RECEIVERS, LAYER_EDGE_MASK)
  params = perturb(layer.init(jax.random.key(0), *args, train=False)["params"])
  expected = reference(as_numpy(params), h.astype(np.float64), g.astype(np.float64), SENDERS,
                       RECEIVERS, LAYER_EDGE_MASK, NUM_HEADS, last)
  apply = functools.partial(layer.apply, {"params": params}, train=False)
  out = jax.jit(apply)(*args)
  chex.assert_shape(out, (len(NODES), D_MODEL))
  chex.assert_type(out, jnp.float32)
  chex.assert_trees_all_close(out, expected, **REF_TOL)
  with jax.disable_jit():
    chex.assert_trees_all_close(apply(*args), expected, **REF_TOL)
  order = np.random.default_rng(1).permutation(len(SENDERS))
  unsorted = layer_cls(d_model=D_MODEL, num_heads=NUM_HEADS, last=last, sorted_receivers=False)
  chex.assert_trees_all_close(
      unsorted.apply({"params": params}, h, g[order], SENDERS[order], RECEIVERS[order],
                     LAYER_EDGE_MASK[order], train=False), expected, **REF_TOL)
  # The example tells the edge direction apart: swapping senders and receivers changes
  # the reference well beyond the tolerance.
  swapped = reference(as_numpy(params), h.astype(np.float64), g.astype(np.float64), RECEIVERS,
                      SENDERS, LAYER_EDGE_MASK, NUM_HEADS, last)
  assert np.abs(swapped - expected).max() > 0.1
  return params, out


# --------------------------------------------------------------------------------------------
# Encoder tests


@pytest.mark.parametrize("last", [False, True])
def test_unimp_layer_matches_numpy_reference(last):
  params, out = _check_layer(UniMPLayer, unimp_layer_reference, last)
  assert ("LayerNorm_0" in params) != last
  assert set(params) - {"LayerNorm_0"} == {"query", "key", "value", "skip", "gate"}
  assert "bias" not in params["gate"]                       # beta = sigmoid(w . [...]), no bias


@pytest.mark.parametrize("last", [False, True])
def test_gat_layer_matches_numpy_reference(last):
  params, _ = _check_layer(GATLayer, gat_layer_reference, last)
  assert set(params) - {"LayerNorm_0"} == {"node", "edge", "attention_centre",
                                           "attention_neighbour", "skip"}


def test_unimp_layer_masked_and_edgeless_nodes():
  """Node 4 (all incoming edges masked) and node 5 (none) get m = 0: their output is
  act(LN(beta r)) with beta = sigmoid(w . [0; r; -r]), whatever the masked edges carry."""
  h, g = _layer_inputs()
  layer = UniMPLayer(d_model=D_MODEL, num_heads=NUM_HEADS)
  args = (h, g, SENDERS, RECEIVERS, LAYER_EDGE_MASK)
  params = perturb(layer.init(jax.random.key(0), *args, train=False)["params"])
  out = layer.apply({"params": params}, *args, train=False)
  p = as_numpy(params)
  r = dense(p["skip"], h[4:].astype(np.float64))
  beta = sigmoid(np.concatenate([0 * r, r, -r], axis=-1) @ p["gate"]["kernel"])
  chex.assert_trees_all_close(out[4:], leaky_relu(layer_norm(p["LayerNorm_0"], beta * r)),
                              **REF_TOL)
  junk = g.copy()
  junk[~LAYER_EDGE_MASK] = 1e4
  chex.assert_trees_all_close(layer.apply({"params": params}, h, junk, SENDERS, RECEIVERS,
                                          LAYER_EDGE_MASK, train=False), out, **REF_TOL)


@pytest.mark.parametrize("encoder_cls,layer_reference", [
    (UniMPEncoder, unimp_layer_reference), (GATEncoder, gat_layer_reference)])
def test_encoder_shares_one_edge_embedding_and_matches_reference(encoder_cls, layer_reference):
  """One edge embedding g = W_e e + b_e (paper Eq. 3) serves every layer: the parameter
  tree has a single edge-feature transform (the only kernel reading the Gaussian
  features), no layer has its own, and the encoder equals the reference that computes g
  once."""
  num_layers, radius, step = 3, 6.0, 0.5
  encoder = encoder_cls(d_model=D_MODEL, num_heads=NUM_HEADS, num_layers=num_layers,
                        dropout=0.0, radius=radius, gaussian_step=step)
  graph = hand_graph()
  params = encoder.init(jax.random.key(0), graph, train=False)["params"]
  assert set(params) == {"AtomEmbedding_0", "EdgeEmbedding_0"} | {
      f"layer_{i}" for i in range(num_layers)}
  num_gaussians = int(round(radius / step)) + 1
  readers = [jax.tree_util.keystr(path) for path, x in jax.tree_util.tree_leaves_with_path(params)
             if x.ndim == 2 and x.shape[0] == num_gaussians]
  assert readers == ["['EdgeEmbedding_0']['Dense_0']['kernel']"], readers
  chex.assert_shape(params["EdgeEmbedding_0"]["Dense_0"]["bias"], (D_MODEL,))   # b_e
  if encoder_cls is UniMPEncoder:       # UniMP layers use g as it is: no edge parameters
    for i in range(num_layers):
      assert set(params[f"layer_{i}"]) <= {"query", "key", "value", "skip", "gate",
                                           "LayerNorm_0"}

  params = perturb(params)
  expected = encoder_reference(as_numpy(params), graph, NUM_HEADS, num_layers, radius, step,
                               layer_reference)
  apply = functools.partial(encoder.apply, {"params": params}, train=False)
  chex.assert_trees_all_close(jax.jit(apply)(graph), expected, **REF_TOL)
  with jax.disable_jit():
    chex.assert_trees_all_close(apply(graph), expected, **REF_TOL)


def test_edge_mask_matches_reference():
  graph = hand_graph()
  np.testing.assert_array_equal(graph_layers.edge_mask(graph),
                                real_edges_reference(NODES, SENDERS, RECEIVERS, N_NODE, N_EDGE))


@pytest.mark.parametrize("activation", ["none", "leaky_relu"])
def test_crystal_context_matches_reference(activation):
  """[mean of real node states; act(Dense(composition))]; 'leaky_relu' applies the
  activation (slope 0.2) to the composition embedding, 'none' does not."""
  node_states = np.random.default_rng(2).normal(size=(len(NODES), D_MODEL)).astype(np.float32)
  graph = hand_graph()
  context = CrystalContext(composition_activation=activation)
  params = perturb(context.init(jax.random.key(0), node_states, graph)["params"], scale=0.5)
  out = jax.jit(functools.partial(context.apply, {"params": params}))(node_states, graph)
  chex.assert_shape(out, (2, 2 * D_MODEL))
  p = as_numpy(params)
  chex.assert_trees_all_close(out, context_reference(p, node_states.astype(np.float64), NODES,
                                                     N_NODE, activation), **REF_TOL)
  embedded = context_reference(p, node_states.astype(np.float64), NODES, N_NODE)[:, D_MODEL:]
  assert (embedded < -0.05).any()                           # the activation matters here
  if activation == "leaky_relu":
    assert np.abs(np.asarray(out)[:, D_MODEL:] - embedded).max() > 0.04


# --------------------------------------------------------------------------------------------
# Decoder tests


def _decoder_inputs(seed=3, num_graphs=3, max_atoms=3, context_width=10):
  """context [G, c]; flat atom states [7, d] with row 6 a large padding row; index/mask:
  crystal 0 has 3 atoms, crystal 1 has 2 (+ a padding slot), crystal 2 is padding."""
  rng = np.random.default_rng(seed)
  context = rng.normal(size=(num_graphs, context_width)).astype(np.float32)
  states = rng.normal(size=(7, D_MODEL)).astype(np.float32)
  states[6] = 1e3
  index = np.array([[0, 1, 2], [3, 4, 6], [6, 6, 6]], np.int32)
  mask = np.array([[True, True, True], [True, True, False], [False] * 3])
  return context, AtomStates(jnp.asarray(states), jnp.asarray(index), jnp.asarray(mask))


@pytest.mark.parametrize("causal", [True, False])
def test_transformer_decoder_layer_matches_numpy_reference(causal):
  l_y = 5
  _, atoms = _decoder_inputs()
  x = np.random.default_rng(4).normal(size=(3, l_y, D_MODEL)).astype(np.float32)
  self_mask = jnp.tril(jnp.ones((l_y, l_y), bool)) if causal else None
  source_mask = jnp.broadcast_to(atoms.mask[:, None, :], (3, l_y, 3))
  layer = TransformerDecoderLayer(d_model=D_MODEL, num_heads=NUM_HEADS, ff_dim=16)
  args = (x, atoms, self_mask, source_mask)
  params = perturb(layer.init(jax.random.key(0), *args, train=False)["params"])
  p = as_numpy(params)
  states, index, mask = (np.asarray(a) for a in atoms)
  expected = np.stack([decoder_layer_reference(p, x[gi].astype(np.float64),
                                               states[index[gi]].astype(np.float64), mask[gi],
                                               causal, NUM_HEADS) for gi in range(3)])
  apply = functools.partial(layer.apply, {"params": params}, train=False)
  out = jax.jit(apply)(*args)
  chex.assert_shape(out, (3, l_y, D_MODEL))
  chex.assert_trees_all_close(out, expected, **REF_TOL)
  with jax.disable_jit():
    chex.assert_trees_all_close(apply(*args), expected, **REF_TOL)
  # The example tells the masks apart: the other causality, and attending to the padding
  # atoms, change the reference well beyond the tolerance.
  other = np.stack([decoder_layer_reference(p, x[gi].astype(np.float64),
                                            states[index[gi]].astype(np.float64), mask[gi],
                                            not causal, NUM_HEADS) for gi in range(3)])
  assert np.abs(other - expected).max() > 0.01
  unmasked_atoms = decoder_layer_reference(p, x[1].astype(np.float64),
                                           states[index[1]].astype(np.float64),
                                           np.ones(3, bool), causal, NUM_HEADS)
  assert np.abs(unmasked_atoms - expected[1]).max() > 0.1


@pytest.mark.parametrize("source_attention", [True, False])
def test_transformer_decoder_matches_numpy_reference(source_attention):
  l_y, num_layers = 6, 2
  context, atoms = _decoder_inputs()
  decoder = CausalTransformerDecoder(l_y=l_y, d_model=D_MODEL, num_heads=NUM_HEADS,
                                     num_layers=num_layers, ff_dim=16,
                                     source_attention=source_attention)
  params = perturb(decoder.init(jax.random.key(0), context, atoms, None, train=False)["params"])
  expected = transformer_decoder_reference(as_numpy(params), context.astype(np.float64),
                                           np.asarray(atoms.states, np.float64),
                                           np.asarray(atoms.index), np.asarray(atoms.mask), l_y,
                                           num_layers, NUM_HEADS,
                                           source_attention=source_attention)
  apply = functools.partial(decoder.apply, {"params": params}, train=False)
  out = jax.jit(apply)(context, atoms, None)
  chex.assert_shape(out, (3, l_y))
  chex.assert_trees_all_close(out, expected, **REF_TOL)
  with jax.disable_jit():
    chex.assert_trees_all_close(apply(context, atoms, None), expected, **REF_TOL)
