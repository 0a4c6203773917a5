"""`Trainer` (the pmapped steps of one config) and `train_and_evaluate` (the loop).

The steps themselves are pure functions in `train_steps.py`. Schedules and optimizers
are in `optimizers.py`, checkpoints in `checkpoints.py`, SIGTERM handling in
`preemption.py`; the train state, built from the config and a padding budget, and
fine-tuning's initialisation from another run are in `model_setup.py`.
"""
from __future__ import annotations

import functools
import os
import time
from typing import Any, Iterable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from xtal2dos_jax import models
from xtal2dos_jax.core.errors import InputError
from xtal2dos_jax.input_pipeline import batching, run_data
from xtal2dos_jax.objectives import losses, metrics
from xtal2dos_jax.objectives.metrics import format_table
from xtal2dos_jax.training import config_check, model_setup, optimizers
from xtal2dos_jax.training import checkpoints as checkpoints_lib
from xtal2dos_jax.training import workdir as workdir_lib
from xtal2dos_jax.training.preemption import Preempted, StopFlag
from xtal2dos_jax.training.progress import ProgressBar
from xtal2dos_jax.training.train_steps import (AXIS, eval_step, member_train_step, predict_step,
                                               train_step)


class Trainer:
  """Compiled steps for one model/config, shared by train, evaluate and predict.

  For an ensemble (`config.train.ensemble_size` K > 1) the state carries a member axis
  after the device axis; the train step is `member_train_step` mapped over it (each
  member its own batch, from its own epoch plan), evaluation and prediction map the
  model over the members on shared batches.
  """

  def __init__(self, config: ml_collections.ConfigDict, scaler, devices=None):
    """`devices`: a subset of this process's devices (single-process only); by
    default every device of every process takes part."""
    self.config = config
    self.devices = devices or jax.local_devices()
    pmap_devices = devices  # None = all global devices, as multi-process pmap requires
    self.model = models.create_model(config)
    self.edge_vectors = models.needs_edge_vectors(config)   # Batch.edge_vectors filled
    self.output_activation = models.output_activation_for(config.data.scaling)
    self.loss_fn = losses.loss_on_raw_outputs(config.train.loss, self.output_activation)
    self.scaler = scaler
    self.member_seeds = model_setup.member_seeds(config)
    ensemble = self.ensemble_size > 1
    step = functools.partial(member_train_step if ensemble else train_step,
                             loss_fn=self.loss_fn, ema_decay=config.train.ema_decay)
    self.p_train_step = jax.pmap(jax.vmap(step) if ensemble else step,
                                 axis_name=AXIS, devices=pmap_devices, donate_argnums=(0,))
    self.p_eval_step = jax.pmap(
        functools.partial(eval_step, apply_fn=self.model.apply, loss_fn=self.loss_fn,
                          scaler=scaler, output_activation=self.output_activation,
                          ensemble=ensemble),
        axis_name=AXIS, devices=pmap_devices, in_axes=(0, 0, None, None))
    self.p_predict_step = jax.pmap(functools.partial(predict_step, apply_fn=self.model.apply,
                                                     ensemble=ensemble),
                                   axis_name=AXIS, devices=pmap_devices)

  @property
  def ensemble_size(self) -> int:
    return len(self.member_seeds)

  @property
  def num_local_devices(self) -> int:
    return len(self.devices)

  def replicate(self, tree):
    """Copies of `tree` on every local device, laid out exactly as pmap outputs are
    (same mesh axis name), so feeding them back to a step never recompiles it."""
    sharding = jax.sharding.NamedSharding(jax.sharding.Mesh(np.asarray(self.devices), (AXIS,)),
                                          jax.sharding.PartitionSpec(AXIS))
    n = len(self.devices)
    return jax.tree.map(
        lambda x: jax.device_put(np.broadcast_to(np.asarray(x), (n,) + np.shape(x)), sharding),
        tree)

  def _device_slice(self) -> slice:
    p = jax.process_index()
    return slice(p * self.num_local_devices, (p + 1) * self.num_local_devices)

  def batches(self, data: batching.LabelledGraphs, budget, plan) -> Iterable:
    return batching.step_batches(data, budget, plan, devices=self._device_slice(),
                                 edge_vectors=self.edge_vectors)

  def plan(self, data, budget, *, epoch: int = 0, shuffle: bool = False):
    """Steps of one group per participating device: every device of every process, or
    the `devices` subset given to a single-process Trainer. A shuffled (training) plan
    of an ensemble holds every member's groups, each member shuffled with its own seed
    (`batching.ensemble_plan`)."""
    num_devices = self.num_local_devices * jax.process_count()
    if shuffle and self.ensemble_size > 1:
      return batching.ensemble_plan([
          batching.epoch_plan(data, budget, num_devices, seed=seed, epoch=epoch, shuffle=True)
          for seed in self.member_seeds])
    return batching.epoch_plan(data, budget, num_devices, seed=self.config.seed,
                                     epoch=epoch, shuffle=shuffle)

  def evaluate(self, params_repl, data: batching.LabelledGraphs, budget,
               bin_width: float) -> dict[str, Any]:
    """Loss and metrics (both scales) over a whole split."""
    shift_n = jnp.asarray(data.y.mean(0))
    shift_o = jnp.asarray(np.asarray(self.scaler.inverse(data.y, data.y_scale)).mean(0))
    totals = []
    for batch in self.batches(data, budget, self.plan(data, budget)):
      totals.append(jax.tree.map(lambda x: np.asarray(x[0], np.float64),
                                 self.p_eval_step(params_repl, batch, shift_n, shift_o)))
    count = sum(t["normalized"]["count"] for t in totals)
    return {
        "loss": float(sum(t["loss_sum"] for t in totals) / max(count, 1.0)),
        "normalized": metrics.finalize(metrics.sum_stats(t["normalized"] for t in totals),
                                       bin_width),
        "original": metrics.finalize(metrics.sum_stats(t["original"] for t in totals),
                                     bin_width),
    }

  def predict(self, params_repl, data: batching.LabelledGraphs, budget) -> np.ndarray:
    """Scaled predictions float32[n, l_y] in the order of data.graphs (float32[K, n,
    l_y] for an ensemble's K members).

    In a multi-process run each process fills only the rows its own devices predicted
    (the others stay 0); the evaluate and predict binaries run as one process.
    """
    plan = self.plan(data, budget)
    k = self.ensemble_size
    out = np.zeros((k,) + data.y.shape, data.y.dtype)
    local = self._device_slice()
    for step, batch in zip(plan, self.batches(data, budget, plan)):
      pred = np.asarray(self.p_predict_step(params_repl, batch))
      pred = pred if k > 1 else pred[:, None]     # [devices, K, G, l_y]
      for d, idx in enumerate(step[local]):
        out[:, idx] = pred[d, :, :len(idx)]
    return out if k > 1 else out[0]


