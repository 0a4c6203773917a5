"""Ablation (paper Table 3 'RNN+Attn'): GRU + Luong attention over the atoms."""
from configs import phdos


def get_config():
  config = phdos.get_config()
  config.model.decoder = "rnn_attn"
  return config
