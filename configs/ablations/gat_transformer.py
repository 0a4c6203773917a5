"""Encoder ablation: GATGNN-style graph attention encoder + the Xtal2DoS transformer decoder."""
from configs import phdos


def get_config():
  config = phdos.get_config()
  config.model.encoder = "gat"
  return config
