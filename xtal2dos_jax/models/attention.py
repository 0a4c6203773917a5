"""Attention math shared by the encoders and decoders.

Two kinds of softmax attention appear in the model:

- over a graph's edges (UniMP, GAT): the logits of the edges entering one node form a
  segment of a flat edge array, normalised with `segment_softmax`;
- over dense, padded axes (decoder self-attention over output positions, source
  attention over a crystal's atoms): `masked_softmax` inside `MultiHeadAttention`.

Both softmaxes are numerically stable (the per-row maximum is subtracted), compute in
float32 whatever the input dtype, give exactly zero weight to masked entries (so masked
entries have exactly zero influence, in value and gradient), and return all-zero
weights, never NaN, for a row with no unmasked entry (an atom with no edges, a padding
crystal with no atoms).
"""
from __future__ import annotations

import functools
import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from xtal2dos_jax.models.precision import DotGeneral, same_precision

Dtype = Any


def _expand_mask(mask: jax.Array, ndim: int) -> jax.Array:
  """bool[E] -> bool[E, 1, ..., 1] with `ndim` axes in total."""
  return mask.reshape(mask.shape + (1,) * (ndim - mask.ndim))


def segment_softmax(logits: jax.Array, segment_ids: jax.Array, num_segments: int,
                    mask: Optional[jax.Array] = None,
                    indices_are_sorted: bool = False) -> jax.Array:
  """Softmax over the entries of `logits` that share a segment id.

  out[e] = exp(logits[e]) / sum_{e' : segment_ids[e'] == segment_ids[e]} exp(logits[e']),
  computed with the segment maximum subtracted, in float32.

  Args:
    logits: float[E, ...] (e.g. [E, H] one logit per edge and head).
    segment_ids: int[E] in [0, num_segments) (e.g. the receiving node of each edge).
    num_segments: static number of segments (e.g. N nodes).
    mask: optional bool[E]; False entries get weight exactly 0 and do not change the
      weights of the other entries of their segment (e.g. padding edges).
    indices_are_sorted: pass True only if `segment_ids` is non-decreasing.

  Returns:
    float[E, ...] weights in the dtype of `logits`; the unmasked entries of each segment
    sum to 1, a segment with no unmasked entry has all-zero weights.
  """
  x = logits.astype(jnp.float32)
  if mask is None:
    mask = jnp.ones(x.shape[:1], bool)
  m = _expand_mask(mask, x.ndim)
  seg_max = jax.ops.segment_max(jnp.where(m, x, -jnp.inf), segment_ids, num_segments,
                                indices_are_sorted=indices_are_sorted)
  # Empty segments have max -inf; any finite shift works there (softmax is shift-invariant,
  # so the shift carries no gradient either).
  seg_max = jax.lax.stop_gradient(jnp.where(jnp.isfinite(seg_max), seg_max, 0.0))
  # The inner `where` keeps masked entries out of exp (no inf/NaN in value or gradient).
  unnormalised = jnp.where(m, jnp.exp(jnp.where(m, x - seg_max[segment_ids], 0.0)), 0.0)
  denom = jax.ops.segment_sum(unnormalised, segment_ids, num_segments,
                              indices_are_sorted=indices_are_sorted)[segment_ids]
  return (unnormalised / jnp.where(denom > 0, denom, 1.0)).astype(logits.dtype)


def masked_softmax(logits: jax.Array, mask: Optional[jax.Array], axis: int = -1) -> jax.Array:
  """Softmax along `axis` over the entries where `mask` is True, in float32.

  Args:
    logits: float[...].
    mask: bool broadcastable to `logits.shape`, or None (no masking).
    axis: the normalised axis.

  Returns:
    float32 weights of `logits.shape`; masked entries are exactly 0 and a slice with no
    unmasked entry is all zeros (not NaN, not uniform).
  """
  x = logits.astype(jnp.float32)
  if mask is None:
    return jax.nn.softmax(x, axis=axis)
  mask = jnp.broadcast_to(mask, x.shape)
  row_max = jnp.max(jnp.where(mask, x, -jnp.inf), axis=axis, keepdims=True)
  row_max = jax.lax.stop_gradient(jnp.where(jnp.isfinite(row_max), row_max, 0.0))
  unnormalised = jnp.where(mask, jnp.exp(jnp.where(mask, x - row_max, 0.0)), 0.0)
  denom = jnp.sum(unnormalised, axis=axis, keepdims=True)
  return unnormalised / jnp.where(denom > 0, denom, 1.0)


