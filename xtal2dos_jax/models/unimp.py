"""The UniMP encoder of Xtal2DoS (paper Sec. 2.2, Eqs. 3-5).

`UniMPLayer` is one graph-transformer layer (multi-head attention over each atom's
neighbours with edge features in keys and values, a gated residual); `UniMPEncoder`
stacks them on the shared atom/edge embeddings of `graph_layers`.
"""
from __future__ import annotations

import math
from typing import Any, Callable, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from xtal2dos_jax.models.attention import segment_softmax
from xtal2dos_jax.models.graph_layers import StackedGraphEncoder
from xtal2dos_jax.models.precision import DotGeneral, same_precision
Dtype = Any


class UniMPLayer(nn.Module):
  """One UniMP graph-transformer layer with edge features (paper Eq. 2, 4-6).

  Per head h (d_h = d_model / H), for each edge j -> i:
    alpha_ij = softmax over the incoming edges of i of q_i . (k_j + g_ij) / sqrt(d_h),
    m_i = sum_j alpha_ij (v_j + g_ij);
  heads are concatenated, then the gated residual
    r_i = W_r h_i + b_r,  beta_i = sigmoid(w . [m_i; r_i; m_i - r_i]),
    h'_i = act(LayerNorm((1 - beta_i) m_i + beta_i r_i))
  (no LayerNorm / activation when `last`), followed by dropout in training.

  Attributes:
    d_model: width of node states and edge embeddings.
    num_heads: H; must divide d_model.
    dropout: dropout rate on the layer output (train only).
    last: skip LayerNorm and activation (the encoder's final layer).
    activation: the non-linearity sigma.
    sorted_receivers: `receivers` is non-decreasing (true for `batching` batches);
      enables the sorted-segment fast path.
    dtype: compute dtype (parameters stay float32).
    dot_general: the matmul of the layers (see `precision.py`).
  """
  d_model: int
  num_heads: int
  dropout: float = 0.0
  last: bool = False
  activation: Callable[[jax.Array], jax.Array] = nn.leaky_relu
  sorted_receivers: bool = True
  dtype: Dtype = jnp.float32
  dot_general: DotGeneral = lax.dot_general

  @nn.compact
  def __call__(self, h: jax.Array, g: jax.Array, senders: jax.Array, receivers: jax.Array,
               edge_mask: jax.Array, *, train: bool) -> jax.Array:
    """Updates node states.

    Args:
      h: float[N, d_in] node states.
      g: float[E, d_model] edge embeddings g_ij (shared by all layers).
      senders: int32[E] neighbour j of each edge.
      receivers: int32[E] centre i of each edge.
      edge_mask: bool[E] real edges; masked edges carry no message.
      train: enables dropout.

    Returns:
      float[N, d_model] new node states.
    """
    if self.d_model % self.num_heads:
      raise ValueError(f"d_model={self.d_model} is not divisible by num_heads={self.num_heads}")
    num_nodes, head_dim = h.shape[0], self.d_model // self.num_heads
    heads = lambda x: x.reshape(x.shape[0], self.num_heads, head_dim)
    q = heads(nn.Dense(self.d_model, **same_precision(self), name="query")(h))      # [N, H, d_h]
    k = heads(nn.Dense(self.d_model, **same_precision(self), name="key")(h))
    v = heads(nn.Dense(self.d_model, **same_precision(self), name="value")(h))
    g = heads(g.astype(self.dtype))                                           # [E, H, d_h]

    keys = k[senders] + g                                                     # [E, H, d_h]
    logits = jnp.sum(q[receivers] * keys, axis=-1) / math.sqrt(head_dim)
    alpha = segment_softmax(logits, receivers, num_nodes, mask=edge_mask,
                            indices_are_sorted=self.sorted_receivers)          # [E, H]
    messages = alpha[..., None] * (v[senders] + g)
    m = jax.ops.segment_sum(messages, receivers, num_nodes,
                            indices_are_sorted=self.sorted_receivers)
    m = m.reshape(num_nodes, self.d_model)

    r = nn.Dense(self.d_model, **same_precision(self), name="skip")(h)
    beta = nn.sigmoid(nn.Dense(1, use_bias=False, **same_precision(self), name="gate")(
        jnp.concatenate([m, r, m - r], axis=-1)))
    out = (1.0 - beta) * m + beta * r
    if not self.last:
      out = self.activation(nn.LayerNorm(dtype=self.dtype)(out))
    return nn.Dropout(self.dropout, deterministic=not train)(out)


class UniMPEncoder(StackedGraphEncoder):
  """Xtal2DoS graph encoder: embeddings + `num_layers` `UniMPLayer`s."""
  layer_cls: ClassVar[Callable[..., nn.Module]] = UniMPLayer
