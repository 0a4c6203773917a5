"""Tests for the graph network encoder (xtal2dos_jax/models/graph_network.py).

One processing block and the whole encoder against independent float64 numpy versions
on the hand graph of test_equations.py; the model with the `mlp` decoder (tiny sizes,
one padding budget) for shapes and invariance to atom order and to the rest of the
batch; both ablation configs for a train step.
"""
from __future__ import annotations

import functools
import os

import chex
import jax
import numpy as np
import pytest

from xtal2dos_jax.input_pipeline.featurize import atom_feature_table
from xtal2dos_jax.models import create_model
from xtal2dos_jax.models.graph_network import GraphNetworkBlock, GraphNetworkEncoder
from xtal2dos_jax.models.mlp_decoder import MLPDecoder
from xtal2dos_jax.workflows import cli

from test_equations import (D_MODEL, LAYER_EDGE_MASK, NODES, RECEIVERS, REF_TOL, SENDERS,
                            as_numpy, dense, hand_graph, layer_norm, perturb,
                            real_edges_reference)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOL = dict(rtol=1e-4, atol=1e-5)


# --------------------------------------------------------------------------------------------
# numpy references


def prelu(p, x):
  return np.where(x >= 0, x, p["negative_slope"] * x)


def mlp_reference(p, x):
  """Dense -> [LayerNorm] -> PReLU -> Dense."""
  x = dense(p["hidden"], x)
  if "norm" in p:
    x = layer_norm(p["norm"], x)
  return dense(p["out"], prelu(p["prelu"], x))


def block_reference(p, h, e, senders, receivers, edge_mask):
  """Edge update on [h_j; h_i; e_ij], mean of the new edge states over each node's real
  incoming edges (0 without any), node update on [h_i; mean], both residual."""
  e_new = np.stack([mlp_reference(p["edge_mlp"], np.concatenate([h[senders[k]], h[receivers[k]],
                                                                 e[k]]))
                    for k in range(len(senders))])
  h_out = np.zeros_like(h)
  for i in range(h.shape[0]):
    incoming = [k for k in range(len(senders)) if receivers[k] == i and edge_mask[k]]
    mean = e_new[incoming].mean(0) if incoming else np.zeros(e.shape[1])
    h_out[i] = h[i] + mlp_reference(p["node_mlp"], np.concatenate([h[i], mean]))
  return h_out, e + e_new


def encoder_reference(p, graph, num_layers, radius, step):
  nodes, senders, receivers = (np.asarray(x) for x in (graph.nodes, graph.senders,
                                                      graph.receivers))
  h = mlp_reference(p["node_encoder"], atom_feature_table().astype(np.float64)[nodes])
  mu = np.arange(0.0, radius + step / 2, step)
  distances = np.asarray(graph.edges, np.float64)
  e = mlp_reference(p["edge_encoder"],
                    np.exp(-(distances[:, None] - mu[None, :]) ** 2 / step ** 2))
  mask = real_edges_reference(nodes, senders, receivers, np.asarray(graph.n_node),
                              np.asarray(graph.n_edge))
  for i in range(num_layers):
    h, e = block_reference(p[f"block_{i}"], h, e, senders, receivers, mask)
  return h


# --------------------------------------------------------------------------------------------
# Equations


def test_block_matches_numpy_reference():
  rng = np.random.default_rng(0)
  h = rng.normal(size=(len(NODES), D_MODEL)).astype(np.float32)
  e = rng.normal(size=(len(SENDERS), D_MODEL)).astype(np.float32)
  block = GraphNetworkBlock(d_model=D_MODEL)
  args = (h, e, SENDERS, RECEIVERS, LAYER_EDGE_MASK)
  params = perturb(block.init(jax.random.key(0), *args)["params"])
  chex.assert_shape(params["edge_mlp"]["hidden"]["kernel"], (3 * D_MODEL, 2 * D_MODEL))
  chex.assert_shape(params["node_mlp"]["hidden"]["kernel"], (2 * D_MODEL, 2 * D_MODEL))
  p64 = as_numpy(params)
  want_h, want_e = block_reference(p64, h.astype(np.float64), e.astype(np.float64), SENDERS,
                                   RECEIVERS, LAYER_EDGE_MASK)
  got_h, got_e = jax.jit(functools.partial(block.apply, {"params": params}))(*args)
  chex.assert_shape((got_h, got_e), ((len(NODES), D_MODEL), (len(SENDERS), D_MODEL)))
  chex.assert_trees_all_close((got_h, got_e), (want_h, want_e), **REF_TOL)
  order = np.random.default_rng(1).permutation(len(SENDERS))
  unsorted = GraphNetworkBlock(d_model=D_MODEL, sorted_receivers=False)
  chex.assert_trees_all_close(
      unsorted.apply({"params": params}, h, e[order], SENDERS[order], RECEIVERS[order],
                     LAYER_EDGE_MASK[order])[0], want_h, **REF_TOL)
  # The example tells the edge direction apart.
  swapped, _ = block_reference(p64, h.astype(np.float64), e.astype(np.float64), RECEIVERS,
                               SENDERS, LAYER_EDGE_MASK)
  assert np.abs(swapped - want_h).max() > 0.1


