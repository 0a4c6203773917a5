"""MLP decoder: the GATGNN / Mat2Spec "expand the last layer" baseline (paper Tables 3-4).

The crystal context goes through an MLP whose last layer has l_y outputs, one per DoS
position; the atoms and the teacher targets are ignored. With `energy_embedding`, the
MLP is instead shared across positions and reads [learned energy embedding e_t;
context] for each position t (the "MLP with energy embeddings" baseline of the
DOSTransformer comparison).

Same interface as every decoder (see `transformer_decoder.py`).
"""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
import ml_collections

from xtal2dos_jax.models.precision import DotGeneral, precision_kwargs, same_precision
from xtal2dos_jax.models.transformer_decoder import AtomStates, SequenceDecoder
Dtype = Any


class MLP(nn.Module):
  """`num_layers` x (Dense(hidden) -> leaky_relu -> dropout), then Dense(out_features).

  Attributes:
    hidden: width of the hidden layers.
    out_features: output width.
    num_layers: number of hidden layers (0 = a single linear map).
    dropout: dropout rate after each hidden layer (train only).
    dtype: compute dtype (parameters stay float32).
    dot_general: the matmul of the layers (see `precision.py`).
  """
  hidden: int
  out_features: int
  num_layers: int
  dropout: float = 0.0
  dtype: Dtype = jnp.float32
  dot_general: DotGeneral = lax.dot_general

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    """float[..., f] -> float[..., out_features]."""
    for i in range(self.num_layers):
      x = nn.leaky_relu(nn.Dense(self.hidden, **same_precision(self), name=f"hidden_{i}")(x))
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.out_features, **same_precision(self), name="out")(x)


class MLPDecoder(SequenceDecoder):
  """Crystal context -> MLP -> l_y raw outputs (non-autoregressive; ignores atoms).

  Attributes:
    l_y: number of output positions.
    hidden: MLP hidden width.
    num_layers: MLP hidden layers.
    dropout: dropout rate (train only).
    energy_embedding: share one MLP over positions, reading [e_t; context] with e_t a
      learned d-dimensional embedding of position t (d = `hidden`).
    dtype: compute dtype (parameters stay float32).
    dot_general: the matmul of the layers (see `precision.py`).
  """
  l_y: int
  hidden: int
  num_layers: int = 2
  dropout: float = 0.0
  energy_embedding: bool = False
  dtype: Dtype = jnp.float32
  dot_general: DotGeneral = lax.dot_general

  @nn.compact
  def __call__(self, context: jax.Array, atoms: AtomStates, y_teacher: Optional[jax.Array], *,
               train: bool) -> jax.Array:
    """float[G, c] context (atoms and y_teacher unused) -> float[G, l_y] raw outputs."""
    del atoms, y_teacher
    if not self.energy_embedding:
      return MLP(self.hidden, self.l_y, self.num_layers, self.dropout, **same_precision(self),
                 name="mlp")(context, train=train)
    num_graphs = context.shape[0]
    energies = nn.Embed(self.l_y, self.hidden, name="energy_embedding")(
        jnp.arange(self.l_y))                                                 # [l_y, hidden]
    x = jnp.concatenate([
        jnp.broadcast_to(energies[None], (num_graphs,) + energies.shape).astype(context.dtype),
        jnp.broadcast_to(context[:, None], (num_graphs, self.l_y, context.shape[-1])),
    ], axis=-1)
    return MLP(self.hidden, 1, self.num_layers, self.dropout, **same_precision(self),
               name="mlp")(x, train=train)[..., 0]


def mlp_decoder(config: ml_collections.ConfigDict) -> nn.Module:
  """`MLPDecoder`: config.model.decoder_layers hidden layers of width config.model.ff_dim;
  config.model.mlp_energy_embedding adds energy embeddings."""
  m = config.model
  return MLPDecoder(l_y=config.data.l_y, hidden=m.ff_dim, num_layers=m.decoder_layers,
                    dropout=m.decoder_dropout,
                    energy_embedding=bool(m.mlp_energy_embedding),
                    **precision_kwargs(config))
