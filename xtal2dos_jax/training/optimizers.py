"""Learning-rate schedules and the optimizer named by `config.train`.

`create_learning_rate_fn` gives the step -> learning-rate schedule (linear warmup +
cosine cycles, linear warmup + exponential decay per epoch, or the Transformer paper's
"noam" schedule that the public Xtal2DoS code uses); `create_optimizer` wraps Adam /
AdamW / SGD in global-norm gradient clipping and, for fine-tuning, can freeze the
encoder (`config.train.freeze`).
"""
from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import ml_collections
import optax

SCHEDULES = ("cosine", "exponential", "noam")
# `config.train.optimizer`.
OPTIMIZERS = ("adam", "adamw", "sgd")
# `config.train.freeze`: which parameter subtree receives no updates.
FREEZE = ("none", "encoder")


def noam_schedule(factor: float, d_model: int, warmup_steps: int, decay_after_steps: int = 0,
                  decay_rate: float = 1.0) -> optax.Schedule:
  """The Transformer paper's schedule as the public Xtal2DoS code runs it:
  factor * d_model^-0.5 * min(s^-0.5, s * warmup^-1.5) at step s >= 1 (step 0 counts as
  1), and from `decay_after_steps` on (if > 0) divided by decay_rate^(s /
  decay_after_steps). The peak, at s = warmup, is factor / sqrt(d_model * warmup)."""
  def schedule(step):
    s = jnp.maximum(jnp.asarray(step, jnp.float32), 1.0)
    lr = factor * d_model ** -0.5 * jnp.minimum(s ** -0.5, s * float(warmup_steps) ** -1.5)
    if decay_after_steps > 0:
      lr = jnp.where(s >= decay_after_steps, lr / decay_rate ** (s / decay_after_steps), lr)
    return lr
  return schedule


def create_learning_rate_fn(config: ml_collections.ConfigDict,
                            steps_per_epoch: int) -> optax.Schedule:
  """`config.train.schedule`: 'cosine' (linear warmup, then `cosine_restarts` cosine
  cycles down to 1% of the peak `learning_rate`), 'exponential' (linear warmup over
  `warmup_epochs`, then the peak times `decay_rate`^(epochs since the warmup), decaying
  smoothly step by step) or 'noam' (`noam_schedule` with factor `learning_rate`,
  `warmup_steps`, and the extra decay after `noam_decay_epochs`)."""
  train_config = config.train
  if train_config.schedule == "noam":
    return noam_schedule(train_config.learning_rate, config.model.d_model,
                         train_config.warmup_steps,
                         int(train_config.noam_decay_epochs * steps_per_epoch),
                         train_config.noam_decay_rate)
  peak = train_config.learning_rate
  warmup = int(train_config.warmup_epochs * steps_per_epoch)
  if train_config.schedule == "exponential":
    return optax.warmup_exponential_decay_schedule(
        init_value=0.0, peak_value=peak, warmup_steps=warmup,
        transition_steps=max(int(steps_per_epoch), 1), decay_rate=train_config.decay_rate)
  total = max(int(train_config.num_epochs * steps_per_epoch), warmup + 1)
  cycles = max(int(train_config.cosine_restarts), 1)
  cycle_len = max((total - warmup) // cycles, 1)
  schedules = [optax.linear_schedule(0.0, peak, warmup)] if warmup else []
  schedules += [optax.cosine_decay_schedule(peak, cycle_len, alpha=0.01)
                for _ in range(cycles)]
  boundaries = [warmup + k * cycle_len for k in range(cycles)]
  return optax.join_schedules(schedules, boundaries[1:] if not warmup else boundaries)


def frozen_labels(params: Any, freeze: str) -> dict[str, str]:
  """Top-level parameter subtree -> "frozen" | "trainable" for `optax.multi_transform`:
  with `freeze` = "encoder" the model's `encoder` subtree (the graph encoder; the
  crystal context and the decoder stay trainable) is frozen."""
  return {name: "frozen" if name == freeze else "trainable" for name in params}


def create_optimizer(train_config: ml_collections.ConfigDict,
                     learning_rate_fn: optax.Schedule) -> optax.GradientTransformation:
  """`train_config.optimizer` (adam | adamw | sgd with momentum 0.9) after clipping the
  gradients to global norm `grad_clip`.

  With `train_config.freeze` = "encoder" the encoder's updates are zero
  (`optax.set_to_zero`: no step, no weight decay) and the optimizer, clipping included,
  sees only the other parameters' gradients."""
  freeze, name = train_config.freeze, train_config.optimizer
  betas = {"b1": 0.9, "b2": train_config.adam_b2, "eps": train_config.adam_eps}
  if name == "adam":
    opt = optax.adam(learning_rate_fn, **betas)
  elif name == "adamw":
    opt = optax.adamw(learning_rate_fn, weight_decay=train_config.weight_decay, **betas)
  else:
    opt = optax.sgd(learning_rate_fn, momentum=0.9)
  # flatten: the optimizer works on one concatenated vector, which cuts the train
  # step's compile time by ~2 s (fewer, larger ops) at the same step speed.
  tx = optax.flatten(optax.chain(optax.clip_by_global_norm(train_config.grad_clip), opt))
  if freeze == "none":
    return tx
  return optax.multi_transform({"trainable": tx, "frozen": optax.set_to_zero()},
                               lambda params: frozen_labels(params, freeze))