def test_encoder_matches_numpy_reference():
  graph = hand_graph()
  radius, step = 5.0, 0.5
  encoder = GraphNetworkEncoder(d_model=D_MODEL, num_layers=2, radius=radius,
                                gaussian_step=step)
  params = perturb(encoder.init(jax.random.key(0), graph, train=False)["params"])
  out = jax.jit(functools.partial(encoder.apply, {"params": params}, train=False))(graph)
  expected = encoder_reference(as_numpy(params), graph, 2, radius, step)
  chex.assert_shape(out, (len(NODES), D_MODEL))
  chex.assert_tree_all_finite(out)
  real = NODES > 0
  chex.assert_trees_all_close(np.asarray(out)[real], expected[real], **REF_TOL)


# --------------------------------------------------------------------------------------------
# The whole model


@pytest.fixture(scope="module")
def predict(tiny_config, tiny_batch):
  """(batch) -> (outputs float[G, l_y], node states float[N, d]), perturbed params."""
  config = tiny_config.copy_and_resolve_references()
  config.model.encoder, config.model.decoder = "graph_network", "mlp"
  config.model.decoder_dropout = 0.0
  model = create_model(config)
  assert isinstance(model.encoder, GraphNetworkEncoder)
  params = perturb(jax.jit(functools.partial(model.init, train=False))(
      jax.random.key(0), tiny_batch)["params"])

  @jax.jit
  def apply(batch):
    out = model.apply({"params": params}, batch, train=False)
    states = model.encoder.apply({"params": params["encoder"]}, batch.graph, train=False)
    return out, states
  return apply


def test_model_shapes(tiny_config, tiny_batch, predict):
  out, states = predict(tiny_batch)
  chex.assert_shape(out, (tiny_batch.graph_mask.shape[0], tiny_config.data.l_y))
  chex.assert_shape(states, (tiny_batch.graph.nodes.shape[0], tiny_config.model.d_model))
  chex.assert_tree_all_finite((out, states))                  # padding crystals included
  real = np.asarray(out)[np.asarray(tiny_batch.graph_mask)]
  np.testing.assert_allclose(real.sum(-1), 1.0, rtol=1e-5)    # softmax output


def test_output_local_to_its_crystal(check_locality, predict):
  check_locality(predict, TOL)


@pytest.mark.long
@pytest.mark.parametrize("name,layers,energy", [("graph_network", 4, False),
                                                ("graph_network_energy", 3, True)])
def test_ablation_configs_build_and_take_a_train_step(name, layers, energy, train_one_step):
  config = cli.load_config_file(os.path.join(REPO, "configs", "ablations", f"{name}.py"))
  full = create_model(config)
  assert isinstance(full.encoder, GraphNetworkEncoder) and type(full.decoder) is MLPDecoder
  assert full.encoder.num_layers == layers and full.decoder.energy_embedding == energy
  assert full.decoder.num_layers == 1
  assert full.decoder.hidden == (config.model.d_model if energy else config.model.d_model // 2)

  m = config.model
  m.d_model, m.encoder_layers, m.ff_dim = 8, 1, 8
  config.data.update(l_y=12, radius=6.0, max_num_nbr=8, gaussian_step=0.4)
  moved = train_one_step(config).moved
  assert max(jax.tree.leaves(moved)) > 0
