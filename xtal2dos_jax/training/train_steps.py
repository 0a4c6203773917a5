"""The train, eval and predict steps: pure functions run inside `jax.pmap` over `AXIS`.

The global batch is split into one padded device batch per device (see
`batching.epoch_plan`); the per-device loss is the sum of its crystals' losses
divided by the global crystal count, and gradients are `psum`-ed, so any split of a
global batch over 1..N devices gives the same update (BUILD_NOTES.md, "Multi-device,
multi-process").
Metrics are additive sums, `psum`-ed across devices and added across batches on the
host. `train.Trainer` compiles them for one config.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from xtal2dos_jax import models
from xtal2dos_jax.input_pipeline import batching
from xtal2dos_jax.objectives import metrics
from xtal2dos_jax.training.model_setup import TrainState

AXIS = "batch"
# Flax collection of extra training-loss terms: a module may `self.sow(AUX_LOSS, name,
# value)` with value float32[G], one term per crystal of the batch (e.g. a latent-space
# KL), which the train step adds to the per-crystal loss before masking and summing.
# Evaluation reports the DoS loss alone.
AUX_LOSS = "aux_loss"


def update_ema(ema_params, params, step: jax.Array, decay: float):
  """ema <- d * ema + (1 - d) * params with d = min(decay, (1 + step) / (10 + step)),
  so the average is not dominated by the initial weights early in training."""
  d = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
  return jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, ema_params, params)


def train_step(state: TrainState, batch: batching.Batch, *, loss_fn: Callable,
               ema_decay: float = 0.0) -> tuple[TrainState, dict[str, jax.Array]]:
  """One data-parallel step (inside pmap over AXIS).

  `loss_fn(y, raw)` is the per-crystal loss of the raw model output
  (`losses.loss_on_raw_outputs`), plus any per-crystal terms the model sows into
  `AUX_LOSS`. Returns the new state and the global loss sum, crystal
  count and `finite` (bool: the loss and every gradient were finite; the host stops
  the run at the first step where it is False).
  """
  dropout_rng = jax.random.fold_in(jax.random.fold_in(state.rng, state.step),
                                   jax.lax.axis_index(AXIS))
  mask = batch.graph_mask
  count = jax.lax.psum(jnp.sum(mask.astype(jnp.float32)), AXIS)

  def loss(params):
    raw, extra = state.apply_fn({"params": params}, batch, train=True, raw=True,
                                rngs={"dropout": dropout_rng}, mutable=[AUX_LOSS])
    per_crystal = loss_fn(batch.y, raw) + sum(jax.tree.leaves(extra.get(AUX_LOSS, {})))
    total = jnp.sum(jnp.where(mask, per_crystal, 0.0))
    return total / jnp.maximum(count, 1.0), total

  (_, total), grads = jax.value_and_grad(loss, has_aux=True)(state.params)
  grads = jax.lax.psum(grads, AXIS)
  loss_sum = jax.lax.psum(total, AXIS)
  finite = jnp.isfinite(loss_sum) & jnp.isfinite(optax.global_norm(grads))
  state = state.apply_gradients(grads=grads)
  if state.ema_params is not None:
    state = state.replace(ema_params=update_ema(state.ema_params, state.params,
                                                state.step.astype(jnp.float32), ema_decay))
  return state, {"loss_sum": loss_sum, "count": count, "finite": finite}


def member_train_step(state: TrainState, batch: batching.Batch, *, loss_fn: Callable,
                      ema_decay: float = 0.0) -> tuple[TrainState, dict[str, jax.Array]]:
  """`train_step` for one ensemble member (mapped over the member axis by jax.vmap):
  a step in which the member has no crystal (its epoch plan was shorter than another
  member's, `batching.ensemble_plan`) leaves its state unchanged, so each member
  follows exactly the steps a single run with its seed takes."""
  new_state, out = train_step(state, batch, loss_fn=loss_fn, ema_decay=ema_decay)
  keep = out["count"] > 0
  state = jax.tree.map(lambda new, old: jnp.where(keep, new, old), new_state, state)
  return state, out


def eval_step(params, batch: batching.Batch, shift_normalized, shift_original, *,
              apply_fn, loss_fn, scaler, output_activation: str,
              ensemble: bool = False) -> dict[str, Any]:
  """Additive loss and metric sums of one step, on both label scales (inside pmap).

  The loss is the training loss of the raw output; the metrics compare the predictions
  as `LabelScaler.metric_predictions` gives them on each scale. For an ensemble
  (`params` stacked on a member axis) the loss is the members' mean loss and the
  metrics are those of the members' mean prediction.
  """
  if ensemble:
    raw = jax.vmap(lambda p: apply_fn({"params": p}, batch, train=False, raw=True))(params)
    per_crystal_loss = jax.vmap(lambda r: loss_fn(batch.y, r))(raw).mean(0)
    output = models.apply_output_activation(raw, output_activation).mean(0)
  else:
    raw = apply_fn({"params": params}, batch, train=False, raw=True)
    per_crystal_loss = loss_fn(batch.y, raw)
    output = models.apply_output_activation(raw, output_activation)
  pred, pred_orig = scaler.metric_predictions(output, batch.y_scale)
  mask = batch.graph_mask
  y_orig = scaler.inverse(batch.y, batch.y_scale)
  out = {
      "loss_sum": jnp.sum(jnp.where(mask, per_crystal_loss, 0.0)),
      "normalized": metrics.batch_stats(batch.y, pred, mask, shift_normalized),
      "original": metrics.batch_stats(y_orig, pred_orig, mask, shift_original),
  }
  return jax.lax.psum(out, AXIS)


def predict_step(params, batch: batching.Batch, *, apply_fn, ensemble: bool = False
                 ) -> jax.Array:
  """Model output on the scaled label scale, float[G, l_y] per device (float[K, G, l_y]
  for an ensemble's K members)."""
  if ensemble:
    return jax.vmap(lambda p: apply_fn({"params": p}, batch, train=False))(params)
  return apply_fn({"params": params}, batch, train=False)
