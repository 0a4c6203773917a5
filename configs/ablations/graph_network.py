"""Baseline: the graph network of the DOSTransformer comparison report, without energy
embeddings (its "Graph Network2" rows; best: 4 processing layers, 8 Å).

Encoder `models/graph_network.py` (edge and node MLPs with residuals, 4 blocks) on the
default graph (12 nearest neighbours within 8 Å); head: the `mlp` decoder on the
crystal context with one hidden layer of width d_model / 2 (the public code's
Linear(d, d/2) -> LeakyReLU -> Linear(d/2, l_y) after the pool).
"""
from configs import phdos


def get_config():
  config = phdos.get_config()
  m = config.model
  m.encoder = "graph_network"
  m.decoder = "mlp"
  m.encoder_layers = 4
  m.decoder_layers = 1
  m.ff_dim = m.d_model // 2
  m.mlp_energy_embedding = False
  m.encoder_dropout = 0.0          # the graph network has no dropout
  m.decoder_dropout = 0.0
  return config
