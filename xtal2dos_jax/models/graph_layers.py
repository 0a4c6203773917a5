"""Graph pieces shared by the message-passing encoders (UniMP, GAT, GATGNN, graph network).

Every encoder maps the padded batch graph of `batching.Batch` (nodes = int32[N]
atomic numbers, 0 for padding; edges = float32[E] distances in Å; messages flow
sender j (neighbour) -> receiver i (centre)) to float[N, d_model] node states:

  encoder(graph, train=...) -> float[N, d_model]

Padding nodes get finite states that no real node depends on. This module holds the
masks, the mean pool, the atom and edge embeddings, `MessagePassingEncoder` (the
embeddings-then-layers skeleton: each encoder fills in its embeddings and its layer step)
and `StackedGraphEncoder` (that skeleton with the atom / edge embeddings and a stack of
attention layers of one type: UniMP, GAT, GATGNN).
"""
from __future__ import annotations

from typing import Any, Callable, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
import jraph

from xtal2dos_jax.input_pipeline.featurize import atom_feature_table, gaussian_expansion
from xtal2dos_jax.models.precision import DotGeneral, same_precision
Dtype = Any


def node_mask(graph: jraph.GraphsTuple) -> jax.Array:
  """bool[N]: True for real atoms (atomic number > 0)."""
  return graph.nodes > 0


def node_graph_index(n_node: jax.Array, num_nodes: int) -> jax.Array:
  """int32[N] graph of each node, from int[G] `n_node` (non-decreasing)."""
  return jnp.repeat(jnp.arange(n_node.shape[0], dtype=jnp.int32), n_node,
                    total_repeat_length=num_nodes)


def edge_mask(graph: jraph.GraphsTuple) -> jax.Array:
  """bool[E]: True for real edges.

  An edge is real if its graph (from `n_edge`) contains a real atom and both its ends
  are real atoms, so padding edges are excluded however they are wired.
  """
  num_nodes, num_edges = graph.nodes.shape[0], graph.senders.shape[0]
  real = node_mask(graph)
  graph_is_real = jax.ops.segment_max(real.astype(jnp.int32),
                                      node_graph_index(graph.n_node, num_nodes),
                                      graph.n_node.shape[0], indices_are_sorted=True) > 0
  edge_graph = node_graph_index(graph.n_edge, num_edges)
  return graph_is_real[edge_graph] & real[graph.senders] & real[graph.receivers]


def mean_pool(node_states: jax.Array, graph: jraph.GraphsTuple) -> jax.Array:
  """Mean of the real nodes' states per graph: float[N, d] -> float[G, d].

  Padding nodes are excluded; a graph without real nodes gets zeros.
  """
  num_nodes, num_graphs = node_states.shape[0], graph.n_node.shape[0]
  index = node_graph_index(graph.n_node, num_nodes)
  weight = node_mask(graph).astype(node_states.dtype)
  sums = jax.ops.segment_sum(node_states * weight[:, None], index, num_graphs,
                             indices_are_sorted=True)
  counts = jax.ops.segment_sum(weight, index, num_graphs, indices_are_sorted=True)
  return sums / jnp.maximum(counts, 1.0)[:, None]


class AtomEmbedding(nn.Module):
  """Atomic numbers -> Dense(element vector): int[N] -> float[N, d_model].

  The element table (`featurize.atom_feature_table(features)`: the 92-d CGCNN vectors,
  with the two mass columns for "cgcnn_mass") is a constant, not a parameter; padding
  (Z = 0) maps to the zero vector, i.e. to the Dense bias.
  """
  d_model: int
  features: str = "cgcnn"
  dtype: Dtype = jnp.float32
  dot_general: DotGeneral = lax.dot_general

  @nn.compact
  def __call__(self, atomic_numbers: jax.Array) -> jax.Array:
    table = jnp.asarray(atom_feature_table(self.features))
    return nn.Dense(self.d_model, **same_precision(self))(table[atomic_numbers])


class EdgeEmbedding(nn.Module):
  """Distances -> g = W_e gaussian(d) + b_e (paper Eq. 3): float[E] Å -> float[E, d_model]."""
  d_model: int
  radius: float
  gaussian_step: float
  dtype: Dtype = jnp.float32
  dot_general: DotGeneral = lax.dot_general

  @nn.compact
  def __call__(self, distances: jax.Array) -> jax.Array:
    features = gaussian_expansion(distances, self.radius, self.gaussian_step)
    return nn.Dense(self.d_model, **same_precision(self))(features)


