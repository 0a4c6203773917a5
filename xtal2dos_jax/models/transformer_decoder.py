"""The Xtal2DoS transformer decoder (paper Sec. 2.3) and the interface of every decoder.

Every sequence decoder (crystal context + atom states -> l_y DoS values) subclasses
`SequenceDecoder` and has the same interface:

  decoder(context, atoms, y_teacher, train=...) -> float[G, l_y]

  context: float[G, c] crystal context (mean node state + composition embedding).
  atoms: `AtomStates`, the crystals' atom states (node states + per-crystal index and mask;
    `atoms.dense()` gives the padded float[G, A, d] array).
  y_teacher: float[G, l_y] scaled targets for teacher forcing in autoregressive
    decoders, or None at inference; non-autoregressive decoders ignore it.

and returns raw outputs, before the output activation applied by `Xtal2DoS`. A decoder
whose class sets `uses_crystal_system = True` also gets `crystal_system=` int32[G]
(0..6, triclinic .. cubic; see `symmetry.py`).
"""
from __future__ import annotations

from typing import Any, ClassVar, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from xtal2dos_jax.models.attention import causal_mask, key_padding_mask, MultiHeadAttention
from xtal2dos_jax.models.precision import DotGeneral, same_precision
Dtype = Any

POSITION_EMBEDDINGS = ("onehot", "learned")


class AtomStates(NamedTuple):
  """The atoms of each crystal, as rows of the flat node-state array.

  Keeping the node states flat lets attention project each real atom once ([N, d]
  rows) instead of every padded slot of [G, A, d] (`MultiHeadAttention(kv_index=)`).

  states: float[N, d] node states of the batch graph.
  index: int32[G, A] row of `states` holding atom a of crystal g (any valid row where
    `mask` is False, e.g. the padding node).
  mask: bool[G, A] real atoms; padding crystals have an all-False row.
  """
  states: jax.Array
  index: jax.Array
  mask: jax.Array

  def dense(self) -> jax.Array:
    """float[G, A, d] per-crystal atom states, zeros where masked."""
    return self.states[self.index] * self.mask[..., None].astype(self.states.dtype)

  @classmethod
  def from_dense(cls, atoms: jax.Array, mask: jax.Array) -> "AtomStates":
    """`AtomStates` holding padded per-crystal states float[G, A, d] (row g * A + a)."""
    num_graphs, max_atoms, width = atoms.shape
    index = jnp.arange(num_graphs * max_atoms, dtype=jnp.int32).reshape(num_graphs, max_atoms)
    return cls(atoms.reshape(num_graphs * max_atoms, width), index, mask)


class SequenceDecoder(nn.Module):
  """Base class of the decoders (interface in the module docstring).

  Attributes:
    uses_crystal_system: class constant; True makes `Xtal2DoS` pass
      `crystal_system=batch.crystal_system` to the decoder.
  """
  uses_crystal_system: ClassVar[bool] = False


class FeedForward(nn.Module):
  """Position-wise feed-forward: Dense(ff_dim) -> relu -> dropout -> Dense(d_model)."""
  d_model: int
  ff_dim: int
  dropout: float = 0.0
  dtype: Dtype = jnp.float32
  dot_general: DotGeneral = lax.dot_general

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    x = nn.relu(nn.Dense(self.ff_dim, **same_precision(self))(x))
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.d_model, **same_precision(self))(x)


class TransformerDecoderLayer(nn.Module):
  """Self-attention over positions, source attention to atoms, feed-forward.

  Each sublayer is x + dropout(sublayer(LayerNorm(x))) (pre-norm residual, as in the
  public Xtal2DoS code).

  Attributes:
    d_model, num_heads, ff_dim: sizes.
    dropout: rate for sublayer outputs and attention weights (train only).
    source_attention: include the source-attention sublayer (False: the ablation in
      which positions see the crystal only through the context in z).
    dtype: compute dtype (parameters stay float32).
    dot_general: the matmul of the layers (see `precision.py`).
  """
  d_model: int
  num_heads: int
  ff_dim: int
  dropout: float = 0.0
  source_attention: bool = True
  dtype: Dtype = jnp.float32
  dot_general: DotGeneral = lax.dot_general

  @nn.compact
  def __call__(self, x: jax.Array, atoms: AtomStates, self_mask: Optional[jax.Array],
               source_mask: jax.Array, *, train: bool) -> jax.Array:
    """Updates position states.

    Args:
      x: float[G, L, d_model] position states.
      atoms: the crystals' atom states (keys/values of the source attention).
      self_mask: bool[L, L] (True = may attend) or None for unmasked self-attention.
      source_mask: bool[G, L, A] valid atoms for each position.
      train: enables dropout.

    Returns:
      float[G, L, d_model].
    """
    attention = lambda name: MultiHeadAttention(self.d_model, self.num_heads, self.dropout,
                                                **same_precision(self), name=name)
    drop = lambda y: nn.Dropout(self.dropout, deterministic=not train)(y)
    norm = lambda name: nn.LayerNorm(dtype=self.dtype, name=name)

    y = norm("self_attention_norm")(x)
    x = x + drop(attention("self_attention")(y, y, self_mask, train=train))
    if self.source_attention:
      y = norm("source_attention_norm")(x)
      x = x + drop(attention("source_attention")(y, atoms.states, source_mask, train=train,
                                                 kv_index=atoms.index))
    y = norm("feed_forward_norm")(x)
    return x + drop(FeedForward(self.d_model, self.ff_dim, self.dropout, **same_precision(self),
                                name="feed_forward")(y, train=train))


