"""Baseline: GATGNN (Louis et al., PCCP 2020), the Xtal2DoS paper's Table 1 "GATGNN" row.

Encoder `models/gatgnn.py`: 3 augmented graph-attention (AGAT) layers of width 128 with
4 averaged heads (the settings of the Xtal2DoS / Mat2Spec code that produced the row),
each followed by a normalisation and softplus, no residuals, no dropout. Head: the
composition attention (weights from [atom state; composition embedding], softmax over
each crystal's atoms), a weighted sum over the atoms and GATGNN's MLP (two softplus
layers of width 128, then l_y outputs). The composition embedding is linear (no
activation), so the attention reads a linear map of the element fractions, as GATGNN
reads the fractions. Trained with the default recipe (KL on the sum-normalised DoS).
"""
from configs import phdos


def get_config():
  config = phdos.get_config()
  m = config.model
  m.encoder = "gatgnn"
  m.decoder = "gatgnn_head"
  m.d_model = 128
  m.num_heads = 4
  m.encoder_layers = 3
  m.decoder_layers = 2             # GATGNN's two hidden layers after the pooling
  m.encoder_dropout = 0.0
  m.decoder_dropout = 0.0
  m.composition_activation = "none"
  return config
