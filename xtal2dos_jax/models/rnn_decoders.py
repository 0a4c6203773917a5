"""GRU sequence decoders: the paper's RNN ablations (Sec. 2.3, Fig. 2-3, Tables 3-5).

Same interface as every decoder (see `transformer_decoder.py`):

  decoder(context, atoms, y_teacher, train=...) -> float[G, l_y] raw outputs

- `RNNDecoder`: a GRU emits one value per step. The initial state is Dense(context)
  (the crystal's global feature vector); the input at step t is the value at t - 1
  (a learned <start> value at t = 0).
- `RNNAttentionDecoder`: + Luong ("general") attention from the GRU state to the
  crystal's atoms at every step (padding atoms masked).
- `ChunkRNNAttentionDecoder`: emits `chunk_size` values per step (ceil(l_y / chunk_size)
  steps); the input at step k is chunk k - 1. When chunk_size does not divide l_y the
  last chunk is padded and the padding cut from the output ('Chunk RNN+Attn', Fig. 3).
- `ChunkRNNDecoder`: the same without the attention ('Chunk RNN', Fig. 2b).

The recurrence is one `nn.scan` (it compiles once, whatever l_y). Teacher forcing is
used exactly when `y_teacher` is given (`Xtal2DoS` passes the labels only in training);
with `y_teacher=None` the decoder runs free, feeding back its own values. `train`
only switches dropout.

The fed-back value
------------------
Training and free running must feed the same quantity: the value of the DoS at the
previous position(s) on the scaled-label scale, i.e. the true scaled y_{t-1} when
teacher forcing and the decoder's own prediction y^_{t-1} otherwise. So y^_{t-1} must
be known at step t, which depends on the output activation `Xtal2DoS` applies:

- 'softplus' / 'identity' (normalized_max / standardized labels) are element-wise:
  y^_t = softplus(raw_t) / raw_t is the final prediction at t.
- 'softmax' (normalized_sum labels) normalises over *all* positions, so the final
  value at t depends on later outputs and the scale of raw_t is arbitrary (softmax is
  shift-invariant): feeding back raw_t (or exp(raw_t)) would give the decoder, in free
  running, an input on a scale it never saw in training. These decoders therefore
  emit the distribution causally, by stick breaking (a discrete hazard model): step t
  gives a hazard h_t = sigmoid(a_t + b_t) and y^_t = h_t * prod_{s<t} (1 - h_s), the
  last position taking the remaining mass. The y^ are >= 0 and sum to 1, each known as
  soon as it is emitted, and the decoder returns raw_t = log y^_t (computed in log
  space), so the softmax applied by `Xtal2DoS` returns exactly y^. The constant offset
  b_t = -log(l_y - 1 - t) makes the initial prediction (a ~ 0) close to uniform.

The fed-back value is multiplied by l_y for 'softmax' (normalized_sum labels average
1 / l_y) so the GRU sees inputs of order one. Consequently: free running with
`y_teacher=None` returns exactly what teacher forcing returns when fed the decoder's
own (activated) predictions, and with teacher forcing output t depends only on
y_teacher[< t] (chunks: only on earlier chunks).
"""
from __future__ import annotations

import math
from typing import Any, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
import ml_collections

from xtal2dos_jax.input_pipeline.labels import output_activation_for
from xtal2dos_jax.models.attention import masked_softmax
from xtal2dos_jax.models.precision import DotGeneral, precision_kwargs, same_precision
from xtal2dos_jax.models.transformer_decoder import AtomStates, SequenceDecoder
Dtype = Any
Carry = Tuple[jax.Array, jax.Array, jax.Array]


def feedback_scale(output_activation: str, l_y: int) -> float:
  """Factor applied to fed-back values: l_y for 'softmax' (values average 1 / l_y), else 1."""
  return float(l_y) if output_activation == "softmax" else 1.0


def hazard_offset(positions: jax.Array, l_y: int) -> jax.Array:
  """float32 logit offsets b_t = -log(l_y - 1 - t) that make zero hazard logits give a
  uniform distribution over the l_y positions (positions >= l_y - 2 get 0)."""
  remaining = jnp.maximum(l_y - 1 - positions, 1).astype(jnp.float32)
  return -jnp.log(remaining)


