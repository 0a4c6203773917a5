"""GATGNN (Louis et al., PCCP 2020): augmented graph attention + composition attention.

The baseline of the Xtal2DoS paper's Table 1 ("GATGNN", R^2 0.457), here as an encoder
("gatgnn") and a decoder ("gatgnn_head"); `configs/ablations/gatgnn.py` pairs them.

Encoder. h^0_i = W_n CGCNN(Z_i) + b_n; the edge embedding, shared by all layers,
g_ij = leaky_relu_0.2(W_e gaussian(d_ij) + b_e). Each of the L augmented graph-attention
(AGAT) layers, per edge j -> i (senders j = neighbour, receivers i = centre) and head
k = 1..H, with one shared matrix W = [W_h; W_g] (rows: node part, edge part; no bias):

  x_i = softplus(W [h_i; g_ij]),  x_j = softplus(W [h_j; g_ij])      (per head: [d])
  a_ijk = softplus(a_k . [x_ik; x_jk])
  a_ijk <- softplus(Norm_k(a_ijk))          (per-head normalisation of the logits)
  alpha_ijk = softmax over the incoming edges of i of a_ijk
  m_i = (1/H) sum_k sum_j alpha_ijk x_jk + b                          (heads averaged)
  h'_i = softplus(LayerNorm(m_i))

Every head has the full width d (W maps to H*d columns) and the heads are averaged, as
in the public code (`concat=False`). No residual connection: each layer's output
replaces the node state, as in the public code.

Normalisation. GATGNN batch-normalises the attention logits (per head, over all edges of
the batch) and the node states (per feature, over all atoms of the batch), with running
statistics for inference. This code base trains a pure `params` tree (no mutable batch
statistics, and a crystal's prediction must not depend on its batch), so:
  - Norm_k standardises a head's logits over the real edges of the edge's own crystal,
    (a - mean) / sqrt(var + 1e-5) * gamma_k + beta_k: a batch norm whose batch is one
    crystal, with BatchNorm's learned per-head scale and shift;
  - the node-state batch norm is a LayerNorm over the d features of each atom.

Head (`GATGNNHead`, the composition attention "GI-M1" and GATGNN's MLP). For crystal c
with composition embedding u_c (the crystal context's composition part, a linear map of
the 103 element fractions; GATGNN concatenates the fractions themselves, and
Linear([h; u]) with u = W_u fractions + b_u spans the same maps when u is at least 32
wide) and final node states h_i of its atoms:

  s_i = w_2 . softplus(W_1 [h_i; u_c] + b_1) + b_2                 (hidden width 32)
  w_i = softmax of s over the atoms of c
  y_c = sum_i w_i h_i                                        (weighted sum pooling)
  out = W_o softplus(W_b softplus(W_a y_c + b_a) + b_b) + b_o      (two hidden layers
                                                                 of width d, l_y outputs)
"""
from __future__ import annotations

import functools
from typing import Any, Callable, ClassVar, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
import jraph
import ml_collections

from xtal2dos_jax.models.attention import segment_softmax
from xtal2dos_jax.models.graph_layers import node_graph_index, StackedGraphEncoder
from xtal2dos_jax.models.precision import DotGeneral, precision_kwargs, same_precision
from xtal2dos_jax.models.transformer_decoder import AtomStates, SequenceDecoder
Dtype = Any

# Width of the composition-attention hidden layer (GATGNN's `node_layer1`).
COMPOSITION_ATTENTION_HIDDEN = 32
# Negative slope of the edge embedding's leaky ReLU (GATGNN's `neg_slope`).
EDGE_NEGATIVE_SLOPE = 0.2
# Epsilon of the normalisations (torch BatchNorm's default).
NORM_EPS = 1e-5


def _glorot_rows(total_rows: int) -> nn.initializers.Initializer:
  """Glorot-uniform for a block of rows of a [total_rows, cols] matrix: the limit
  sqrt(6 / (total_rows + cols)) of the whole matrix W = [W_h; W_g]."""
  def init(key, shape, dtype=jnp.float32):
    limit = jnp.sqrt(6.0 / (total_rows + shape[-1]))
    return jax.random.uniform(key, shape, dtype, -limit, limit)
  return init


def crystal_standardize(x: jax.Array, edge_graph: jax.Array, num_graphs: int,
                        mask: jax.Array, eps: float = NORM_EPS,
                        indices_are_sorted: bool = True) -> jax.Array:
  """(x - mean) / sqrt(var + eps) per column, mean and (biased) variance over the real
  rows of each crystal: float[E, H] -> float[E, H]; masked rows give 0.

  Args:
    x: float[E, H] values (attention logits, one column per head).
    edge_graph: int32[E] crystal of each row.
    num_graphs: G, static.
    mask: bool[E] real rows.
    eps: added to the variance.
    indices_are_sorted: pass True only if `edge_graph` is non-decreasing.
  """
  x = x.astype(jnp.float32)
  w = mask.astype(jnp.float32)[:, None]
  total = functools.partial(jax.ops.segment_sum, segment_ids=edge_graph,
                            num_segments=num_graphs, indices_are_sorted=indices_are_sorted)
  count = jnp.maximum(total(w), 1.0)                                               # [G, 1]
  mean = total(x * w) / count
  centred = jnp.where(mask[:, None], x - mean[edge_graph], 0.0)
  var = total(centred * centred) / count
  return centred * lax.rsqrt(var[edge_graph] + eps)


