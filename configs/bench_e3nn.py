"""Benchmark config for the E3NN encoder: `python -m experiments.benchmark --config=configs/bench_e3nn.py`.

The comparison configuration of configs/bench.py (same optimizer, batch 64, decoder and
d_model) with the encoder of configs/ablations/e3nn2dos.py: e3nn-jax point convolutions on
the 5 Å radius graph (every neighbour within the radius, edge vectors in the batches). Its
training, evaluation and prediction rows set beside configs/bench.py's give the cost of the
equivariant encoder against UniMP's under one decoder.

Rows that measure something else are off: the paper-size transformer, the opt-in
bf16_matmul mode (the E3NN encoder computes in float32 whatever model.dtype is) and the
time to accuracy (which trains configs/phdos.py, the default recipe).
"""
import ml_collections

from configs import bench
from configs.ablations import e3nn2dos


def get_config() -> ml_collections.ConfigDict:
  config = bench.get_config()
  e3nn = e3nn2dos.get_config()
  config.data.radius = e3nn.data.radius
  config.data.max_num_nbr = e3nn.data.max_num_nbr
  config.model = e3nn.model
  b = config.bench
  b.paper_model = False
  b.bf16_matmul = False
  b.time_to_accuracy = False
  return config