class MessagePassingEncoder(nn.Module):
  """Embeddings, then `num_layers` message-passing layers over one shared edge mask.

  encoder(graph, train=...) -> float[N, d_model]. The skeleton every graph encoder of
  this package fills in: subclasses define the two hooks,

    embed(graph) -> (h float[N, d_model] node states, g float[E, d_e] edge states)
    layer(i, h, g, graph, mask, train=) -> (h, g) after layer i

  which `__call__` runs as h, g = embed(graph); then h, g = layer(i, ...) for
  i = 0..num_layers-1. The hooks run inside `__call__`'s compact scope, so the
  submodules they create are named and stored as if created in `__call__` itself.

  Attributes:
    d_model: node-state width.
    num_layers: number of layers.
    radius: neighbour cutoff in Å (range of the Gaussian centres).
    gaussian_step: Gaussian width and centre spacing in Å.
    atom_features: the element table `AtomEmbedding` reads ("cgcnn" | "cgcnn_mass";
      used by the encoders that embed with it).
    sorted_receivers: `receivers` is non-decreasing (true for `batching` batches).
    dtype: compute dtype (parameters stay float32).
    dot_general: the matmul of the layers (see `precision.py`).
  """
  d_model: int
  num_layers: int
  radius: float
  gaussian_step: float
  atom_features: str = "cgcnn"
  sorted_receivers: bool = True
  dtype: Dtype = jnp.float32
  dot_general: DotGeneral = lax.dot_general

  def embed(self, graph: jraph.GraphsTuple) -> tuple[jax.Array, jax.Array]:
    """(node states float[N, d_model], edge states float[E, d_e]) before the layers."""
    raise NotImplementedError

  def layer(self, i: int, h: jax.Array, g: jax.Array, graph: jraph.GraphsTuple,
            mask: jax.Array, *, train: bool) -> tuple[jax.Array, jax.Array]:
    """(h, g) after layer i, from float[N, d_model] node states h, float[E, d_e] edge
    states g and the bool[E] real edges `mask`."""
    raise NotImplementedError

  @nn.compact
  def __call__(self, graph: jraph.GraphsTuple, *, train: bool) -> jax.Array:
    """float[N, d_model] node states of the padded batch graph."""
    h, g = self.embed(graph)
    mask = edge_mask(graph)
    for i in range(self.num_layers):
      h, g = self.layer(i, h, g, graph, mask, train=train)
    return h


class StackedGraphEncoder(MessagePassingEncoder, kw_only=True):
  """Atom/edge embeddings + `num_layers` attention layers of type `layer_cls`.

  Subclasses set `layer_cls` (called as layer_cls(d_model, num_heads, dropout, last=...,
  sorted_receivers=..., dtype=..., name=...)(h, g, senders, receivers, edge_mask, train=)).
  The edge embedding g_ij is computed once and shared by every layer (paper Eq. 3);
  the layers update only the node states.

  Attributes (besides `MessagePassingEncoder`'s; these two are keyword-only):
    num_heads: attention heads per layer.
    dropout: dropout rate after each layer (train only).
  The last layer is built with last=True (UniMP, GAT: without LayerNorm / activation).
  """
  layer_cls: ClassVar[Callable[..., nn.Module]]
  num_heads: int
  dropout: float

  def embed(self, graph: jraph.GraphsTuple) -> tuple[jax.Array, jax.Array]:
    """h = `AtomEmbedding`(Z), g = `EdgeEmbedding`(d_ij): float[N, d], float[E, d]."""
    h = AtomEmbedding(self.d_model, self.atom_features, **same_precision(self))(graph.nodes)
    g = EdgeEmbedding(self.d_model, self.radius, self.gaussian_step,
                      **same_precision(self))(graph.edges)
    return h, g

  def layer(self, i: int, h: jax.Array, g: jax.Array, graph: jraph.GraphsTuple,
            mask: jax.Array, *, train: bool) -> tuple[jax.Array, jax.Array]:
    """`layer_cls` number i (named layer_{i}) on the node states; g unchanged."""
    h = self.layer_cls(self.d_model, self.num_heads, self.dropout,
                       last=i == self.num_layers - 1, sorted_receivers=self.sorted_receivers,
                       **same_precision(self), name=f"layer_{i}")(
                           h, g, graph.senders, graph.receivers, mask, train=train)
    return h, g
