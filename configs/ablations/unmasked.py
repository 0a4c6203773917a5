"""Ablation: the transformer decoder without the causal mask (the public PyTorch code)."""
from configs import phdos


def get_config():
  config = phdos.get_config()
  config.model.causal = False
  return config
