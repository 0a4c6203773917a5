"""Model factory: any registered encoder / decoder pairing from a config.

`create_model(config)` builds `Xtal2DoS(ENCODERS[config.model.encoder](config),
DECODERS[config.model.decoder](config), output_activation_for(config.data.scaling))`.
Adding an encoder or decoder is one registry line: a function ConfigDict -> nn.Module
with the interface documented in `graph_layers.py` (encoders) / `transformer_decoder.py`
(decoders, subclasses of `SequenceDecoder`).

Also the package's API for the trainer and the tests: the output activations
(`output_activation_for`, `apply_output_activation`, from `xtal2dos_jax.input_pipeline.labels`),
the precision modes and `count_params`.
"""
from __future__ import annotations

from typing import Any, Callable, Dict

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from xtal2dos_jax.input_pipeline.labels import apply_output_activation, output_activation_for
from xtal2dos_jax.models import (dostransformer, dostransformer_encoder, gat, gatgnn, graph_network,
                                 mat2spec, mlp_decoder, rnn_decoders)
from xtal2dos_jax.models.precision import bf16_dot_general, precision_kwargs, PRECISIONS
from xtal2dos_jax.models.transformer_decoder import (AtomStates, CausalTransformerDecoder,
                                                     SequenceDecoder)
from xtal2dos_jax.models.unimp import UniMPEncoder, UniMPLayer
from xtal2dos_jax.models.xtal2dos import COMPOSITION_ACTIVATIONS, CrystalContext, Xtal2DoS

ModelFactory = Callable[[ml_collections.ConfigDict], nn.Module]
# config.model.e3nn_variant: the layer of `e3nn.E3NNEncoder` (named here, so checking a
# config does not import e3nn-jax).
E3NN_VARIANTS = ("chen2021", "gate_points")


def _unimp(config: ml_collections.ConfigDict) -> nn.Module:
  m, d = config.model, config.data
  return UniMPEncoder(d_model=m.d_model, num_heads=m.num_heads, num_layers=m.encoder_layers,
                      dropout=m.encoder_dropout, radius=d.radius, gaussian_step=d.gaussian_step,
                      atom_features=m.atom_features,
                      **precision_kwargs(config))


def _transformer(config: ml_collections.ConfigDict) -> nn.Module:
  m = config.model
  return CausalTransformerDecoder(l_y=config.data.l_y, d_model=m.d_model, num_heads=m.num_heads,
                                  num_layers=m.decoder_layers, ff_dim=m.ff_dim,
                                  dropout=m.decoder_dropout, causal=m.causal,
                                  source_attention=m.source_attention,
                                  position_embedding=m.position_embedding,
                                  **precision_kwargs(config))


def _e3nn(config: ml_collections.ConfigDict) -> nn.Module:
  """The E3NN encoder; e3nn-jax (with sympy and scipy.signal, ~2 s) is imported only
  when a model uses it, not by every binary that imports the registry."""
  from xtal2dos_jax.models import e3nn
  return e3nn.e3nn_encoder(config)


# name (config.model.encoder) -> factory: config -> module(graph, train=) -> float[N, d].
ENCODERS: Dict[str, ModelFactory] = {
    "unimp": _unimp,
    "gat": gat.gat_encoder,
    "e3nn": _e3nn,
    "gatgnn": gatgnn.gatgnn_encoder,
    "graph_network": graph_network.graph_network_encoder,
    "dostransformer_gnn": dostransformer_encoder.dostransformer_gnn_encoder,
}

# name (config.model.decoder) -> factory: config -> SequenceDecoder
# (context, atoms: AtomStates, y_teacher, train=) -> float[G, l_y] raw outputs.
DECODERS: Dict[str, ModelFactory] = {
    "transformer": _transformer,
    "rnn": rnn_decoders.rnn_decoder,
    "rnn_attn": rnn_decoders.rnn_attention_decoder,
    "chunk_rnn": rnn_decoders.chunk_rnn_decoder,
    "chunk_rnn_attn": rnn_decoders.chunk_rnn_attention_decoder,
    "mlp": mlp_decoder.mlp_decoder,
    "dostransformer": dostransformer.dostransformer_decoder,
    "gatgnn_head": gatgnn.gatgnn_head,
    "mat2spec": mat2spec.mat2spec_decoder,
}


def create_model(config: ml_collections.ConfigDict) -> nn.Module:
  """The model named by config.model.{encoder, decoder}, sized by config.model / config.data
  (a config `training.config_check.validate` accepts)."""
  m = config.model
  return Xtal2DoS(encoder=ENCODERS[m.encoder](config), decoder=DECODERS[m.decoder](config),
                  output_activation=output_activation_for(config.data.scaling),
                  composition_activation=m.composition_activation, **precision_kwargs(config))


def needs_edge_vectors(config: ml_collections.ConfigDict) -> bool:
  """Whether the encoder of config.model.encoder reads per-edge displacement vectors
  (its class sets `uses_edge_vectors`: e3nn). The batches of every other model leave
  `Batch.edge_vectors` zero-width (`batching.assemble(..., edge_vectors=False)`), which
  takes 12 of the 24 bytes per edge (distance, sender, receiver, vector) off the
  host->device path."""
  factory = ENCODERS[config.model.encoder]
  return bool(getattr(factory(config), "uses_edge_vectors", False))


def count_params(params: Any) -> int:
  """Total number of scalar parameters in a pytree of arrays."""
  return int(sum(np.prod(np.shape(x), dtype=np.int64) for x in jax.tree.leaves(params)))


__all__ = [
    "COMPOSITION_ACTIVATIONS", "DECODERS", "ENCODERS", "PRECISIONS", "AtomStates",
    "CausalTransformerDecoder", "CrystalContext", "SequenceDecoder", "UniMPEncoder",
    "UniMPLayer", "Xtal2DoS",
    "apply_output_activation", "bf16_dot_general", "count_params", "create_model",
    "needs_edge_vectors",
    "output_activation_for", "precision_kwargs",
]
