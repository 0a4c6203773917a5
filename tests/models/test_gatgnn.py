"""Tests for the GATGNN encoder and head (xtal2dos_jax/models/gatgnn.py).

Equations against independent float64 numpy versions on the hand graph of
test_equations.py; the whole model (tiny sizes, one padding budget, so one compile for
the forward pass) for shapes, invariance to atom order and to the rest of the batch; the
ablation config for a train step.
"""
from __future__ import annotations

import functools
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xtal2dos_jax.input_pipeline.featurize import atom_feature_table
from xtal2dos_jax.models import AtomStates, create_model
from xtal2dos_jax.models.gatgnn import AGATLayer, GATGNNEncoder, GATGNNHead
from xtal2dos_jax.workflows import cli

from test_equations import (D_MODEL, LAYER_EDGE_MASK, N_EDGE, NODES, NUM_HEADS, RECEIVERS,
                            REF_TOL, SENDERS, _layer_inputs, as_numpy, dense, hand_graph,
                            layer_norm, leaky_relu, perturb, real_edges_reference, softmax,
                            softplus)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOL = dict(rtol=1e-4, atol=1e-5)
EDGE_GRAPH = np.repeat(np.arange(len(N_EDGE)), N_EDGE).astype(np.int32)


# --------------------------------------------------------------------------------------------
# numpy references


def agat_reference(p, h, g, senders, receivers, edge_mask, edge_graph, num_heads):
  """One AGAT layer, edge by edge: x = softplus(W [h; g]) with W the stacked node and
  edge rows; logits softplus(a_k . [x_ik; x_jk]), standardised per head over the real
  edges of their crystal, scaled and shifted, softplus; softmax over i's incoming real
  edges; heads averaged; + bias."""
  w = np.concatenate([p["W_node"]["kernel"], p["W_edge"]["kernel"]], axis=0)
  d = p["bias"].shape[0]
  num_edges = len(senders)
  x_i = np.stack([softplus(np.concatenate([h[receivers[e]], g[e]]) @ w).reshape(num_heads, d)
                  for e in range(num_edges)])
  x_j = np.stack([softplus(np.concatenate([h[senders[e]], g[e]]) @ w).reshape(num_heads, d)
                  for e in range(num_edges)])
  logits = np.array([[softplus(np.concatenate([x_i[e, k], x_j[e, k]]) @ p["att"][k])
                      for k in range(num_heads)] for e in range(num_edges)])
  z = np.zeros_like(logits)
  for c in np.unique(edge_graph):
    real = [e for e in range(num_edges) if edge_graph[e] == c and edge_mask[e]]
    if real:
      mean, var = logits[real].mean(0), logits[real].var(0)
      z[real] = (logits[real] - mean) / np.sqrt(var + 1e-5)
  a = softplus(z * p["norm_scale"] + p["norm_bias"])
  out = np.zeros((h.shape[0], d))
  for i in range(h.shape[0]):
    edges = [e for e in range(num_edges) if receivers[e] == i and edge_mask[e]]
    for k in range(num_heads):
      if edges:
        out[i] += softmax(a[edges, k]) @ x_j[edges, k] / num_heads
  return out + p["bias"]


def gatgnn_encoder_reference(p, graph, num_heads, num_layers, radius, step):
  """h = Dense(CGCNN(Z)); g = leaky_relu_0.2(Dense(gaussians)); layers of
  softplus(LayerNorm(AGAT(h)))."""
  nodes, senders, receivers = (np.asarray(x) for x in (graph.nodes, graph.senders,
                                                      graph.receivers))
  h = dense(p["AtomEmbedding_0"]["Dense_0"], atom_feature_table().astype(np.float64)[nodes])
  mu = np.arange(0.0, radius + step / 2, step)
  distances = np.asarray(graph.edges, np.float64)
  gaussians = np.exp(-(distances[:, None] - mu[None, :]) ** 2 / step ** 2)
  g = leaky_relu(dense(p["EdgeEmbedding_0"]["Dense_0"], gaussians), 0.2)
  mask = real_edges_reference(nodes, senders, receivers, np.asarray(graph.n_node),
                              np.asarray(graph.n_edge))
  edge_graph = np.repeat(np.arange(len(graph.n_edge)), np.asarray(graph.n_edge))
  for i in range(num_layers):
    m = agat_reference(p[f"layer_{i}"], h, g, senders, receivers, mask, edge_graph, num_heads)
    h = softplus(layer_norm(p[f"norm_{i}"], m, eps=1e-5))
  return h