def causal_mask(length: int) -> jax.Array:
  """bool[length, length]: query position t may attend to key positions s <= t."""
  return jnp.tril(jnp.ones((length, length), bool))


def key_padding_mask(key_mask: jax.Array, query_length: int) -> jax.Array:
  """bool[..., K] key validity -> bool[..., query_length, K] attention mask."""
  return jnp.broadcast_to(key_mask[..., None, :],
                          key_mask.shape[:-1] + (query_length, key_mask.shape[-1]))


class MultiHeadAttention(nn.Module):
  """Multi-head scaled dot-product attention with a boolean mask (paper Eq. 8-9).

  softmax(Q K^T / sqrt(d_h)) V per head, heads concatenated and projected back to
  `d_model`. Masked keys get weight exactly 0 (see `masked_softmax`); a query with no
  valid key returns the output projection's bias only (finite).

  Attributes:
    d_model: width of the queries/keys/values (all heads together) and of the output.
    num_heads: H; must divide d_model.
    dropout: dropout rate on the attention weights (train only).
    dtype: compute dtype (parameters stay float32).
    dot_general: the matmul of the layers (see `precision.py`).
  """
  d_model: int
  num_heads: int
  dropout: float = 0.0
  dtype: Dtype = jnp.float32
  dot_general: DotGeneral = lax.dot_general

  @nn.compact
  def __call__(self, inputs_q: jax.Array, inputs_kv: jax.Array, mask: Optional[jax.Array],
               *, train: bool, kv_index: Optional[jax.Array] = None) -> jax.Array:
    """Attends from queries to keys/values.

    Args:
      inputs_q: float[..., Q, d_q].
      inputs_kv: float[..., K, d_kv]; with `kv_index`, float[M, d_kv] rows to pick from.
      mask: bool broadcastable to [..., Q, K] (True = may attend), or None.
      train: enables dropout.
      kv_index: optional int[..., K]: key/value k of batch element ... is row
        `kv_index[..., k]` of `inputs_kv`. The rows are projected before they are gathered,
        so each is projected once however many times (or whether) it is picked; the result
        equals attending to `inputs_kv[kv_index]`.

    Returns:
      float[..., Q, d_model] in `dtype`.
    """
    if self.d_model % self.num_heads:
      raise ValueError(f"d_model={self.d_model} is not divisible by num_heads={self.num_heads}")
    head_dim = self.d_model // self.num_heads
    proj = lambda name: nn.DenseGeneral((self.num_heads, head_dim), name=name,
                                        **same_precision(self))
    # Heads lead ([H, ..., Q or K, d_h]): the attention products batch over (H, ...), and
    # gathered keys/values are contiguous d_h-rows of [H, M, d_h].
    heads_first = lambda x: jnp.moveaxis(x, -2, 0)
    q = heads_first(proj("query")(inputs_q))             # [H, ..., Q, d_h]
    k = heads_first(proj("key")(inputs_kv))              # [H, ..., K, d_h] (or [H, M, d_h])
    v = heads_first(proj("value")(inputs_kv))
    if kv_index is not None:
      k, v = k[:, kv_index], v[:, kv_index]              # [H, ..., K, d_h]
    einsum = functools.partial(jnp.einsum, _dot_general=self.dot_general)
    logits = einsum("h...qd,h...kd->h...qk", q, k) / math.sqrt(head_dim)
    if mask is not None:
      mask = mask[None]                                  # head axis: [1, ..., Q, K]
    weights = masked_softmax(logits, mask).astype(self.dtype)
    weights = nn.Dropout(self.dropout, deterministic=not train)(weights)
    out = einsum("h...qk,h...kd->...qhd", weights, v)    # [..., Q, H, d_h]
    return nn.DenseGeneral(self.d_model, axis=(-2, -1), **same_precision(self), name="out")(out)
