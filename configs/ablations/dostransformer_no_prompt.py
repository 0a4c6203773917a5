"""Ablation: the DOSTransformer decoder's prompt-free output alone (no crystal-system
prompt anywhere), on the UniMP encoder; otherwise `configs/ablations/dostransformer.py`.
The difference to that config measures what the prompt adds."""
from configs.ablations import dostransformer


def get_config():
  config = dostransformer.get_config()
  config.model.dostransformer_prompt = "none"
  return config