def head_reference(p, context, atoms, atom_mask, num_layers):
  """Per crystal: s_a = Dense_1(softplus(Dense_32([h_a; u]))) with u = context[d:],
  w = softmax over its real atoms, y = sum_a w_a h_a, num_layers softplus layers, out."""
  d = atoms.shape[-1]
  rows = []
  for c in range(atoms.shape[0]):
    real = np.flatnonzero(atom_mask[c])
    y = np.zeros(d)
    if len(real):
      h = atoms[c, real]
      u = np.broadcast_to(context[c, d:], (len(real), context.shape[1] - d))
      s = dense(p["attention_out"], softplus(dense(p["attention_hidden"],
                                                   np.concatenate([h, u], -1))))[:, 0]
      y = softmax(s) @ h
    for i in range(num_layers):
      y = softplus(dense(p[f"hidden_{i}"], y))
    rows.append(dense(p["out"], y))
  return np.stack(rows)


# --------------------------------------------------------------------------------------------
# Equations


def test_agat_layer_matches_numpy_reference():
  h, g = _layer_inputs()
  layer = AGATLayer(d_model=D_MODEL, num_heads=NUM_HEADS)
  args = (h, g, SENDERS, RECEIVERS, LAYER_EDGE_MASK, EDGE_GRAPH, len(N_EDGE))
  params = perturb(layer.init(jax.random.key(0), *args, train=False)["params"])
  assert set(params) == {"W_node", "W_edge", "att", "norm_scale", "norm_bias", "bias"}
  chex.assert_shape(params["W_node"]["kernel"], (h.shape[1], NUM_HEADS * D_MODEL))
  chex.assert_shape(params["att"], (NUM_HEADS, 2 * D_MODEL))
  p64 = as_numpy(params)
  expected = agat_reference(p64, h.astype(np.float64), g.astype(np.float64), SENDERS,
                            RECEIVERS, LAYER_EDGE_MASK, EDGE_GRAPH, NUM_HEADS)
  out = jax.jit(functools.partial(layer.apply, {"params": params}, train=False),
                static_argnums=6)(*args)
  chex.assert_shape(out, (len(NODES), D_MODEL))
  chex.assert_trees_all_close(out, expected, **REF_TOL)
  # Shuffled edges (`sorted_receivers=False`) give the same messages.
  order = np.random.default_rng(1).permutation(len(SENDERS))
  unsorted = AGATLayer(d_model=D_MODEL, num_heads=NUM_HEADS, sorted_receivers=False)
  chex.assert_trees_all_close(
      unsorted.apply({"params": params}, h, g[order], SENDERS[order], RECEIVERS[order],
                     LAYER_EDGE_MASK[order], EDGE_GRAPH[order], len(N_EDGE), train=False),
      expected, **REF_TOL)
  # The example tells the edge direction apart, and the logit normalisation matters.
  swapped = agat_reference(p64, h.astype(np.float64), g.astype(np.float64), RECEIVERS,
                           SENDERS, LAYER_EDGE_MASK, EDGE_GRAPH, NUM_HEADS)
  assert np.abs(swapped - expected).max() > 0.1
  shifted = dict(p64, norm_bias=p64["norm_bias"] + 1.0)
  assert np.abs(agat_reference(shifted, h.astype(np.float64), g.astype(np.float64), SENDERS,
                               RECEIVERS, LAYER_EDGE_MASK, EDGE_GRAPH, NUM_HEADS)
                - expected).max() > 1e-3


def test_gatgnn_encoder_matches_numpy_reference():
  graph = hand_graph()
  radius, step = 5.0, 0.5
  encoder = GATGNNEncoder(d_model=D_MODEL, num_heads=NUM_HEADS, num_layers=2, dropout=0.0,
                          radius=radius, gaussian_step=step)
  params = perturb(encoder.init(jax.random.key(0), graph, train=False)["params"])
  out = jax.jit(functools.partial(encoder.apply, {"params": params}, train=False))(graph)
  expected = gatgnn_encoder_reference(as_numpy(params), graph, NUM_HEADS, 2, radius, step)
  chex.assert_shape(out, (len(NODES), D_MODEL))
  chex.assert_tree_all_finite(out)
  real = NODES > 0
  chex.assert_trees_all_close(np.asarray(out)[real], expected[real], **REF_TOL)


@pytest.fixture(scope="module")
def head_inputs():
  """(context [3, 2d], atoms [3, 4, d], mask [3, 4]); crystal 2 is padding."""
  d = 6
  rng = np.random.default_rng(0)
  mask = np.array([[True, True, True, False], [True, False, False, False], [False] * 4])
  atoms = (rng.normal(size=(3, 4, d)) * mask[..., None]).astype(np.float32)
  return rng.normal(size=(3, 2 * d)).astype(np.float32), atoms, mask


