"""Baseline: GATGNN / Mat2Spec-style MLP head ('expand the last layer') on the crystal context.

`--config.model.mlp_energy_embedding=True` gives the DOSTransformer report's
"MLP with energy embeddings" variant."""
from configs import phdos


def get_config():
  config = phdos.get_config()
  config.model.decoder = "mlp"
  return config
