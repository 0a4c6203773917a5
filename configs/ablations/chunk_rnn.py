"""Ablation (paper Fig. 2b 'Chunk RNN'): GRU emitting chunk_size values per step, without
attention over the atoms (51 points = 7 chunks of 8, the last padded)."""
from configs import phdos


def get_config():
  config = phdos.get_config()
  config.model.decoder = "chunk_rnn"
  config.model.chunk_size = 8
  return config
