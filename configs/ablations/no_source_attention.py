"""Ablation: the transformer decoder without source attention to the atoms; positions see
the crystal only through the context vector in their inputs z (mean atom state +
composition)."""
from configs import phdos


def get_config():
  config = phdos.get_config()
  config.model.source_attention = False
  return config
