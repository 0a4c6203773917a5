"""GAT encoder: multi-head graph attention (GAT) with edge features (encoder ablation).

A plain GAT layer (Velickovic et al. 2018, additive attention) in which the shared edge
embedding enters both the attention logits and the messages. Per layer and head
(d_h = d_model / H), for each edge j -> i with edge embedding g_ij (shared by all
layers, as in UniMP):

  z_i = W_n h_i + b_n + W_e g_ij,  z_j = W_n h_j + b_n + W_e g_ij     (per head: [d_h])
  alpha_ij = softmax over the incoming edges of i of LeakyReLU_0.2(a_c . z_i + a_n . z_j)
  m_i = sum_j alpha_ij z_j                                           (heads concatenated)
  h'_i = softplus(LayerNorm(m_i + W_r h_i + b_r))   (no LayerNorm / softplus on the last layer)

It differs from `UniMPLayer` in the attention form (additive instead of scaled dot
product), in the residual (plain sum instead of the gate beta) and in the activation
(softplus instead of leaky ReLU). It is not GATGNN (Louis et al. 2020): there are no
softplus transforms of the node features or of the attention logits, no batch norm
inside the attention, and no composition-attention pooling; the crystal context is the
same mean pool + composition embedding as for UniMP. Same interface and padding
guarantees as `unimp.UniMPEncoder`:

  encoder(graph, train=...) -> float[N, d_model]
"""
from __future__ import annotations

from typing import Any, Callable, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
import ml_collections

from xtal2dos_jax.models.attention import segment_softmax
from xtal2dos_jax.models.graph_layers import StackedGraphEncoder
from xtal2dos_jax.models.precision import DotGeneral, precision_kwargs, same_precision
Dtype = Any


class GATLayer(nn.Module):
  """One GAT attention layer with edge features (equations in the module docstring).

  Attributes:
    d_model: width of node states and messages.
    num_heads: H; must divide d_model.
    dropout: dropout rate on the layer output (train only).
    last: skip LayerNorm and activation (the encoder's final layer).
    negative_slope: LeakyReLU slope of the attention logits (0.2 as in GAT).
    activation: the non-linearity after LayerNorm (softplus by default).
    sorted_receivers: `receivers` is non-decreasing (true for `batching` batches).
    dtype: compute dtype (parameters stay float32).
    dot_general: the matmul of the layers (see `precision.py`).
  """
  d_model: int
  num_heads: int
  dropout: float = 0.0
  last: bool = False
  negative_slope: float = 0.2
  activation: Callable[[jax.Array], jax.Array] = nn.softplus
  sorted_receivers: bool = True
  dtype: Dtype = jnp.float32
  dot_general: DotGeneral = lax.dot_general

  @nn.compact
  def __call__(self, h: jax.Array, g: jax.Array, senders: jax.Array, receivers: jax.Array,
               edge_mask: jax.Array, *, train: bool) -> jax.Array:
    """Updates node states.

    Args:
      h: float[N, d_in] node states.
      g: float[E, d_e] edge embeddings.
      senders: int32[E] neighbour j of each edge.
      receivers: int32[E] centre i of each edge.
      edge_mask: bool[E] real edges; masked edges carry no message and no weight.
      train: enables dropout.

    Returns:
      float[N, d_model].
    """
    if self.d_model % self.num_heads:
      raise ValueError(f"d_model={self.d_model} is not divisible by num_heads={self.num_heads}")
    num_nodes, head_dim = h.shape[0], self.d_model // self.num_heads
    heads = lambda x: x.reshape(x.shape[0], self.num_heads, head_dim)
    node = nn.Dense(self.d_model, **same_precision(self), name="node")(h)                # W_n h
    edge = nn.Dense(self.d_model, use_bias=False, **same_precision(self), name="edge")(g)  # W_e g
    z_centre = heads(node[receivers] + edge)                                        # [E, H, d_h]
    z_neighbour = heads(node[senders] + edge)
    a_centre = self.param("attention_centre", nn.initializers.lecun_normal(),
                          (self.num_heads, head_dim), jnp.float32)
    a_neighbour = self.param("attention_neighbour", nn.initializers.lecun_normal(),
                             (self.num_heads, head_dim), jnp.float32)
    logits = (jnp.sum(z_centre * a_centre.astype(self.dtype), axis=-1)
              + jnp.sum(z_neighbour * a_neighbour.astype(self.dtype), axis=-1))  # [E, H]
    logits = nn.leaky_relu(logits, self.negative_slope)
    alpha = segment_softmax(logits, receivers, num_nodes, mask=edge_mask,
                            indices_are_sorted=self.sorted_receivers)
    m = jax.ops.segment_sum(alpha[..., None] * z_neighbour, receivers, num_nodes,
                            indices_are_sorted=self.sorted_receivers)
    out = m.reshape(num_nodes, self.d_model) + nn.Dense(self.d_model, **same_precision(self),
                                                        name="skip")(h)
    if not self.last:
      out = self.activation(nn.LayerNorm(dtype=self.dtype)(out))
    return nn.Dropout(self.dropout, deterministic=not train)(out)


class GATEncoder(StackedGraphEncoder):
  """GAT ablation encoder: embeddings + `num_layers` `GATLayer`s."""
  layer_cls: ClassVar[Callable[..., nn.Module]] = GATLayer


def gat_encoder(config: ml_collections.ConfigDict) -> nn.Module:
  """`GATEncoder` sized like the UniMP encoder (config.model.encoder_* / data.radius...),
  precision from config.model.dtype."""
  m, d = config.model, config.data
  return GATEncoder(d_model=m.d_model, num_heads=m.num_heads, num_layers=m.encoder_layers,
                    dropout=m.encoder_dropout, radius=d.radius, gaussian_step=d.gaussian_step,
                    atom_features=m.atom_features,
                    **precision_kwargs(config))
