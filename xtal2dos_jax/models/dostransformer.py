"""DOSTransformer-style decoder (Lee et al., NeurIPS 2023), a baseline.

Energies, not positions of an autoregressive sequence, are the tokens: each of the l_y
DoS points has a learned energy embedding e_t, shared by all crystals. Then

  1. energy -> atom cross-attention (`num_layers` blocks): the energy tokens gather
     information from the crystal's atoms (padding atoms masked);
  2. fuse with the crystal context: x_t = leaky_relu(W [x_t; context]);
  3. self-attention over [p; x_1..x_l_y] (`num_layers` blocks), p the learned prompt of
     the crystal's system (7 prompts: triclinic .. cubic, `symmetry.CRYSTAL_SYSTEMS`);
     the prompt token is dropped afterwards;
  4. a second energy -> atom cross-attention (`num_layers` blocks);
  5. LayerNorm -> Dense(1): one raw value per energy.

Non-autoregressive: every energy sees every other one, and `y_teacher` is ignored.
Blocks are pre-norm residual (x + attn(LN(x)); x + FF(LN(x))) like the Xtal2DoS decoder.

Differences from the public PyTorch code, which concatenates a (d/2)-wide prompt to
every energy token before a linear layer and also trains a prompt-free output: here the
prompt is one extra token of the self-attention, and only the prompted output is
produced. A missing `crystal_system` (None) selects prompt 0 (triclinic), the value
`batching` fills in when the data have no crystal systems.
"""
from __future__ import annotations

from typing import Any, ClassVar, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
import ml_collections

from xtal2dos_jax.models.attention import MultiHeadAttention, key_padding_mask
from xtal2dos_jax.models.transformer_decoder import AtomStates, FeedForward, SequenceDecoder
from xtal2dos_jax.models.precision import DotGeneral, precision_kwargs, same_precision
from xtal2dos_jax.symmetry import NUM_CRYSTAL_SYSTEMS
Dtype = Any


class AttentionBlock(nn.Module):
  """Pre-norm residual attention + feed-forward block.

  x <- x + dropout(attention(LN(x), memory)); x <- x + dropout(FF(LN(x))), where the
  memory is LN(x) itself (self-attention) when `memory` is None.

  Attributes:
    d_model, num_heads, ff_dim: sizes.
    dropout: rate for sublayer outputs and attention weights (train only).
    dtype: compute dtype (parameters stay float32).
    dot_general: the matmul of the layers (see `precision.py`).
  """
  d_model: int
  num_heads: int
  ff_dim: int
  dropout: float = 0.0
  dtype: Dtype = jnp.float32
  dot_general: DotGeneral = lax.dot_general

  @nn.compact
  def __call__(self, x: jax.Array, memory: Optional[AtomStates], mask: Optional[jax.Array], *,
               train: bool) -> jax.Array:
    """float[G, L, d_model] tokens, the atoms as memory (or None), bool[G, L, K] mask
    (True = may attend; or None) -> float[G, L, d_model]."""
    drop = lambda y: nn.Dropout(self.dropout, deterministic=not train)(y)
    y = nn.LayerNorm(dtype=self.dtype, name="attention_norm")(x)
    attention = MultiHeadAttention(self.d_model, self.num_heads, self.dropout,
                                   **same_precision(self), name="attention")
    if memory is None:
      x = x + drop(attention(y, y, mask, train=train))
    else:
      x = x + drop(attention(y, memory.states, mask, train=train, kv_index=memory.index))
    y = nn.LayerNorm(dtype=self.dtype, name="feed_forward_norm")(x)
    return x + drop(FeedForward(self.d_model, self.ff_dim, self.dropout, **same_precision(self),
                                name="feed_forward")(y, train=train))


class DOSTransformerDecoder(SequenceDecoder):
  """Energy embeddings x atoms cross-attention with crystal-system prompts.

  Attributes:
    l_y: number of energies (output positions).
    d_model, num_heads, ff_dim: sizes.
    num_layers: blocks in each of the three stages (cross, self, cross).
    dropout: dropout rate (train only).
    dtype: compute dtype (parameters stay float32).
    dot_general: the matmul of the layers (see `precision.py`).
  """
  l_y: int
  d_model: int
  num_heads: int
  num_layers: int
  ff_dim: int
  dropout: float = 0.0
  dtype: Dtype = jnp.float32
  dot_general: DotGeneral = lax.dot_general

  uses_crystal_system: ClassVar[bool] = True   # `Xtal2DoS` passes batch.crystal_system

  @nn.compact
  def __call__(self, context: jax.Array, atoms: AtomStates, y_teacher: Optional[jax.Array], *,
               train: bool, crystal_system: Optional[jax.Array] = None) -> jax.Array:
    """Decodes all energies at once.

    Args:
      context: float[G, c] crystal context.
      atoms: the crystals' atom states (memory of the cross-attention blocks).
      y_teacher: ignored (non-autoregressive).
      train: enables dropout.
      crystal_system: int[G] in 0..6 (triclinic .. cubic, `symmetry.CRYSTAL_SYSTEMS`), or
        None for 0. Not checked here (a jitted function cannot raise):
        `batching.assemble` validates every batch's ids on the host.

    Returns:
      float[G, l_y] raw outputs.
    """
    del y_teacher
    num_graphs = context.shape[0]
    block = lambda name: AttentionBlock(self.d_model, self.num_heads, self.ff_dim, self.dropout,
                                        **same_precision(self), name=name)
    energies = nn.Embed(self.l_y, self.d_model, name="energy_embedding")(jnp.arange(self.l_y))
    x = jnp.broadcast_to(energies[None], (num_graphs,) + energies.shape).astype(self.dtype)
    source_mask = key_padding_mask(atoms.mask, self.l_y)                      # [G, l_y, A]

    for i in range(self.num_layers):
      x = block(f"energy_atom_{i}")(x, atoms, source_mask, train=train)
    x = jnp.concatenate([x, jnp.broadcast_to(context[:, None].astype(x.dtype),
                                             (num_graphs, self.l_y, context.shape[-1]))], -1)
    x = nn.leaky_relu(nn.Dense(self.d_model, **same_precision(self), name="fuse_context")(x))

    if crystal_system is None:
      crystal_system = jnp.zeros((num_graphs,), jnp.int32)
    crystal_system = jnp.asarray(crystal_system, jnp.int32)
    prompt = nn.Embed(NUM_CRYSTAL_SYSTEMS, self.d_model, name="crystal_system_prompt")(
        crystal_system)[:, None].astype(x.dtype)                              # [G, 1, d]
    x = jnp.concatenate([prompt, x], axis=1)
    for i in range(self.num_layers):
      x = block(f"self_{i}")(x, None, None, train=train)
    x = x[:, 1:]

    for i in range(self.num_layers):
      x = block(f"source_{i}")(x, atoms, source_mask, train=train)
    x = nn.LayerNorm(dtype=self.dtype, name="final_norm")(x)
    return nn.Dense(1, **same_precision(self), name="head")(x)[..., 0]


def dostransformer_decoder(config: ml_collections.ConfigDict) -> nn.Module:
  """`DOSTransformerDecoder` with config.model.decoder_layers blocks per stage."""
  m = config.model
  return DOSTransformerDecoder(l_y=config.data.l_y, d_model=m.d_model, num_heads=m.num_heads,
                               num_layers=m.decoder_layers, ff_dim=m.ff_dim,
                               dropout=m.decoder_dropout, **precision_kwargs(config))
