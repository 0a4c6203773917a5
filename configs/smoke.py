"""Tiny config for tests and a quick end-to-end check (seconds on a laptop CPU)."""
from configs import phdos


def get_config():
  config = phdos.get_config()
  config.model.d_model = 16
  config.model.num_heads = 2
  config.model.encoder_layers = 2
  config.model.decoder_layers = 1
  config.model.ff_dim = 32
  config.train.batch_size = 16
  config.train.num_epochs = 2
  config.train.warmup_epochs = 0
  config.train.patience = 5
  config.train.progress = False
  config.data.limit = 120
  return config
