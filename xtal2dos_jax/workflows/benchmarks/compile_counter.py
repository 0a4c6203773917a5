"""Counting XLA compilations of the train / eval / predict steps.

A listener on JAX's backend-compile event attributes each compilation to the
`CountedStep` whose call triggered it (same thread, during the call). `TrainingRun`
wraps a `Trainer`'s three pmapped steps and trains as `train.train_and_evaluate` does;
`count_step_compiles` uses it to check that each step compiles once per padding bucket
and never again (the benchmark's compile rows and tests/workflows/test_benchmark.py).
"""
from __future__ import annotations

import dataclasses
import threading
import time
from typing import Any, Callable

import flax
import jax
import ml_collections
import numpy as np

from xtal2dos_jax.input_pipeline import batching, run_data
from xtal2dos_jax.training import model_setup, train

# Fired by JAX around every XLA backend compilation (or persistent-cache load) of an
# executable; see jax/_src/dispatch.py.
BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"

_WATCHERS: list[tuple[int, "CountedStep"]] = []
_LISTENER_INSTALLED = False


def _on_event_duration(event: str, duration: float, **kwargs) -> None:
  del kwargs
  if event != BACKEND_COMPILE_EVENT:
    return
  me = threading.get_ident()
  for thread, watcher in list(_WATCHERS):
    if thread == me:
      watcher.compiles += 1
      watcher.compile_seconds += duration


def install_listener() -> None:
  """Registers the compile-event listener with jax.monitoring (once per process)."""
  global _LISTENER_INSTALLED
  if not _LISTENER_INSTALLED:
    jax.monitoring.register_event_duration_secs_listener(_on_event_duration)
    _LISTENER_INSTALLED = True


def _signature(tree) -> tuple:
  """Static shape/dtype signature of a pytree of arrays (one per padding bucket)."""
  leaves, treedef = jax.tree.flatten(tree)
  return (str(treedef),) + tuple((np.shape(x), str(getattr(x, "dtype", type(x).__name__)))
                                 for x in leaves)


class CountedStep:
  """Wraps a (pmapped) step and counts the XLA compilations its calls trigger.

  Only compilations in the calling thread during a call are attributed, so helper
  compilations elsewhere (replicate, indexing, the prefetch thread) are not counted.
  A persistent-cache load counts as a compilation (it creates an executable too).
  `compile_seconds` is the XLA backend time of those compilations; `signatures` holds
  the distinct static shapes of the batch argument (`batch_arg`), i.e. padding buckets.
  """

  def __init__(self, fn: Callable, batch_arg: int = 1):
    install_listener()
    self.fn = fn
    self.batch_arg = batch_arg
    self.compiles = 0
    self.compile_seconds = 0.0
    self.calls = 0
    self.signatures: set[tuple] = set()

  def __call__(self, *args, **kwargs):
    self.calls += 1
    self.signatures.add(_signature(args[self.batch_arg]))
    entry = (threading.get_ident(), self)
    _WATCHERS.append(entry)
    try:
      return self.fn(*args, **kwargs)
    finally:
      _WATCHERS.remove(entry)


@dataclasses.dataclass
class EpochRecord:
  """One training epoch: wall seconds, real crystals, steps and compiles it triggered."""
  seconds: float
  crystals: int
  steps: int
  train_compiles: int
  eval_compiles: int

  @property
  def rate(self) -> float:
    return self.crystals / self.seconds


class TrainingRun:
  """A `Trainer` whose steps are counted, set up as `train_and_evaluate` does
  (`model_setup.create_train_state`, `Trainer.replicate`, shuffled epoch plans)."""

  def __init__(self, config: ml_collections.ConfigDict, rd: run_data.RunData,
               devices=None):
    self.config, self.rd = config, rd
    self.trainer = train.Trainer(config, rd.scaler, devices=devices)
    self.train_step = CountedStep(self.trainer.p_train_step)
    self.eval_step = CountedStep(self.trainer.p_eval_step)
    self.predict_step = CountedStep(self.trainer.p_predict_step)
    self.trainer.p_train_step = self.train_step
    self.trainer.p_eval_step = self.eval_step
    self.trainer.p_predict_step = self.predict_step
    self.train_data = rd.splits["train"]
    self.steps_per_epoch = len(self.trainer.plan(self.train_data, rd.budget))
    self.state = self.trainer.replicate(
        model_setup.create_train_state(config, rd.budget, self.steps_per_epoch))
    self.epoch = 0
    self.bin_width = rd.bin_width

  def train_epoch(self, *, sync_every_step: bool = True, validate: bool = True) -> EpochRecord:
    """One shuffled epoch through `Trainer.batches` (prefetching host pipeline).

    `sync_every_step` reads the step outputs back every step (`float(x[0])`), else only
    at the end, as train.py's loop does. Validation (optional) is outside the timing
    but inside the compile count.
    """
    trainer, budget = self.trainer, self.rd.budget
    plan = trainer.plan(self.train_data, budget, epoch=self.epoch, shuffle=True)
    crystals = sum(len(idx) for step in plan for idx in step)
    c_train, c_eval = self.train_step.compiles, self.eval_step.compiles
    state, outs = self.state, []
    t0 = time.perf_counter()
    for batch in trainer.batches(self.train_data, budget, plan):
      state, out = trainer.p_train_step(state, batch)
      if sync_every_step:
        out = jax.tree.map(lambda x: float(x[0]), out)
      outs.append(out)
    jax.block_until_ready((state, outs))
    seconds = time.perf_counter() - t0
    self.state = state
    self.epoch += 1
    if validate:
      self.evaluate(self.rd.splits["validation"])
    return EpochRecord(seconds, crystals, len(plan), self.train_step.compiles - c_train,
                       self.eval_step.compiles - c_eval)

  def evaluate(self, data: batching.LabelledGraphs, params=None) -> dict:
    """`Trainer.evaluate` of `data` with the current (or the given replicated) params."""
    return self.trainer.evaluate(self.state.params if params is None else params, data,
                                 self.rd.budget, self.bin_width)

  def rereplicated_params(self):
    """Parameters as evaluate/predict get them after a restore: unreplicate + replicate."""
    return self.trainer.replicate(flax.jax_utils.unreplicate(self.state.params))


def count_step_compiles(config: ml_collections.ConfigDict, num_epochs: int = 2,
                        rd: run_data.RunData | None = None) -> dict[str, Any]:
  """Compilations of the train and eval steps over `num_epochs` epochs of training.

  Follows `train.train_and_evaluate`: replicated state, shuffled epochs, validation after
  every epoch, then a final evaluation with re-replicated parameters (the restore-best
  path). Returns per-epoch train/eval compile counts, the final evaluation's compiles,
  totals, and the number of padding buckets (distinct batch shapes) each step saw.
  """
  if rd is None:
    rd = run_data.prepare_run_data(config, jax.device_count())
  run = TrainingRun(config, rd)
  records = [run.train_epoch() for _ in range(num_epochs)]
  before = run.eval_step.compiles
  run.evaluate(rd.splits["validation"], run.rereplicated_params())
  return {
      "train_per_epoch": [r.train_compiles for r in records],
      "eval_per_epoch": [r.eval_compiles for r in records],
      "eval_final_rereplicated": run.eval_step.compiles - before,
      "train_total": run.train_step.compiles,
      "eval_total": run.eval_step.compiles,
      "train_buckets": len(run.train_step.signatures),
      "eval_buckets": len(run.eval_step.signatures),
      "train_compile_seconds": run.train_step.compile_seconds,
      "eval_compile_seconds": run.eval_step.compile_seconds,
  }