def emit_values(logits: jax.Array, log_remaining: jax.Array, positions: jax.Array, l_y: int,
                output_activation: str) -> Tuple[jax.Array, jax.Array, jax.Array]:
  """Turns one step's head outputs into raw outputs and the values to feed back.

  Args:
    logits: float32[G, C] head outputs for positions `positions`.
    log_remaining: float32[G] log of the mass not yet emitted (softmax only).
    positions: int[C] sequence positions of this step (may run past l_y - 1 in a padded
      last chunk; those are cut by the caller).
    l_y: sequence length.
    output_activation: 'softmax', 'softplus' or 'identity' (see the module docstring).

  Returns:
    raw float32[G, C] (pre-activation outputs), values float32[G, C] (the predictions on
    the scaled-label scale, fed back at the next step) and the new log_remaining [G].
  """
  if output_activation == "softmax":
    open_ = positions < l_y - 1                      # the last position takes the rest
    a = logits + hazard_offset(positions, l_y)
    log_hazard = jnp.where(open_, jax.nn.log_sigmoid(a), 0.0)
    log_survival = jnp.where(open_, jax.nn.log_sigmoid(-a), 0.0)
    before = jnp.cumsum(log_survival, axis=-1) - log_survival   # exclusive, within the chunk
    raw = log_remaining[:, None] + before + log_hazard
    return raw, jnp.exp(raw), log_remaining + jnp.sum(log_survival, axis=-1)
  if output_activation == "softplus":
    return logits, jax.nn.softplus(logits), log_remaining
  return logits, logits, log_remaining


class LuongAttention(nn.Module):
  """Luong global attention with the 'general' score (Luong et al. 2015, Eq. 5, 8).

  score(h, a_i) = h^T W_a a_i over the crystal's real atoms, c = sum_i alpha_i a_i,
  h~ = tanh(W_c [c; h]).

  Attributes:
    d_model: width of the attentional state h~.
    dtype: compute dtype (parameters stay float32).
    dot_general: the matmul of the layers (see `precision.py`).
  """
  d_model: int
  dtype: Dtype = jnp.float32
  dot_general: DotGeneral = lax.dot_general

  @nn.compact
  def __call__(self, h: jax.Array, atoms: jax.Array, atom_mask: jax.Array) -> jax.Array:
    """float[G, d] state, float[G, A, d_a] atoms, bool[G, A] mask -> float[G, d_model].

    A crystal without real atoms gets c = 0 (finite).
    """
    query = nn.Dense(atoms.shape[-1], use_bias=False, **same_precision(self), name="score")(h)
    scores = jnp.einsum("gd,gad->ga", query, atoms.astype(query.dtype))
    alpha = masked_softmax(scores, atom_mask).astype(self.dtype)               # [G, A]
    c = jnp.einsum("ga,gad->gd", alpha, atoms.astype(self.dtype))
    return jnp.tanh(nn.Dense(self.d_model, **same_precision(self), name="combine")(
        jnp.concatenate([c, h.astype(self.dtype)], axis=-1)))


class GRUDecoderStep(nn.Module):
  """One decoding step: (h_{t-1}, input x_t) -> (h_t, raw outputs for chunk t).

  x_t is the teacher chunk when `teacher_forcing`, else the values fed back in the
  carry; both are multiplied by `feedback_scale`. The head reads the GRU state (or the
  Luong attentional state when `attention`) after dropout.

  Attributes: see `ChunkRNNAttentionDecoder`; `teacher_forcing` selects the input and
  `deterministic` disables dropout.
  """
  l_y: int
  d_model: int
  chunk_size: int
  attention: bool
  dropout: float
  output_activation: str
  teacher_forcing: bool
  deterministic: bool
  dtype: Dtype = jnp.float32
  dot_general: DotGeneral = lax.dot_general

  @nn.compact
  def __call__(self, carry: Carry, xs: Tuple[jax.Array, jax.Array], atoms: jax.Array,
               atom_mask: jax.Array) -> Tuple[Carry, jax.Array]:
    """Args:
      carry: (h float32[G, d_model], fed-back values float32[G, C], log_remaining
        float32[G]).
      xs: (teacher chunk float32[G, C] (unused when free running), positions int[C]).
      atoms: float[G, A, d_a]; atom_mask: bool[G, A].

    Returns:
      (new carry, raw float32[G, C]).
    """
    h, fed_back, log_remaining = carry
    teacher, positions = xs
    x = teacher if self.teacher_forcing else fed_back
    x = x * feedback_scale(self.output_activation, self.l_y)
    h, _ = nn.GRUCell(self.d_model, dtype=self.dtype, name="gru")(h, x.astype(self.dtype))
    h = h.astype(jnp.float32)
    features = h
    if self.attention:
      features = LuongAttention(self.d_model, **same_precision(self), name="attention")(
          h, atoms, atom_mask)
    features = nn.Dropout(self.dropout, deterministic=self.deterministic)(features)
    logits = nn.Dense(self.chunk_size, **same_precision(self), name="head")(features)
    raw, values, log_remaining = emit_values(logits.astype(jnp.float32), log_remaining,
                                             positions, self.l_y, self.output_activation)
    return (h, values, log_remaining), raw


