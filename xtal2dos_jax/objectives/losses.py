"""Training losses on a DoS sequence: KL, WD (L1 between the cumulative sums), MAE, MSE.

Every loss maps a target `y` and a prediction `y_hat`, both float[..., l_y] (in a batch:
[G, l_y], G crystals of a padded batch), to one value per crystal, float[...]. Reduction
over crystals is separate (the train and eval steps sum real crystals with `where` and
`psum` sums and counts across devices for an exact global mean).

All functions are pure jnp and safe inside `jax.jit` / `jax.grad`.
"""
from __future__ import annotations

from typing import Callable, Dict

import jax
import jax.numpy as jnp

from xtal2dos_jax.input_pipeline.labels import apply_output_activation

LossFn = Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]


def kl_from_log_probs(y: jnp.ndarray, log_y_hat: jnp.ndarray,
                      eps: float = 1e-10) -> jnp.ndarray:
  """KL(y || y_hat) per crystal from predicted log-probabilities:
  sum_t y_t (log(y_t + eps) - log_y_hat_t).

  The prediction enters as log-probabilities (e.g. `jax.nn.log_softmax` of the logits),
  so a bin the model gives probability 1e-10 keeps its full gradient; `eps` only keeps
  log(y_t) finite where the target is 0 (that term is then 0), as the public reference
  does with its 1e-10.

  Args:
    y: float[..., l_y] target, normalised to sum 1 over the last axis (`normalized_sum`).
    log_y_hat: float[..., l_y] predicted log-probabilities (logsumexp over l_y = 0).
    eps: floor inside the target's log.

  Returns:
    float[...] divergence in nats; 0 when y == exp(log_y_hat) (up to eps).
  """
  return jnp.sum(y * (jnp.log(y + eps) - log_y_hat), axis=-1)


def kl_divergence(y: jnp.ndarray, y_hat: jnp.ndarray, eps: float = 1e-10) -> jnp.ndarray:
  """KL(y || y_hat) per crystal for two normalised DoS given as probabilities.

  For a model output prefer `kl_from_log_probs` on its logits (what training uses): the
  log of a probability that underflowed is clipped here at log(1e-30).

  Args:
    y: float[..., l_y] target, summing to 1 over the last axis.
    y_hat: float[..., l_y] prediction on the same scale.
    eps: floor inside the target's log.

  Returns:
    float[...] divergence in nats.
  """
  return kl_from_log_probs(y, jnp.log(jnp.maximum(y_hat, 1e-30)), eps)


def wasserstein_loss(y: jnp.ndarray, y_hat: jnp.ndarray) -> jnp.ndarray:
  """L1 distance between the cumulative sums, sum_t |cumsum(y)_t - cumsum(y_hat)_t|, per crystal.

  For inputs that each sum to 1 this is the 1-Wasserstein distance on the bin-index grid
  (unit spacing; the last term is then 0). For unnormalised inputs the last term adds
  |sum(y) - sum(y_hat)|, which penalises a wrong total.

  Args:
    y: float[..., l_y] target.
    y_hat: float[..., l_y] prediction.

  Returns:
    float[...] in (bin index) x (y units).
  """
  return jnp.sum(jnp.abs(jnp.cumsum(y, axis=-1) - jnp.cumsum(y_hat, axis=-1)), axis=-1)


def mae_loss(y: jnp.ndarray, y_hat: jnp.ndarray) -> jnp.ndarray:
  """Mean absolute error over the l_y positions, float[..., l_y] -> float[...]."""
  return jnp.mean(jnp.abs(y - y_hat), axis=-1)


def mse_loss(y: jnp.ndarray, y_hat: jnp.ndarray) -> jnp.ndarray:
  """Mean squared error over the l_y positions, float[..., l_y] -> float[...]."""
  return jnp.mean(jnp.square(y - y_hat), axis=-1)


LOSSES: Dict[str, LossFn] = {
    "kl": kl_divergence,
    "wd": wasserstein_loss,
    "mae": mae_loss,
    "mse": mse_loss,
}

# Losses defined only between two normalised DoS (each summing to 1), so they need the
# labels scaled by their sum and the model's softmax head.
NEEDS_NORMALIZED_SUM = ("kl", "wd")


def get_loss(name: str) -> LossFn:
  """Per-crystal loss between two DoS by config name (`config.train.loss`): kl, wd, mae or
  mse; both arguments on the scaled-label scale (predictions after the activation)."""
  return LOSSES[name]


def loss_on_raw_outputs(name: str, output_activation: str) -> LossFn:
  """Per-crystal loss of the raw model output (before its activation), what training
  and validation minimise.

  KL takes the log-probabilities straight from the logits (`log_softmax`), so it is exact
  however small a predicted probability is; the other losses apply the activation first.

  Args:
    name: config.train.loss.
    output_activation: the head's activation ('softmax', 'softplus' or 'identity').

  Returns:
    fn(y float[..., l_y] scaled labels, raw float[..., l_y]) -> float[...].
  """
  loss = get_loss(name)
  if name == "kl" and output_activation == "softmax":
    return lambda y, raw: kl_from_log_probs(y, jax.nn.log_softmax(raw, axis=-1))
  return lambda y, raw: loss(y, apply_output_activation(raw, output_activation))