class CausalTransformerDecoder(SequenceDecoder):
  """The Xtal2DoS transformer decoder over the l_y output positions.

  z_t = leaky_relu(Dense([s_t; context])) with s_t the position embedding (one-hot of
  length l_y as in the paper, or learned); then `num_layers` `TransformerDecoderLayer`s
  with causal self-attention (position t attends to positions <= t; `causal=False`
  reproduces the public code's unmasked decoder), a final LayerNorm and Dense(1).
  `source_attention=False` drops the attention to atoms (an ablation).

  `embed_inputs` and `decode_from_embeddings` split `__call__` in two so tests (and
  analyses) can differentiate with respect to the position states z.

  Attributes:
    l_y: number of output positions.
    d_model, num_heads, num_layers, ff_dim: sizes.
    dropout: dropout rate (train only).
    causal: mask self-attention to positions <= t.
    source_attention: attend from positions to the crystal's atoms in every layer.
    position_embedding: 'onehot' or 'learned'.
    dtype: compute dtype (parameters stay float32).
    dot_general: the matmul of the layers (see `precision.py`).
  """
  l_y: int
  d_model: int
  num_heads: int
  num_layers: int
  ff_dim: int
  dropout: float = 0.0
  causal: bool = True
  source_attention: bool = True
  position_embedding: str = "onehot"
  dtype: Dtype = jnp.float32
  dot_general: DotGeneral = lax.dot_general

  def setup(self):
    if self.position_embedding == "learned":
      self.position_table = nn.Embed(self.l_y, self.d_model)
    # Dense([s_t; context]) split into its two halves: the position half is computed
    # once for all crystals and the context half once per crystal, not l_y times.
    self.position_projection = nn.Dense(self.d_model, use_bias=False, **same_precision(self))
    self.context_projection = nn.Dense(self.d_model, **same_precision(self))
    self.input_dropout = nn.Dropout(self.dropout)
    self.layers = [
        TransformerDecoderLayer(self.d_model, self.num_heads, self.ff_dim, self.dropout,
                                self.source_attention, **same_precision(self))
        for _ in range(self.num_layers)
    ]
    self.final_norm = nn.LayerNorm(dtype=self.dtype)
    self.head = nn.Dense(1, **same_precision(self))

  def positions(self) -> jax.Array:
    """float[l_y, p] position embeddings s_t (p = l_y for one-hot, d_model if learned)."""
    if self.position_embedding == "learned":
      return self.position_table(jnp.arange(self.l_y))
    return jnp.eye(self.l_y, dtype=jnp.float32)

  def embed_inputs(self, context: jax.Array, *, train: bool) -> jax.Array:
    """float[G, c] context -> float[G, l_y, d_model] initial position states z."""
    z = self.position_projection(self.positions())[None] + self.context_projection(context)[:, None]
    z = nn.leaky_relu(z)
    return self.input_dropout(z, deterministic=not train)

  def decode_from_embeddings(self, z: jax.Array, atoms: AtomStates, *, train: bool) -> jax.Array:
    """float[G, L, d_model] position states -> float[G, L] raw outputs.

    With `causal=True`, output t depends on z[:, :t + 1] only.
    """
    self_mask = causal_mask(z.shape[1]) if self.causal else None
    source_mask = key_padding_mask(atoms.mask, z.shape[1])
    x = z
    for layer in self.layers:
      x = layer(x, atoms, self_mask, source_mask, train=train)
    return self.head(self.final_norm(x))[..., 0]

  def __call__(self, context: jax.Array, atoms: AtomStates, y_teacher: Optional[jax.Array], *,
               train: bool) -> jax.Array:
    """float[G, l_y] raw outputs; `y_teacher` is ignored (non-autoregressive)."""
    del y_teacher
    z = self.embed_inputs(context, train=train)
    return self.decode_from_embeddings(z, atoms, train=train)
