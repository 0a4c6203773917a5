"""Graph network encoder: message passing with edge updates (the "Graph Network" baseline).

The graph-network rows of the DOSTransformer comparison (Ethirajan, Sivakumar & Wu,
"Multi-modal transformers for predicting the density of states in crystalline
structures"; their baseline extends the public DOSTransformer code's graph network), as
an encoder ("graph_network") for the `mlp` decoder: `configs/ablations/graph_network.py`
(without energy embeddings, 4 processing layers) and `graph_network_energy.py` (with
them, 3 layers), the best settings of the report's Table 1.

Encoder (sizes: d = d_model; MLP_2(a -> b) = Dense(b) -> PReLU -> Dense(b) and
MLP_LN(a -> b) = Dense(2d) -> LayerNorm -> PReLU -> Dense(b)):

  h_i  = MLP_2(CGCNN(Z_i) -> d)                      node encoder
  e_ij = MLP_2(gaussian(d_ij) -> d)                  edge encoder
  L processing blocks, each, for every edge j -> i (senders j, receivers i):
    e'_ij = MLP_LN([h_j; h_i; e_ij] -> d)             edge update
    a_i   = mean over the real incoming edges of i of e'_ij   (0 without any)
    h'_i  = MLP_LN([h_i; a_i] -> d)                   node update
    h_i <- h_i + h'_i,  e_ij <- e_ij + e'_ij          residuals

The node states go to the usual crystal context ([mean_i h_i; Dense(composition)]) and
the `mlp` decoder. Differences from the public code: the edges are the Gaussian
expansion of the distances (it uses l <= 1 spherical harmonics of the edge vector times
a smooth cutoff, which are not rotation invariant), the pool is the context's mean (it
sums the node states; the DoS labels here are normalised per crystal, so an intensive
pool fits), and the PReLUs have one learned slope each (initial 0.25, as torch's).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
import jraph
import ml_collections

from xtal2dos_jax.input_pipeline.featurize import atom_feature_table, gaussian_expansion
from xtal2dos_jax.models.graph_layers import MessagePassingEncoder
from xtal2dos_jax.models.precision import DotGeneral, precision_kwargs, same_precision
Dtype = Any

# Initial PReLU slope (torch.nn.PReLU's default).
PRELU_INIT = 0.25


class TwoLayerMLP(nn.Module):
  """Dense(features) -> [LayerNorm] -> PReLU -> Dense(out_features): float[..., f] ->
  float[..., out_features].

  Attributes:
    features: hidden width.
    out_features: output width.
    layer_norm: LayerNorm after the first Dense (the processing blocks' MLPs).
    dtype: compute dtype (parameters stay float32).
    dot_general: the matmul of the layers (see `precision.py`).
  """
  features: int
  out_features: int
  layer_norm: bool = False
  dtype: Dtype = jnp.float32
  dot_general: DotGeneral = lax.dot_general

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.Dense(self.features, **same_precision(self), name="hidden")(x)
    if self.layer_norm:
      x = nn.LayerNorm(dtype=self.dtype, name="norm")(x)
    x = nn.PReLU(negative_slope_init=PRELU_INIT, name="prelu")(x)
    return nn.Dense(self.out_features, **same_precision(self), name="out")(x)


class GraphNetworkBlock(nn.Module):
  """One processing block: edge update, mean aggregation, node update, residuals
  (equations in the module docstring).

  Attributes:
    d_model: d, width of node and edge states.
    sorted_receivers: `receivers` is non-decreasing (true for `batching` batches).
    dtype: compute dtype (parameters stay float32).
    dot_general: the matmul of the layers (see `precision.py`).
  """
  d_model: int
  sorted_receivers: bool = True
  dtype: Dtype = jnp.float32
  dot_general: DotGeneral = lax.dot_general

  @nn.compact
  def __call__(self, h: jax.Array, e: jax.Array, senders: jax.Array, receivers: jax.Array,
               edge_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Updated (node states float[N, d], edge states float[E, d]).

    Args:
      h: float[N, d] node states.
      e: float[E, d] edge states.
      senders: int32[E] neighbour j of each edge.
      receivers: int32[E] centre i of each edge.
      edge_mask: bool[E] real edges; masked edges add nothing to any node.
    """
    d = self.d_model
    e_new = TwoLayerMLP(2 * d, d, layer_norm=True, **same_precision(self), name="edge_mlp")(
        jnp.concatenate([h[senders], h[receivers], e], axis=-1))              # [E, d]
    w = edge_mask.astype(e_new.dtype)[:, None]
    total = jax.ops.segment_sum(e_new * w, receivers, h.shape[0],
                                indices_are_sorted=self.sorted_receivers)
    count = jax.ops.segment_sum(w, receivers, h.shape[0],
                                indices_are_sorted=self.sorted_receivers)
    aggregated = total / jnp.maximum(count, 1.0)                               # [N, d]
    h_new = TwoLayerMLP(2 * d, d, layer_norm=True, **same_precision(self), name="node_mlp")(
        jnp.concatenate([h, aggregated], axis=-1))
    return h + h_new, e + e_new


class GraphNetworkEncoder(MessagePassingEncoder):
  """Node / edge encoders + `num_layers` `GraphNetworkBlock`s (the fields are
  `MessagePassingEncoder`'s; no attention heads, no dropout).

  encoder(graph, train=...) -> float[N, d_model] (`train` unused); padding nodes get
  finite states that no real node depends on.
  """

  def embed(self, graph: jraph.GraphsTuple) -> tuple[jax.Array, jax.Array]:
    """h = MLP_2(CGCNN(Z)), e = MLP_2(gaussian(d_ij)): float[N, d], float[E, d]."""
    d = self.d_model
    table = jnp.asarray(atom_feature_table())
    h = TwoLayerMLP(d, d, **same_precision(self), name="node_encoder")(table[graph.nodes])
    e = TwoLayerMLP(d, d, **same_precision(self), name="edge_encoder")(
        gaussian_expansion(graph.edges, self.radius, self.gaussian_step))
    return h, e

  def layer(self, i: int, h: jax.Array, e: jax.Array, graph: jraph.GraphsTuple,
            mask: jax.Array, *, train: bool) -> tuple[jax.Array, jax.Array]:
    """Processing block i (`block_{i}`): updated node and edge states."""
    del train
    return GraphNetworkBlock(self.d_model, sorted_receivers=self.sorted_receivers,
                             **same_precision(self), name=f"block_{i}")(
                                 h, e, graph.senders, graph.receivers, mask)


def graph_network_encoder(config: ml_collections.ConfigDict) -> nn.Module:
  """`GraphNetworkEncoder`: config.model.{d_model, encoder_layers}, the Gaussian
  expansion of config.data."""
  m, d = config.model, config.data
  return GraphNetworkEncoder(d_model=m.d_model, num_layers=m.encoder_layers, radius=d.radius,
                             gaussian_step=d.gaussian_step, **precision_kwargs(config))
