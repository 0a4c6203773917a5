"""DOSTransformer-style decoder (Lee et al., NeurIPS 2023), a baseline.

Energies, not positions of an autoregressive sequence, are the tokens: each of the l_y
DoS points has a learned energy embedding e_t, shared by all crystals. Then

  1. energy -> atom cross-attention (`num_layers` blocks): the energy tokens gather
     information from the crystal's atoms (padding atoms masked; the atom states pass
     through the block's layer norm first, as the public code's keys and values do, so
     the attention does not saturate on an encoder with large states);
  2. fuse with the crystal context: x_t = leaky_relu(W [x_t; context]);
  3. self-attention over [p; x_1..x_l_y] (`num_layers` blocks), p the learned prompt of
     the crystal's system (7 prompts: triclinic .. cubic, `symmetry.CRYSTAL_SYSTEMS`);
     the prompt token is dropped afterwards;
  4. a second energy -> atom cross-attention (`num_layers` blocks);
  5. LayerNorm -> Dense(1): one raw value per energy.

Non-autoregressive: every energy sees every other one. Blocks are pre-norm residual
(x + attn(LN(x)); x + FF(LN(x))) like the Xtal2DoS decoder.

The prompt-free output runs stages 3-5 with the same weights on x_1..x_l_y alone (no
prompt token). `prompt` chooses what the decoder returns: "system" the prompted output,
"none" the prompt-free one (the crystal systems are then unused and no prompt table
exists). With prompt "system" and `prompt_free_weight` w > 0, training also sows, per
crystal into `train.AUX_LOSS`,

  prompt_free_dos: w * DoS loss (config.train.loss) of the prompt-free output,

so the two outputs are trained together, as the public code does (its loss is
RMSE(prompt-free) + beta RMSE(prompted), beta = 1 by default: w = 1 / beta); evaluation
and prediction use the prompted output, as its test function does.

Differences from the public PyTorch code: it concatenates a (d/2)-wide prompt to every
energy token before a second fusion layer (prompted and prompt-free outputs have
separate fusion layers and share the rest); here the prompt is one extra token of the
self-attention, and the fusion layer is shared. Its attention has no query / key /
value / output projections and one head; here every attention has them and
`num_heads` heads. Its loss is the per-crystal RMSE; here config.train.loss. A missing
`crystal_system` (None) selects prompt 0 (triclinic), the value `batching` fills in
when the data have no crystal systems.
"""
from __future__ import annotations

from typing import Any, ClassVar, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
import ml_collections

from xtal2dos_jax.input_pipeline.labels import output_activation_for
from xtal2dos_jax.input_pipeline.symmetry import NUM_CRYSTAL_SYSTEMS
from xtal2dos_jax.models.attention import key_padding_mask, MultiHeadAttention
from xtal2dos_jax.models.precision import DotGeneral, precision_kwargs, same_precision
from xtal2dos_jax.models.transformer_decoder import AtomStates, FeedForward, SequenceDecoder
from xtal2dos_jax.objectives import losses
Dtype = Any


class AttentionBlock(nn.Module):
  """Pre-norm residual attention + feed-forward block.

  x <- x + dropout(attention(LN(x), M)); x <- x + dropout(FF(LN(x))), where the memory M
  is LN(x) itself (self-attention) when `memory` is None, else the atom states, passed
  through the same LN first when `norm_memory` (as the public code's MulT layers do:
  keys and values share the query's layer norm).

  Attributes:
    d_model, num_heads, ff_dim: sizes.
    dropout: rate for sublayer outputs and attention weights (train only).
    norm_memory: layer-normalise the atom states (with the query's LN) before attending.
    dtype: compute dtype (parameters stay float32).
    dot_general: the matmul of the layers (see `precision.py`).
  """
  d_model: int
  num_heads: int
  ff_dim: int
  dropout: float = 0.0
  norm_memory: bool = False
  dtype: Dtype = jnp.float32
  dot_general: DotGeneral = lax.dot_general

  @nn.compact
  def __call__(self, x: jax.Array, memory: Optional[AtomStates], mask: Optional[jax.Array], *,
               train: bool) -> jax.Array:
    """float[G, L, d_model] tokens, the atoms as memory (or None), bool[G, L, K] mask
    (True = may attend; or None) -> float[G, L, d_model]."""
    drop = lambda y: nn.Dropout(self.dropout, deterministic=not train)(y)
    norm = nn.LayerNorm(dtype=self.dtype, name="attention_norm")
    y = norm(x)
    attention = MultiHeadAttention(self.d_model, self.num_heads, self.dropout,
                                   **same_precision(self), name="attention")
    if memory is None:
      x = x + drop(attention(y, y, mask, train=train))
    else:
      states = norm(memory.states) if self.norm_memory else memory.states
      x = x + drop(attention(y, states, mask, train=train, kv_index=memory.index))
    y = nn.LayerNorm(dtype=self.dtype, name="feed_forward_norm")(x)
    return x + drop(FeedForward(self.d_model, self.ff_dim, self.dropout, **same_precision(self),
                                name="feed_forward")(y, train=train))


# Values of config.model.dostransformer_prompt: the output the decoder returns.
PROMPTS = ("system", "none")
# Name of the per-crystal term sown into `train.AUX_LOSS` (train imports the models, so
# the collection's name is repeated here rather than imported).
AUX_TERM = "prompt_free_dos"
AUX_LOSS = "aux_loss"


