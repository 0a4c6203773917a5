"""Baseline: E3NN-new, the paper's Table 1 "E3NN-new" row (R^2 0.621 on phDoS).

The paper's footnote points at e3nn's `gate_points_2101.Network` (whose Convolution and
Gate the MRS 2021 phonon-DoS tutorial, ninarina12/phononDoS_tutorial, builds on): the
"gate_points" variant of `models/e3nn.py` (element attributes in every layer through
self-connection and tensor-product linears, a Gaussian radial basis, the sin/cos(pi/8)
mix, gates; 2 gated layers and a read-out convolution) on the 5 Å radius graph. The head
is that of `configs/ablations/e3nn.py` (the "E3NN" row): the per-atom outputs are mapped
linearly and averaged over the crystal's atoms (the `mlp` decoder with no hidden layer),
as the tutorial averages its per-atom outputs. Trained with the default loss (KL on the
sum-normalised DoS).
"""
from configs.ablations import e3nn


def get_config():
  config = e3nn.get_config()       # the mean-over-atoms head on the 5 Å radius graph
  config.model.e3nn_variant = "gate_points"
  return config
