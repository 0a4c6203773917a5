"""Baseline: DOSTransformer-style decoder (energy embeddings x atoms cross-attention,
crystal-system prompts) on the UniMP encoder. The data pipeline must fill the crystal
systems (symmetry.crystal_systems) for this decoder. Variants: `dostransformer_no_prompt.py`
(the prompt-free output alone), `dostransformer_own_encoder.py` (the public code's own
graph encoder, both outputs trained)."""
from configs import phdos


def get_config():
  config = phdos.get_config()
  config.model.decoder = "dostransformer"
  return config