class AGATLayer(nn.Module):
  """One augmented graph-attention layer (equations in the module docstring), without
  the LayerNorm + softplus that follow it in the encoder.

  Attributes:
    d_model: d, the width of every head and of the output.
    num_heads: H (heads are averaged, so any H >= 1).
    dropout: dropout rate on the attention weights alpha (train only; 0 in GATGNN).
    sorted_receivers: `receivers` and the edges' crystals are non-decreasing (true for
      `batching` batches).
    dtype: compute dtype (parameters stay float32).
    dot_general: the matmul of the layer (see `precision.py`).
  """
  d_model: int
  num_heads: int
  dropout: float = 0.0
  sorted_receivers: bool = True
  dtype: Dtype = jnp.float32
  dot_general: DotGeneral = lax.dot_general

  @nn.compact
  def __call__(self, h: jax.Array, g: jax.Array, senders: jax.Array, receivers: jax.Array,
               edge_mask: jax.Array, edge_graph: jax.Array, num_graphs: int, *,
               train: bool) -> jax.Array:
    """Messages of one layer.

    Args:
      h: float[N, d_in] node states.
      g: float[E, d_e] edge embeddings.
      senders: int32[E] neighbour j of each edge.
      receivers: int32[E] centre i of each edge.
      edge_mask: bool[E] real edges; masked edges carry no message, no weight and no
        share of the logit statistics.
      edge_graph: int32[E] crystal of each edge (non-decreasing when `sorted_receivers`).
      num_graphs: G, static.
      train: enables dropout.

    Returns:
      float[N, d_model] m_i (zero messages + bias for a node without real edges).
    """
    num_nodes, heads, d = h.shape[0], self.num_heads, self.d_model
    rows = h.shape[-1] + g.shape[-1]
    # W [h; g] = W_h h + W_g g: the node part once per node, gathered per edge.
    node = nn.Dense(heads * d, use_bias=False, kernel_init=_glorot_rows(rows),
                    **same_precision(self), name="W_node")(h)                  # [N, H d]
    edge = nn.Dense(heads * d, use_bias=False, kernel_init=_glorot_rows(rows),
                    **same_precision(self), name="W_edge")(g)                  # [E, H d]
    x_i = nn.softplus(node[receivers] + edge).reshape(-1, heads, d)            # [E, H, d]
    x_j = nn.softplus(node[senders] + edge).reshape(-1, heads, d)
    att = self.param("att", nn.initializers.xavier_uniform(), (heads, 2 * d), jnp.float32)
    att = att.astype(self.dtype)
    logits = nn.softplus(jnp.sum(x_i * att[:, :d], axis=-1)
                         + jnp.sum(x_j * att[:, d:], axis=-1))                 # [E, H]
    gamma = self.param("norm_scale", nn.initializers.ones, (heads,), jnp.float32)
    beta = self.param("norm_bias", nn.initializers.zeros, (heads,), jnp.float32)
    normed = crystal_standardize(logits, edge_graph, num_graphs, edge_mask,
                                 indices_are_sorted=self.sorted_receivers) * gamma + beta
    alpha = segment_softmax(nn.softplus(normed), receivers, num_nodes, mask=edge_mask,
                            indices_are_sorted=self.sorted_receivers)          # [E, H]
    alpha = nn.Dropout(self.dropout, deterministic=not train)(alpha)
    m = jax.ops.segment_sum(alpha[..., None].astype(x_j.dtype) * x_j, receivers, num_nodes,
                            indices_are_sorted=self.sorted_receivers)          # [N, H, d]
    bias = self.param("bias", nn.initializers.zeros, (d,), jnp.float32)
    return jnp.mean(m, axis=1) + bias.astype(m.dtype)


class GATGNNEncoder(StackedGraphEncoder):
  """GATGNN's graph part: embeddings + `num_layers` x (AGAT -> LayerNorm -> softplus).

  encoder(graph, train=...) -> float[N, d_model]; padding nodes get finite states that
  no real node depends on. The fields are `StackedGraphEncoder`'s (`num_heads`: AGAT
  heads, averaged; `dropout`: on the attention weights, train only); the edge
  embedding is followed by a leaky ReLU, and every layer, the last included, by
  LayerNorm (`norm_{i}`) and softplus.
  """
  layer_cls: ClassVar[Callable[..., nn.Module]] = AGATLayer

  def embed(self, graph: jraph.GraphsTuple) -> tuple[jax.Array, jax.Array]:
    """h = `AtomEmbedding`(Z), g = leaky_relu_0.2(`EdgeEmbedding`(d_ij))."""
    h, g = super().embed(graph)
    return h, nn.leaky_relu(g, EDGE_NEGATIVE_SLOPE)

  def layer(self, i: int, h: jax.Array, g: jax.Array, graph: jraph.GraphsTuple,
            mask: jax.Array, *, train: bool) -> tuple[jax.Array, jax.Array]:
    """h <- softplus(LayerNorm(AGAT_i(h))); g unchanged. Each layer derives the edges'
    crystal index int32[E] from n_edge (identical ops, cheap next to the layer)."""
    edge_graph = node_graph_index(graph.n_edge, graph.senders.shape[0])
    m = self.layer_cls(self.d_model, self.num_heads, self.dropout,
                       sorted_receivers=self.sorted_receivers, **same_precision(self),
                       name=f"layer_{i}")(h, g, graph.senders, graph.receivers, mask,
                                          edge_graph, graph.n_edge.shape[0], train=train)
    h = nn.softplus(nn.LayerNorm(epsilon=NORM_EPS, dtype=self.dtype, name=f"norm_{i}")(m))
    return h, g