class DOSTransformerDecoder(SequenceDecoder):
  """Energy embeddings x atoms cross-attention with crystal-system prompts.

  Attributes:
    l_y: number of energies (output positions).
    d_model, num_heads, ff_dim: sizes.
    num_layers: blocks in each of the three stages (cross, self, cross).
    dropout: dropout rate (train only).
    prompt: "system" (return the prompted output) or "none" (the prompt-free one).
    prompt_free_weight: w >= 0, weight of the prompt-free output's DoS loss sown in
      training (prompt "system" only; 0 = not computed).
    loss: the DoS loss of that term (a `losses` name, config.train.loss).
    output_activation: the head of that loss ('softmax', 'softplus', 'identity').
    norm_memory: the cross-attention blocks layer-normalise the atom states
      (`AttentionBlock.norm_memory`).
    dtype: compute dtype (parameters stay float32).
    dot_general: the matmul of the layers (see `precision.py`).
  """
  l_y: int
  d_model: int
  num_heads: int
  num_layers: int
  ff_dim: int
  dropout: float = 0.0
  prompt: str = "system"
  prompt_free_weight: float = 0.0
  loss: str = "kl"
  output_activation: str = "softmax"
  norm_memory: bool = True
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
      y_teacher: float[G, l_y] labels in training (read only by the prompt-free loss
        term), else None.
      train: enables dropout and the sown loss term.
      crystal_system: int[G] in 0..6 (triclinic .. cubic, `symmetry.CRYSTAL_SYSTEMS`), or
        None for 0. Not checked here (a jitted function cannot raise):
        `batching.assemble` validates every batch's ids on the host. Unused with prompt
        "none".

    Returns:
      float[G, l_y] raw outputs.
    """
    num_graphs = context.shape[0]
    block = lambda name: AttentionBlock(self.d_model, self.num_heads, self.ff_dim, self.dropout,
                                        norm_memory=self.norm_memory, **same_precision(self),
                                        name=name)
    energies = nn.Embed(self.l_y, self.d_model, name="energy_embedding")(jnp.arange(self.l_y))
    x = jnp.broadcast_to(energies[None], (num_graphs,) + energies.shape).astype(self.dtype)
    source_mask = key_padding_mask(atoms.mask, self.l_y)                      # [G, l_y, A]

    for i in range(self.num_layers):
      x = block(f"energy_atom_{i}")(x, atoms, source_mask, train=train)
    x = jnp.concatenate([x, jnp.broadcast_to(context[:, None].astype(x.dtype),
                                             (num_graphs, self.l_y, context.shape[-1]))], -1)
    x = nn.leaky_relu(nn.Dense(self.d_model, **same_precision(self), name="fuse_context")(x))

    self_blocks = [block(f"self_{i}") for i in range(self.num_layers)]
    source_blocks = [block(f"source_{i}") for i in range(self.num_layers)]
    final_norm = nn.LayerNorm(dtype=self.dtype, name="final_norm")
    head = nn.Dense(1, **same_precision(self), name="head")

    def stages_3_to_5(x: jax.Array, prompt: Optional[jax.Array]) -> jax.Array:
      """float[G, l_y, d] fused tokens (and float[G, 1, d] prompt or None) -> raw [G, l_y]."""
      if prompt is not None:
        x = jnp.concatenate([prompt, x], axis=1)
      for layer in self_blocks:
        x = layer(x, None, None, train=train)
      if prompt is not None:
        x = x[:, 1:]
      for layer in source_blocks:
        x = layer(x, atoms, source_mask, train=train)
      return head(final_norm(x))[..., 0]

    if self.prompt == "none":
      return stages_3_to_5(x, None)
    if crystal_system is None:
      crystal_system = jnp.zeros((num_graphs,), jnp.int32)
    crystal_system = jnp.asarray(crystal_system, jnp.int32)
    prompt = nn.Embed(NUM_CRYSTAL_SYSTEMS, self.d_model, name="crystal_system_prompt")(
        crystal_system)[:, None].astype(x.dtype)                              # [G, 1, d]
    out = stages_3_to_5(x, prompt)
    if train and self.prompt_free_weight > 0.0:
      if y_teacher is None:
        raise ValueError("the prompt-free loss term needs the labels (y_teacher) in training")
      dos_loss = losses.loss_on_raw_outputs(self.loss, self.output_activation)
      prompt_free = stages_3_to_5(x, None).astype(jnp.float32)
      self.sow(AUX_LOSS, AUX_TERM, (self.prompt_free_weight * dos_loss(
          jnp.asarray(y_teacher, jnp.float32), prompt_free)).astype(jnp.float32))
    return out


def dostransformer_decoder(config: ml_collections.ConfigDict) -> nn.Module:
  """`DOSTransformerDecoder` with config.model.decoder_layers blocks per stage, the output
  config.model.dostransformer_prompt and the prompt-free loss weight
  config.model.dostransformer_prompt_free_weight (config.train.loss on the head of
  config.data.scaling), the atom states layer-normalised in cross-attention when
  config.model.dostransformer_memory_norm."""
  m = config.model
  prompt, weight = m.dostransformer_prompt, float(m.dostransformer_prompt_free_weight)
  return DOSTransformerDecoder(l_y=config.data.l_y, d_model=m.d_model, num_heads=m.num_heads,
                               num_layers=m.decoder_layers, ff_dim=m.ff_dim,
                               dropout=m.decoder_dropout, prompt=prompt,
                               prompt_free_weight=weight, loss=config.train.loss,
                               output_activation=output_activation_for(config.data.scaling),
                               norm_memory=bool(m.dostransformer_memory_norm),
                               **precision_kwargs(config))
