"""Baseline: DOSTransformer-style decoder (energy embeddings x atoms cross-attention,
crystal-system prompts) on the UniMP encoder. The data pipeline must fill the crystal
systems (symmetry.crystal_systems) for this decoder."""
from configs import phdos


def get_config():
  config = phdos.get_config()
  config.model.decoder = "dostransformer"
  return config
