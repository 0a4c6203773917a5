"""Training losses on a DoS sequence (DESIGN 5).

Every loss maps a target `y` and a prediction `y_hat`, both float[..., l_y] (in a batch:
[G, l_y], G crystals of a padded batch), to one value per crystal, float[...]. Reduction
over crystals is separate (`masked_loss_sum`) so that padding crystals are excluded and
data-parallel code can `psum` sums and counts for an exact global mean.

All functions are pure jnp and safe inside `jax.jit` / `jax.grad`.
"""
from __future__ import annotations

from typing import Callable, Dict, Tuple

import jax.numpy as jnp

from xtal2dos_jax.errors import InputError

LossFn = Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]


def kl_divergence(y: jnp.ndarray, y_hat: jnp.ndarray, eps: float = 1e-8) -> jnp.ndarray:
  """KL(y || y_hat) per crystal for normalised DoS: sum_t y_t (log(y_t+eps) - log(y_hat_t+eps)).

  `eps` keeps zeros in either argument finite, in value and in gradient (d/dy_hat =
  -y / (y_hat + eps)), e.g. for one-hot targets or a saturated softmax output.

  Args:
    y: float[..., l_y] target, normalised to sum 1 over the last axis (`normalized_sum`).
    y_hat: float[..., l_y] prediction on the same scale (e.g. a softmax output).
    eps: additive floor inside the logs.

  Returns:
    float[...] divergence in nats; 0 when y == y_hat.
  """
  return jnp.sum(y * (jnp.log(y + eps) - jnp.log(y_hat + eps)), axis=-1)


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


def get_loss(name: str) -> LossFn:
  """Per-crystal loss function by config name (`config.train.loss`): kl, wd, mae or mse."""
  try:
    return LOSSES[name]
  except (KeyError, TypeError):
    raise InputError(
        "config.train.loss",
        f"unknown loss {name!r}; expected one of {', '.join(LOSSES)}") from None


def masked_loss_sum(per_crystal: jnp.ndarray,
                    mask: jnp.ndarray) -> Tuple[jnp.ndarray, jnp.ndarray]:
  """Sum of a per-crystal quantity over real crystals, and their number.

  Padding crystals (mask False) contribute exactly nothing, whatever their values (the
  values are selected away with `where`, not multiplied by 0, so inf/NaN there cannot
  leak in the forward pass). The mean over a global batch split across devices is
  `psum(sum) / psum(count)`.

  Args:
    per_crystal: float[G] (or any shape broadcastable against `mask`).
    mask: bool[G], True for real crystals.

  Returns:
    (sum, count): float32 scalars.
  """
  mask = jnp.asarray(mask, bool)
  per_crystal = jnp.asarray(per_crystal)
  total = jnp.sum(jnp.where(mask, per_crystal, jnp.zeros_like(per_crystal)))
  count = jnp.sum(mask.astype(jnp.float32))
  return total, count