class ChunkRNNAttentionDecoder(SequenceDecoder):
  """GRU decoder emitting `chunk_size` values per step, optionally attending to atoms.

  The general RNN decoder of the paper's ablation; `RNNDecoder` and
  `RNNAttentionDecoder` are this module with chunk_size = 1, `ChunkRNNDecoder` is it
  with attention = False (see the module docstring for the recurrence and the fed-back
  value).

  Attributes:
    l_y: number of output positions.
    d_model: GRU state width.
    chunk_size: values emitted per step (1 = one value per step).
    attention: Luong attention over the crystal's atoms at every step.
    dropout: dropout rate before the head (train only).
    output_activation: the activation `Xtal2DoS` applies to the raw outputs
      ('softmax' | 'softplus' | 'identity'); fixes what is fed back.
    dtype: compute dtype (parameters, carry and outputs stay float32).
  """
  l_y: int
  d_model: int
  chunk_size: int = 8
  attention: bool = True
  dropout: float = 0.0
  output_activation: str = "softmax"
  dtype: Dtype = jnp.float32
  dot_general: DotGeneral = lax.dot_general

  @property
  def num_steps(self) -> int:
    return math.ceil(self.l_y / self.chunk_size)

  @nn.compact
  def __call__(self, context: jax.Array, atoms: AtomStates, y_teacher: Optional[jax.Array], *,
               train: bool) -> jax.Array:
    """Decodes the sequence.

    Args:
      context: float[G, c] crystal context (-> initial GRU state).
      atoms: the crystals' atom states (attended to when `attention`).
      y_teacher: float[G, l_y] scaled targets for teacher forcing, or None to run free.
      train: enables dropout.

    Returns:
      float32[G, l_y] raw outputs.
    """
    num_graphs, size, steps = context.shape[0], self.chunk_size, self.num_steps
    padded = steps * size
    h0 = jnp.tanh(nn.Dense(self.d_model, **same_precision(self), name="initial_state")(context))
    start = self.param("start", nn.initializers.zeros_init(), (size,), jnp.float32)
    start = jnp.broadcast_to(start, (num_graphs, size))
    positions = jnp.arange(padded, dtype=jnp.int32).reshape(steps, size)
    teacher_forcing = y_teacher is not None
    if teacher_forcing:
      y = jnp.pad(y_teacher.astype(jnp.float32), ((0, 0), (0, padded - self.l_y)))
      chunks = y.reshape(num_graphs, steps, size).transpose(1, 0, 2)          # [T, G, C]
      inputs = jnp.concatenate([start[None], chunks[:-1]], axis=0)           # shifted right
    else:
      inputs = jnp.zeros((steps, num_graphs, size), jnp.float32)
    scan = nn.scan(GRUDecoderStep, variable_broadcast="params",
                   split_rngs={"params": False, "dropout": True},
                   in_axes=(0, nn.broadcast, nn.broadcast), out_axes=0, length=steps)
    step = scan(self.l_y, self.d_model, size, self.attention, self.dropout,
                self.output_activation, teacher_forcing, not train, **same_precision(self),
                name="step")
    carry = (h0.astype(jnp.float32), start, jnp.zeros((num_graphs,), jnp.float32))
    _, raw = step(carry, (inputs, positions), atoms.dense(), atoms.mask)       # [T, G, C]
    return raw.transpose(1, 0, 2).reshape(num_graphs, padded)[:, :self.l_y]


class ChunkRNNDecoder(ChunkRNNAttentionDecoder):
  """Plain GRU emitting `chunk_size` values per step, no attention (paper 'Chunk RNN',
  Fig. 2b): the atoms reach it only through the context in the initial state."""
  attention: bool = False


class RNNAttentionDecoder(ChunkRNNAttentionDecoder):
  """GRU + Luong attention over atoms, one value per step (paper 'RNN+Attn')."""
  chunk_size: int = 1
  attention: bool = True


class RNNDecoder(ChunkRNNAttentionDecoder):
  """Plain GRU, one value per step (paper 'RNN', Fig. 2a)."""
  chunk_size: int = 1
  attention: bool = False


def _kwargs(config: ml_collections.ConfigDict) -> dict:
  return dict(l_y=config.data.l_y, d_model=config.model.d_model,
              dropout=config.model.decoder_dropout,
              output_activation=output_activation_for(config.data.scaling),
              **precision_kwargs(config))


def rnn_decoder(config: ml_collections.ConfigDict) -> nn.Module:
  """`RNNDecoder` sized by config.model / config.data."""
  return RNNDecoder(**_kwargs(config))


def rnn_attention_decoder(config: ml_collections.ConfigDict) -> nn.Module:
  """`RNNAttentionDecoder` sized by config.model / config.data."""
  return RNNAttentionDecoder(**_kwargs(config))


def chunk_rnn_attention_decoder(config: ml_collections.ConfigDict) -> nn.Module:
  """`ChunkRNNAttentionDecoder` with config.model.chunk_size values per step."""
  return ChunkRNNAttentionDecoder(chunk_size=config.model.chunk_size, attention=True,
                                  **_kwargs(config))


def chunk_rnn_decoder(config: ml_collections.ConfigDict) -> nn.Module:
  """`ChunkRNNDecoder` (no attention) with config.model.chunk_size values per step."""
  return ChunkRNNDecoder(chunk_size=config.model.chunk_size, **_kwargs(config))