def _resident_mb() -> float:
  """Current resident memory of this process in MiB (Linux /proc; else peak RSS)."""
  try:
    with open("/proc/self/statm") as f:
      return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
  except (OSError, ValueError, IndexError):
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _all_finite(tree) -> bool:
  """True when every number in a (nested) metrics dict is finite."""
  return all(np.all(np.isfinite(np.asarray(x, np.float64))) for x in jax.tree.leaves(tree))


def _is_lead() -> bool:
  return jax.process_index() == 0


class Diverged(InputError):
  """The loss, a gradient or a validation metric became NaN/inf; nothing from that
  epoch on is saved (checkpoints, metrics line, results)."""


# Steps the divergence check trails the dispatch by: reading a step's `finite` flag
# waits for that step only, which has finished by the time two more are queued.
_CHECK_LAG = 2


def _step_finite(out) -> bool:
  """Whether one train step's loss and gradients were finite (every member's, for an
  ensemble); every device holds the same psum-ed flag: read device 0."""
  return bool(np.all(np.asarray(out["finite"][0])))


def _first_non_finite(outs: list, upto: int | None = None) -> int | None:
  """Index in `outs` (train-step outputs) of the first step whose loss or gradient was
  not finite, looking at outs[:upto]; None if all were finite."""
  for k, out in enumerate(outs[:upto]):
    if not _step_finite(out):
      return k
  return None


def _summed(outs: list, key: str) -> float:
  """Sum of a psum-ed train-step output over steps (and over an ensemble's members)."""
  return float(sum(np.sum(np.asarray(o[key][0], np.float64)) for o in outs))


