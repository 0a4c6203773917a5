"""The DOSTransformer's own crystal encoder ("dostransformer_gnn"), for its decoder.

The graph network of the public DOSTransformer code (Lee et al., NeurIPS 2023; its
phonon model): an encode-process network with edge updates on the radius graph, whose
node states the decoder's cross-attention reads. Its message passing is the block of
`graph_network.py` (`GraphNetworkBlock`, reused here); what this encoder adds is the
original's inputs:

  x_i   = m(Z_i) onehot(Z_i)                   float[118]: the atomic mass (u) in the
                                               slot of the element, 0 elsewhere
  a_ij  = s(|r_ij| / r_c) Y(r_ij / |r_ij|)      float[4]: l <= 1 real spherical harmonics,
          Y(u) = [1, sqrt(3) u_x, sqrt(3) u_y, sqrt(3) u_z] ("component" normalisation),
          times the smooth cutoff s(x) = (1 - cos(pi u)) / 2 with u = 2 (x - 1), which is
          1 for x <= 1/2 and 0 for x >= 1; r_ij = r_i - r_j (+ lattice shift) points from
          the sender j to the receiver i, r_c = config.data.radius (the order of the
          three l = 1 components is immaterial: the first Dense mixes them)
  self edges                                   one edge i -> i per real atom (r = 0, so
                                               a = [1, 0, 0, 0]), as the public graph is
                                               built with self-interaction
  h_i   = MLP_2(x_i -> d),  e_ij = MLP_2(a_ij -> d)       node / edge encoders
  L x `GraphNetworkBlock`: e'_ij = MLP_LN([h_j; h_i; e_ij]), h'_i = MLP_LN([h_i; mean_j
  e'_ij]), h <- h + h', e <- e + e'

with MLP_2(a -> b) = Dense(b) -> PReLU -> Dense(b) and MLP_LN = Dense(2d) -> LayerNorm ->
PReLU -> Dense(d), the public code's layers. The edge features are not rotation
invariant (neither are the original's); the output is invariant to atom order, to the
rest of the batch and to padding.

Differences from the public code: (1) the crystal vector the decoder fuses with its
energy tokens is our `CrystalContext` ([mean_i h_i; Dense(composition)]), not its
Dense(sum_i h_i); (2) the node model's unused second MLP (`node_mlp_1`, defined there
but never called) has no counterpart; (3) elements are 1..100 (the featuriser's
range), so slots 101-118 of x stay 0; (4) the radius graph of
`configs/ablations/dostransformer_own_encoder.py` is 5 Å (its cutoff 4 Å would drop the
DFPT crystals that have an atom without neighbours, as the E3NN configs note).
"""
from __future__ import annotations

import functools
import math
from typing import Any, ClassVar

import ase.data
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
import jraph
import ml_collections
import numpy as np

from xtal2dos_jax.models.graph_layers import edge_mask, node_mask
from xtal2dos_jax.models.graph_network import GraphNetworkBlock, TwoLayerMLP
from xtal2dos_jax.models.precision import DotGeneral, precision_kwargs, same_precision
Dtype = Any

# Width of the node input: one slot per element Z = 1..118, as the public code.
NUM_ELEMENT_SLOTS = 118
# Width of the edge input: l = 0 and the three l = 1 harmonics.
NUM_EDGE_FEATURES = 4


@functools.lru_cache(maxsize=1)
def mass_onehot_table() -> np.ndarray:
  """float32[119, 118]: row Z holds the atomic mass of Z (u, ASE's table) in column
  Z - 1 and 0 elsewhere; row 0 (padding) is all 0."""
  table = np.zeros((NUM_ELEMENT_SLOTS + 1, NUM_ELEMENT_SLOTS), np.float32)
  z = np.arange(1, NUM_ELEMENT_SLOTS + 1)
  table[z, z - 1] = np.asarray(ase.data.atomic_masses, np.float64)[z]
  return table


