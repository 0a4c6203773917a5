"""Output activations of the model's head, and the label scaling each one pairs with.

The decoders return raw values float[G, l_y]; the output activation maps them onto the
scale of the scaled labels (`labels.py`), so the prediction has the targets' shape:

  normalized_sum -> 'softmax' over the l_y positions (prediction sums to 1, as y / sum(y))
  normalized_max -> 'softplus' (non-negative and unbounded above, as y / max(y))
  standardized   -> 'identity' (any real value, as (y - mean) / std)

One table serves the model (`Xtal2DoS`, the RNN decoders' fed-back values), the losses
(`losses.loss_on_raw_outputs`) and the label scaler. Pure functions, safe inside
`jax.jit` / `jax.grad`.
"""
from __future__ import annotations

from typing import Callable, Dict

import jax

from xtal2dos_jax.errors import check_choice

OUTPUT_ACTIVATIONS: Dict[str, Callable[[jax.Array], jax.Array]] = {
    "softmax": lambda x: jax.nn.softmax(x, axis=-1),   # over the l_y positions
    "softplus": jax.nn.softplus,
    "identity": lambda x: x,
}

# Label scaling (config.data.scaling) -> output activation; its keys are `labels.SCALINGS`.
SCALING_ACTIVATIONS: Dict[str, str] = {
    "normalized_sum": "softmax",
    "normalized_max": "softplus",
    "standardized": "identity",
}


def output_activation_for(scaling: str) -> str:
  """Output activation matching a label scaling (see the module docstring).

  Raises InputError naming config.data.scaling for an unknown scaling.
  """
  return SCALING_ACTIVATIONS[check_choice(scaling, SCALING_ACTIVATIONS, "config.data.scaling")]


def apply_output_activation(raw: jax.Array, name: str) -> jax.Array:
  """float[..., l_y] raw decoder outputs -> predictions on the scaled-label scale."""
  return OUTPUT_ACTIVATIONS[check_choice(name, OUTPUT_ACTIVATIONS, "output_activation")](raw)