def composition_attention_pool(states: jax.Array, mask: jax.Array, scores: jax.Array
                               ) -> jax.Array:
  """sum_a softmax_a(scores) states over each crystal's real atoms.

  Args:
    states: float[G, A, d] atom states.
    mask: bool[G, A] real atoms.
    scores: float[G, A] attention logits.

  Returns:
    float[G, d]; zeros for a crystal without real atoms.
  """
  s = jnp.where(mask, scores.astype(jnp.float32), -1e30)
  w = jnp.where(mask, jax.nn.softmax(s, axis=-1), 0.0)
  return jnp.sum(w[..., None].astype(states.dtype) * states, axis=1)


class GATGNNHead(SequenceDecoder):
  """Composition-attention pooling of the atom states, then GATGNN's MLP to l_y outputs
  (equations in the module docstring; non-autoregressive, ignores y_teacher).

  The context is the `CrystalContext` [mean of node states (d); composition embedding];
  its columns after the first d (d = the atom-state width) are u_c.

  Attributes:
    l_y: number of output positions.
    hidden: width of the MLP's hidden layers (GATGNN: the node-state width).
    num_layers: hidden layers of the MLP (GATGNN: 2).
    attention_hidden: width of the composition-attention hidden layer (GATGNN: 32).
    dropout: dropout after each hidden layer (train only; 0 in GATGNN).
    dtype: compute dtype (parameters stay float32).
    dot_general: the matmul of the layers (see `precision.py`).
  """
  l_y: int
  hidden: int
  num_layers: int = 2
  attention_hidden: int = COMPOSITION_ATTENTION_HIDDEN
  dropout: float = 0.0
  dtype: Dtype = jnp.float32
  dot_general: DotGeneral = lax.dot_general

  @nn.compact
  def __call__(self, context: jax.Array, atoms: AtomStates, y_teacher: Optional[jax.Array], *,
               train: bool) -> jax.Array:
    """float[G, d + c] context, atoms of width d -> float[G, l_y] raw outputs."""
    del y_teacher
    states = atoms.dense()                                                     # [G, A, d]
    d = states.shape[-1]
    if context.shape[-1] <= d:
      raise ValueError(f"context width {context.shape[-1]} has no composition part after "
                       f"the {d} pooled node-state columns")
    u = context[:, d:].astype(states.dtype)                                    # [G, c]
    u = jnp.broadcast_to(u[:, None], states.shape[:2] + u.shape[-1:])
    hidden = nn.softplus(nn.Dense(self.attention_hidden, **same_precision(self),
                                  name="attention_hidden")(jnp.concatenate([states, u], -1)))
    scores = nn.Dense(1, **same_precision(self), name="attention_out")(hidden)[..., 0]
    y = composition_attention_pool(states, atoms.mask, scores)                 # [G, d]
    for i in range(self.num_layers):
      y = nn.softplus(nn.Dense(self.hidden, **same_precision(self), name=f"hidden_{i}")(y))
      y = nn.Dropout(self.dropout, deterministic=not train)(y)
    return nn.Dense(self.l_y, **same_precision(self), name="out")(y)


def gatgnn_encoder(config: ml_collections.ConfigDict) -> nn.Module:
  """`GATGNNEncoder`: config.model.{d_model, num_heads, encoder_layers, encoder_dropout}
  (dropout on the attention weights), the Gaussian expansion of config.data."""
  m, d = config.model, config.data
  return GATGNNEncoder(d_model=m.d_model, num_heads=m.num_heads, num_layers=m.encoder_layers,
                       dropout=m.encoder_dropout, radius=d.radius, gaussian_step=d.gaussian_step,
                       atom_features=m.atom_features, **precision_kwargs(config))


def gatgnn_head(config: ml_collections.ConfigDict) -> nn.Module:
  """`GATGNNHead`: config.model.decoder_layers hidden layers of width d_model,
  config.model.decoder_dropout after each."""
  m = config.model
  return GATGNNHead(l_y=config.data.l_y, hidden=m.d_model, num_layers=m.decoder_layers,
                    dropout=m.decoder_dropout, **precision_kwargs(config))