def count_bad_epochs(bad_epochs: int, improved: bool, epoch: int, warmup_epochs: int) -> int:
  """Epochs without validation improvement after `epoch` (completed epochs, 1-based) for
  early stopping: reset by an improvement, and not counted during the first
  `warmup_epochs` epochs (`config.train.patience_warmup_epochs`), whose noisy early
  validation scores then cannot stop a run."""
  if improved or epoch <= warmup_epochs:
    return 0
  return bad_epochs + 1


def check_init_from(config: ml_collections.ConfigDict) -> None:
  """Refuses a fine-tuning source that is no directory, before any data is read."""
  if config.train.init_from and not os.path.isdir(config.train.init_from):
    raise InputError("config.train.init_from",
                     f"{config.train.init_from} is not a directory (a training workdir)")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       overwrite: bool = False) -> dict[str, Any]:
  """Trains (resuming if `workdir` holds a checkpoint), then reports val/test metrics.

  Returns the results dict written to `workdir/results.json`. A finished run is not
  retrained: its saved results are returned. Raises `Preempted` after SIGTERM.
  """
  config_check.validate(config)
  check_init_from(config)
  run = workdir_lib.Workdir(workdir)
  finished = run.prepare(config, overwrite=overwrite)
  if finished is not None:
    logging.info("run in %s already finished; its results:\n%s", workdir,
                 format_table(finished["metrics"]))
    return finished

  saved_splits = run.load_splits()
  saved_scaler = run.load_scaler()
  rd = run_data.prepare_run_data(config, jax.device_count(), split_ids=saved_splits,
                                 scaler=saved_scaler)
  if _is_lead():
    run.save_data_description(rd)
  bin_width = rd.bin_width
  trainer = Trainer(config, rd.scaler)
  train_data, val_data = rd.splits["train"], rd.splits["validation"]
  steps_per_epoch = len(trainer.plan(train_data, rd.budget))
  learning_rate_fn = optimizers.create_learning_rate_fn(config, steps_per_epoch)
  state = model_setup.create_train_state(config, rd.budget, steps_per_epoch)
  ckpt = checkpoints_lib.Checkpoints(run.checkpoint_dir, keep=config.train.keep_checkpoints)
  resume = ckpt.restore_latest(state)
  if resume is None:
    resume = checkpoints_lib.ResumeState()
    if config.train.init_from:  # a resumed run continues from its own weights instead
      state = model_setup.init_from_run(state, config.train.init_from)
      logging.info("initialised from the best checkpoint of %s", config.train.init_from)
  else:
    state = resume.state
    logging.info("resuming from epoch %d step %d (global step %d)", resume.epoch,
                 resume.step_in_epoch, int(state.step))
  if _is_lead():
    run.truncate_metrics(resume.epoch)
  n_params = models.count_params(state.params)
  logging.info("model: %s encoder, %s decoder, %d parameters%s; %d train / %d val / %d test; "
               "budget %s; %d devices", config.model.encoder, config.model.decoder, n_params,
               f" ({trainer.ensemble_size} members)" if trainer.ensemble_size > 1 else "",
               len(train_data.graphs), len(val_data.graphs), len(rd.splits["test"].graphs),
               rd.budget, jax.device_count())
  state_repl = trainer.replicate(state)

  with StopFlag() as stop:
    epoch = resume.epoch
    while epoch < config.train.num_epochs and resume.bad_epochs < config.train.patience:
      plan = trainer.plan(train_data, rd.budget, epoch=epoch, shuffle=True)
      start_step = resume.step_in_epoch
      bar = ProgressBar(len(plan), f"epoch {epoch + 1}/{config.train.num_epochs}",
                        enabled=config.train.progress and _is_lead())
      bar.count = start_step
      t0 = time.perf_counter()
      outs = []  # device scalars; summed once per epoch so dispatch never waits on the host

      def diverged(k: int) -> Diverged:
        return Diverged("training", f"non-finite loss or gradient at epoch {epoch + 1} step "
                        f"{start_step + k + 1} of {len(plan)}; stopped, nothing from this "
                        f"epoch is saved (last checkpoint: epoch {resume.epoch}); lower "
                        f"config.train.learning_rate (now {config.train.learning_rate:g}) "
                        "or check the labels")

      for s, batch in enumerate(trainer.batches(train_data, rd.budget, plan[start_step:]),
                                start=start_step):
        state_repl, out = trainer.p_train_step(state_repl, batch)
        outs.append(out)
        if len(outs) > _CHECK_LAG and not _step_finite(outs[-1 - _CHECK_LAG]):
          raise diverged(_first_non_finite(outs))
        bar.update(batching.step_crystals(plan[s]))
        if stop.requested:
          done = jax.device_get(outs)
          if _first_non_finite(done) is not None:
            raise diverged(_first_non_finite(done))
          resume = resume.replace(
              epoch=epoch, step_in_epoch=s + 1,
              epoch_loss_sum=resume.epoch_loss_sum + _summed(done, "loss_sum"),
              epoch_count=resume.epoch_count + _summed(done, "count"))
          ckpt.save(flax.jax_utils.unreplicate(state_repl), resume)
          ckpt.close()
          raise Preempted(f"preempted at epoch {epoch + 1} step {s + 1}; rerun to resume")
      outs = jax.device_get(outs)  # every device holds the psum-ed totals: read device 0
      if _first_non_finite(outs) is not None:
        raise diverged(_first_non_finite(outs))
      # (plus what the steps before a preemption of this epoch contributed)
      loss_sum = resume.epoch_loss_sum + _summed(outs, "loss_sum")
      count = resume.epoch_count + _summed(outs, "count")
      train_seconds = time.perf_counter() - t0
      val = trainer.evaluate(state_repl.eval_params, val_data, rd.budget, bin_width)
      if not _all_finite(val):
        raise Diverged("training", f"validation loss/metrics are not finite after epoch "
                       f"{epoch + 1}; stopped, nothing from this epoch is saved (last "
                       f"checkpoint: epoch {resume.epoch})")
      bar.close(f"loss {loss_sum / max(count, 1):.4g} val {val['loss']:.4g} "
                f"val R^2 {val['normalized']['r2']:.3f}")
      epoch += 1
      score = metrics.VALIDATION_SCORES[config.train.select_on](val)
      improved = score < resume.best_score
      resume = resume.replace(
          epoch=epoch, step_in_epoch=0, epoch_loss_sum=0.0, epoch_count=0.0,
          best_score=min(score, resume.best_score),
          best_epoch=epoch if improved else resume.best_epoch,
          bad_epochs=count_bad_epochs(resume.bad_epochs, improved, epoch,
                                      config.train.patience_warmup_epochs))
      step = int(np.max(state_repl.step[0]))  # an ensemble's members may differ by a step
      record = {"epoch": epoch, "step": step,
                "train_loss": loss_sum / max(count, 1.0), "val_loss": val["loss"],
                "val": {k: val[k] for k in ("normalized", "original")},
                "learning_rate": float(learning_rate_fn(step)),
                "train_seconds": train_seconds,
                "train_crystals_per_s": count / trainer.ensemble_size / max(train_seconds, 1e-9),
                "rss_mb": _resident_mb(), "wall_time": time.time()}
      # Metrics first, checkpoint second: a kill in between repeats this epoch on
      # resume, and the resumed run first drops lines past its checkpoint.
      if config.train.monitor_test:   # recorded only; selection never reads it
        test = trainer.evaluate(state_repl.eval_params, rd.splits["test"], rd.budget, bin_width)
        record["test_monitor"] = {"loss": test["loss"],
                                  **{k: test[k] for k in ("normalized", "original")}}
      if _is_lead():
        run.append_metrics(record)
      state_host = flax.jax_utils.unreplicate(state_repl)
      if improved:
        ckpt.save_best(state_host, resume, score)
      if epoch % config.train.checkpoint_every == 0 or epoch == config.train.num_epochs:
        ckpt.save(state_host, resume)

  state_host = flax.jax_utils.unreplicate(state_repl)
  ckpt.save(state_host, resume)
  best = ckpt.restore_best(state_host)
  params_repl = trainer.replicate(best.state.eval_params)
  results = {split: trainer.evaluate(params_repl, rd.splits[split], rd.budget, bin_width)
             for split in ("validation", "test")}
  ckpt.close()
  if not _all_finite(results):
    raise Diverged("results", f"the best checkpoint (epoch {resume.best_epoch}) gives "
                   "non-finite validation/test metrics; results.json not written")
  summary = {"metrics": results, "best_epoch": resume.best_epoch, "epochs_run": resume.epoch,
             "num_params": n_params}
  if _is_lead():
    run.save_results(summary)
  logging.info("best epoch %d; metrics:\n%s", resume.best_epoch, format_table(results))
  return summary
