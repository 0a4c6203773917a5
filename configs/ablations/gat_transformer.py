"""Encoder ablation: a plain GAT encoder (additive graph attention with edge features,
`models/gat.py`) + the Xtal2DoS transformer decoder."""
from configs import phdos


def get_config():
  config = phdos.get_config()
  config.model.encoder = "gat"
  return config