def smooth_cutoff(x: jax.Array) -> jax.Array:
  """s(x) = (1 - cos(pi u)) / 2, u = 2 (x - 1), clipped to 1 for x <= 1/2 and 0 for x >= 1:
  float[...] (distance / cutoff) -> float[...] in [0, 1]."""
  u = 2.0 * (x - 1.0)
  y = 0.5 * (1.0 - jnp.cos(math.pi * u))
  return jnp.where(u > 0.0, 0.0, jnp.where(u < -1.0, 1.0, y))


def edge_features(vectors: jax.Array, cutoff: float) -> jax.Array:
  """a = s(|r| / cutoff) [1, sqrt(3) r / |r|]: float[E, 3] Å -> float[E, 4]. A zero
  vector (self edge) gives [1, 0, 0, 0]."""
  length = jnp.sqrt(jnp.sum(jnp.square(vectors), axis=-1))
  unit = vectors / jnp.where(length > 0.0, length, 1.0)[:, None]
  harmonics = jnp.concatenate([jnp.ones_like(length)[:, None], math.sqrt(3.0) * unit], -1)
  return smooth_cutoff(length / cutoff)[:, None] * harmonics


class DOSTransformerGNN(nn.Module):
  """Node / edge encoders on the original's inputs + `num_layers` `GraphNetworkBlock`s.

  encoder(graph, train=...) -> float[N, d_model], graph.edges = float32[E, 3] the
  displacement of each edge's sender from its receiver (`uses_edge_vectors`); padding
  nodes get finite states that no real node depends on.

  Attributes:
    d_model: d, width of node and edge states.
    num_layers: processing blocks (L).
    cutoff: r_c of the smooth cutoff, Å.
    self_edges: add one edge i -> i per node (masked for padding nodes).
    dtype: compute dtype (parameters stay float32).
    dot_general: the matmul of the layers (see `precision.py`).
  """
  d_model: int
  num_layers: int
  cutoff: float
  self_edges: bool = True
  dtype: Dtype = jnp.float32
  dot_general: DotGeneral = lax.dot_general

  uses_edge_vectors: ClassVar[bool] = True

  @nn.compact
  def __call__(self, graph: jraph.GraphsTuple, *, train: bool) -> jax.Array:
    """float[N, d_model] node states (`train` unused: no dropout, as the original)."""
    del train
    d = self.d_model
    num_nodes = graph.nodes.shape[0]
    # The batch stores sender - receiver; the original's vector points to the receiver.
    vectors = -jnp.asarray(graph.edges, jnp.float32)
    senders, receivers, mask = graph.senders, graph.receivers, edge_mask(graph)
    if self.self_edges:
      loops = jnp.arange(num_nodes, dtype=senders.dtype)
      senders = jnp.concatenate([senders, loops])
      receivers = jnp.concatenate([receivers, loops])
      mask = jnp.concatenate([mask, node_mask(graph)])
      vectors = jnp.concatenate([vectors, jnp.zeros((num_nodes, 3), vectors.dtype)])
    table = jnp.asarray(mass_onehot_table())
    h = TwoLayerMLP(d, d, **same_precision(self), name="node_encoder")(table[graph.nodes])
    e = TwoLayerMLP(d, d, **same_precision(self), name="edge_encoder")(
        edge_features(vectors, self.cutoff))
    for i in range(self.num_layers):
      h, e = GraphNetworkBlock(d, sorted_receivers=not self.self_edges,
                               **same_precision(self), name=f"block_{i}")(
                                   h, e, senders, receivers, mask)
    return h


def dostransformer_gnn_encoder(config: ml_collections.ConfigDict) -> nn.Module:
  """`DOSTransformerGNN`: config.model.{d_model, encoder_layers}, cutoff config.data.radius."""
  m = config.model
  return DOSTransformerGNN(d_model=m.d_model, num_layers=m.encoder_layers,
                           cutoff=config.data.radius, **precision_kwargs(config))
