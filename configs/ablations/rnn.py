"""Ablation (paper Table 3 'RNN'): UniMP encoder + GRU decoder, one value per step."""
from configs import phdos


def get_config():
  config = phdos.get_config()
  config.model.decoder = "rnn"
  return config
