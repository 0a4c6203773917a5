"""Encoder ablation: E3NN2DoS, the paper's Table 1 row with an E3NN encoder and the
Xtal2DoS causal transformer decoder (with source attention to the atoms).

The paper's E3NN2DoS "adopts the new version of E3NN", so the encoder is that of
`configs/ablations/e3nn_new.py`: the "gate_points" variant of `models/e3nn.py` (e3nn's
gate_points_2101 convolutions with element attributes, self-connections and a Gaussian
radial basis, on the 5 Å radius graph, 2 gated layers and a read-out convolution to
scalar node outputs of width d_model); the decoder and the training recipe are the
default config's.
"""
from configs import phdos


def get_config():
  config = phdos.get_config()
  config.data.radius = 5.0
  config.data.max_num_nbr = 0     # every neighbour within the radius
  config.model.encoder = "e3nn"
  config.model.e3nn_variant = "gate_points"
  config.model.encoder_layers = 2
  return config
