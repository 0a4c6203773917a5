"""The Xtal2DoS model: graph encoder -> crystal context -> sequence decoder (paper Sec. 2).

  node states = encoder(batch.graph)                              float[N, d]
                (an encoder whose `uses_edge_vectors` is True gets the graph with
                edges = batch.edge_vectors, float32[E, 3] Å, instead of distances)
  atoms       = AtomStates(node states, batch.atom_index, batch.atom_mask)
                (each crystal's atoms, `atoms.dense()` = float[G, A, d])
  context     = [mean of real node states; act(Dense(composition))]  float[G, c]
                (act: `composition_activation`, identity by default)
  raw         = decoder(context, atoms, y_teacher)                float[G, l_y]
                (y_teacher = batch.y when training, else None)
  output      = activation(raw), chosen by the label scaling
                (`activations.output_activation_for`).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
import jraph

from xtal2dos_jax.input_pipeline.batching import Batch
from xtal2dos_jax.input_pipeline.featurize import composition_fractions
from xtal2dos_jax.input_pipeline.labels import apply_output_activation
from xtal2dos_jax.models.graph_layers import mean_pool
from xtal2dos_jax.models.precision import DotGeneral, same_precision
from xtal2dos_jax.models.transformer_decoder import AtomStates
Dtype = Any

# config.model.composition_activation -> activation of the composition embedding.
COMPOSITION_ACTIVATIONS: Dict[str, Callable[[jax.Array], jax.Array]] = {
    "none": lambda x: x,
    # The public Xtal2DoS code: F.leaky_relu(embed_comp(composition), 0.2).
    "leaky_relu": lambda x: nn.leaky_relu(x, negative_slope=0.2),
}


class CrystalContext(nn.Module):
  """Crystal context h_x = [mean of real node states; act(Dense(composition fractions))].

  Attributes:
    composition_features: width of the composition embedding (None = node-state width).
    composition_activation: act, a key of COMPOSITION_ACTIVATIONS: 'none' (identity, the
      default) or 'leaky_relu' (slope 0.2, as the public code applies to it).
    dtype: compute dtype (parameters stay float32).
    dot_general: the matmul of the layers (see `precision.py`).
  """
  composition_features: Optional[int] = None
  composition_activation: str = "none"
  dtype: Dtype = jnp.float32
  dot_general: DotGeneral = lax.dot_general

  @nn.compact
  def __call__(self, node_states: jax.Array, graph: jraph.GraphsTuple) -> jax.Array:
    """float[N, d] node states -> float[G, d + composition_features]."""
    activation = COMPOSITION_ACTIVATIONS[self.composition_activation]
    pooled = mean_pool(node_states, graph)
    composition = composition_fractions(graph.nodes, graph.n_node)          # [G, 103]
    features = self.composition_features or node_states.shape[-1]
    embedded = activation(nn.Dense(features, **same_precision(self), name="composition")(
        composition))
    return jnp.concatenate([pooled.astype(embedded.dtype), embedded], axis=-1)


class Xtal2DoS(nn.Module):
  """Crystal graph -> DoS sequence with any encoder / decoder pair.

  Attributes:
    encoder: module mapping (graph, train=) -> float[N, d] node states (graph.edges =
      float32[E] distances, or float32[E, 3] displacement vectors when the encoder
      class sets `uses_edge_vectors = True`).
    decoder: a `SequenceDecoder`, mapping (context, atoms, y_teacher, train=) ->
      float[G, l_y] (and given crystal_system= when its `uses_crystal_system` is True).
    output_activation: 'softmax' (over positions), 'softplus' or 'identity'.
    composition_activation: activation of the context's composition embedding (see
      `CrystalContext`).
    dtype: compute dtype of the context embedding (parameters stay float32).
  """
  encoder: nn.Module
  decoder: nn.Module
  output_activation: str = "softmax"
  composition_activation: str = "none"
  dtype: Dtype = jnp.float32
  dot_general: DotGeneral = lax.dot_general

  @nn.compact
  def __call__(self, batch: Batch, *, train: bool, raw: bool = False) -> jax.Array:
    """float32[G, l_y] predictions on the scaled-label scale (padding crystals finite).

    `raw=True` returns the decoder output before the output activation (the logits of
    the softmax for `normalized_sum`), from which the losses take log-probabilities.
    """
    graph = batch.graph
    if getattr(self.encoder, "uses_edge_vectors", False):
      if batch.edge_vectors.shape[-1] != 3:
        raise ValueError(f"the {type(self.encoder).__name__} encoder reads edge vectors, but "
                         f"the batch's are {batch.edge_vectors.shape[-1]} wide; assemble it "
                         "with edge_vectors=models.needs_edge_vectors(config)")
      graph = graph._replace(edges=batch.edge_vectors)
    node_states = self.encoder(graph, train=train)
    atoms = AtomStates(node_states, batch.atom_index, batch.atom_mask)
    context = CrystalContext(composition_activation=self.composition_activation,
                             **same_precision(self), name="context")(node_states, batch.graph)
    # Teacher forcing only in training: evaluation never sees the labels.
    y_teacher = batch.y if train else None
    extra = {"crystal_system": batch.crystal_system} if self.decoder.uses_crystal_system else {}
    out = self.decoder(context, atoms, y_teacher, train=train, **extra).astype(jnp.float32)
    return out if raw else apply_output_activation(out, self.output_activation)