def test_head_matches_numpy_reference(head_inputs):
  context, atoms, mask = head_inputs
  head = GATGNNHead(l_y=5, hidden=7, num_layers=2)
  states = AtomStates.from_dense(jnp.asarray(atoms), jnp.asarray(mask))
  params = perturb(head.init(jax.random.key(0), context, states, None, train=False)["params"],
                   scale=0.5)
  chex.assert_shape(params["attention_hidden"]["kernel"], (2 * atoms.shape[-1], 32))
  apply = jax.jit(lambda c, a, m: head.apply({"params": params}, c, AtomStates.from_dense(a, m),
                                             None, train=False))
  out = apply(context, atoms, mask)
  expected = head_reference(as_numpy(params), context.astype(np.float64),
                            atoms.astype(np.float64), mask, 2)
  chex.assert_shape(out, (3, 5))
  chex.assert_trees_all_close(out, expected, **REF_TOL)
  # Padding atoms have no weight, whatever their states; the composition part matters.
  junk = np.where(mask[..., None], atoms, 1e3).astype(np.float32)
  chex.assert_trees_all_close(apply(context, junk, mask), out, **TOL)
  other = context.copy()
  other[:, atoms.shape[-1]:] += 1.0
  assert np.abs(np.asarray(apply(other, atoms, mask)) - np.asarray(out))[:2].max() > 1e-4
  # The weights are not uniform: the plain mean would give other outputs.
  uniform = head_reference(dict(as_numpy(params), attention_out={
      "kernel": np.zeros((32, 1)), "bias": np.zeros(1)}), context.astype(np.float64),
      atoms.astype(np.float64), mask, 2)
  assert np.abs(uniform - expected)[0].max() > 1e-3


# --------------------------------------------------------------------------------------------
# The whole model


@pytest.fixture(scope="module")
def gatgnn_config(tiny_config):
  config = tiny_config.copy_and_resolve_references()
  config.model.encoder, config.model.decoder = "gatgnn", "gatgnn_head"
  config.model.encoder_dropout = config.model.decoder_dropout = 0.0
  config.model.decoder_layers = 2
  return config


@pytest.fixture(scope="module")
def predict(gatgnn_config, tiny_batch):
  """(batch) -> (raw outputs float[G, l_y], node states float[N, d]), perturbed params."""
  model = create_model(gatgnn_config)
  params = perturb(jax.jit(functools.partial(model.init, train=False))(
      jax.random.key(0), tiny_batch)["params"], scale=0.3)

  @jax.jit
  def apply(batch):
    out = model.apply({"params": params}, batch, train=False, raw=True)
    states = model.encoder.apply({"params": params["encoder"]}, batch.graph, train=False)
    return out, states
  return apply


def test_model_shapes_and_modules(gatgnn_config, tiny_batch, predict):
  model = create_model(gatgnn_config)
  assert isinstance(model.encoder, GATGNNEncoder) and isinstance(model.decoder, GATGNNHead)
  out, states = predict(tiny_batch)
  chex.assert_shape(out, (tiny_batch.graph_mask.shape[0], gatgnn_config.data.l_y))
  chex.assert_shape(states, (tiny_batch.graph.nodes.shape[0], gatgnn_config.model.d_model))
  chex.assert_type(out, jnp.float32)
  chex.assert_tree_all_finite((out, states))                  # padding crystals included


def test_output_local_to_its_crystal(check_locality, make_tiny_batch, predict):
  """Atom order, the rest of the batch and padding edges leave a crystal's output alone
  (the logit normalisation's statistics are its own); real distances do matter."""
  check_locality(predict, TOL)
  batch = make_tiny_batch(["tri"])
  alone, _ = predict(batch)
  g = batch.graph
  e_real = int(np.asarray(g.n_edge)[0])
  stretched = g._replace(edges=np.array(g.edges))
  stretched.edges[:e_real] *= 1.1
  moved, _ = predict(batch._replace(graph=stretched))
  assert np.abs(np.asarray(moved)[0] - np.asarray(alone)[0]).max() > 1e-5


@pytest.mark.long
def test_ablation_config_builds_and_takes_a_train_step(train_one_step):
  config = cli.load_config_file(os.path.join(REPO, "configs", "ablations", "gatgnn.py"))
  full = create_model(config)
  assert isinstance(full.encoder, GATGNNEncoder) and isinstance(full.decoder, GATGNNHead)
  assert (full.encoder.d_model, full.encoder.num_heads, full.encoder.num_layers) == (128, 4, 3)
  assert full.decoder.num_layers == 2 and full.decoder.hidden == 128
  assert config.model.composition_activation == "none"

  m = config.model
  m.d_model, m.num_heads, m.encoder_layers = 8, 2, 1
  config.data.update(l_y=12, radius=6.0, max_num_nbr=8, gaussian_step=0.4)
  moved = train_one_step(config).moved
  assert max(jax.tree.leaves(moved)) > 0
