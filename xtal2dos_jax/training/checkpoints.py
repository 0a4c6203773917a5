"""Orbax checkpoints of a run: the latest states and the best one, with the resume state.

    workdir/checkpoints/latest/<step>   periodic saves, plus one on SIGTERM mid-epoch
    workdir/checkpoints/best/<step>     the state of the best validation score

Each step holds two items: `state` (the saved part of the TrainState as host numpy
arrays, so any process of a multi-process run can save and restore it) and `progress`
(the `ResumeState` as JSON). Step ids encode (epoch, step in epoch), see
`checkpoint_step`. Orbax restores whatever shapes were saved, so every leaf is compared
with the template and a checkpoint of another model size is refused with the
parameter named.
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from xtal2dos_jax.core.errors import InputError
from xtal2dos_jax.training import workdir as workdir_lib


@dataclasses.dataclass(frozen=True)
class ResumeState:
  """Where a run stands; saved beside every checkpoint."""
  epoch: int = 0                 # completed epochs
  step_in_epoch: int = 0         # steps done in the current epoch (after a preemption)
  best_score: float = math.inf   # best validation score so far (lower is better)
  best_epoch: int = 0
  bad_epochs: int = 0            # epochs since the last validation improvement
  epoch_loss_sum: float = 0.0    # training-loss sum / crystal count of the steps done in
  epoch_count: float = 0.0       # the current epoch before a preemption
  state: Any = None              # the restored TrainState (not serialised)

  def replace(self, **kw) -> "ResumeState":
    return dataclasses.replace(self, **kw)

  def to_json(self) -> dict:
    d = dataclasses.asdict(self)
    d.pop("state")
    d["best_score"] = None if math.isinf(self.best_score) else self.best_score
    return d

  @classmethod
  def from_json(cls, d: dict, state) -> "ResumeState":
    d = dict(d)
    d["best_score"] = math.inf if d["best_score"] is None else d["best_score"]
    return cls(state=state, **d)


class RestoredCheckpoint(NamedTuple):
  """Which checkpoint `Checkpoints.restore_best` restored."""
  kind: str     # "best", or "latest" when checkpoints/best holds none
  epoch: int    # completed epochs of the restored state
  step: int     # Orbax step (see `checkpoint_step`)

  def to_json(self) -> dict:
    return self._asdict()


class Checkpoints:
  """Orbax managers for the latest and the best (lowest validation score) states."""

  def __init__(self, directory: str, keep: int = 2):
    """`directory`: the run's `checkpoints` folder; `keep`: latest steps kept."""
    self.directory = directory
    self.restored: RestoredCheckpoint | None = None
    opts = dict(create=True, enable_async_checkpointing=False)
    latest, best = workdir_lib.CHECKPOINT_KINDS
    self.latest = ocp.CheckpointManager(
        os.path.join(directory, latest),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, **opts))
    self.best = ocp.CheckpointManager(
        os.path.join(directory, best),
        options=ocp.CheckpointManagerOptions(max_to_keep=1, best_fn=lambda m: m["score"],
                                             best_mode="min", **opts))

  @staticmethod
  def _args(state, resume: ResumeState):
    return ocp.args.Composite(state=ocp.args.StandardSave(_state_tree(state)),
                              progress=ocp.args.JsonSave(resume.to_json()))

  def save(self, state, resume: ResumeState) -> None:
    step = checkpoint_step(resume)
    if step in self.latest.all_steps():
      return
    self.latest.save(step, args=self._args(state, resume))
    self.latest.wait_until_finished()

  def save_best(self, state, resume: ResumeState, score: float) -> None:
    """Keeps `state` as the best checkpoint; `score` is the validation score (lower
    is better, see metrics.VALIDATION_SCORES)."""
    if checkpoint_step(resume) in self.best.all_steps():
      return  # saved before a kill; the resumed run reached the same point again
    self.best.save(checkpoint_step(resume), args=self._args(state, resume),
                   metrics={"score": float(score)})
    self.best.wait_until_finished()

  def _restore(self, manager, step, template) -> ResumeState:
    try:
      restored = manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(_state_tree(template)),
          progress=ocp.args.JsonRestore()))
    except Exception as e:  # orbax raises many types for torn or mismatched trees
      raise InputError(os.path.join(manager.directory, str(step)),
                       f"checkpoint cannot be restored into this model ({type(e).__name__}: "
                       f"{str(e).splitlines()[0][:200] if str(e) else ''})") from None
    where = os.path.join(manager.directory, str(step))
    _check_same_shapes(restored.state, _state_tree(template), where)
    state = template.replace(**restored.state)
    return ResumeState.from_json(restored.progress, state)

  def restore_latest(self, template) -> ResumeState | None:
    """The newest checkpoint restored into `template` (a TrainState or its
    `jax.eval_shape`), or None if there is none."""
    step = self.latest.latest_step()
    return None if step is None else self._restore(self.latest, step, template)

  def restore_best(self, template) -> ResumeState:
    """The best checkpoint; if `checkpoints/best` holds none (deleted, or a run killed
    before its first validation), the latest one, with a warning naming its epoch.
    `self.restored` records which one was used, for evaluation outputs."""
    step = self.best.best_step()
    if step is not None:
      resume = self._restore(self.best, step, template)
      self.restored = RestoredCheckpoint("best", resume.epoch, int(step))
      return resume
    step = self.latest.latest_step()
    if step is None:
      raise InputError(self.directory, "holds no checkpoint; train first")
    resume = self._restore(self.latest, step, template)
    self.restored = RestoredCheckpoint("latest", resume.epoch, int(step))
    logging.warning("no best checkpoint in %s; evaluating the latest, epoch %d",
                    self.best.directory, resume.epoch)
    return resume

  def close(self) -> None:
    self.latest.close()
    self.best.close()


def restore_best_of(directory: str, template) -> tuple[ResumeState, RestoredCheckpoint]:
  """`Checkpoints(directory).restore_best(template)` and which checkpoint it restored, the
  managers closed again: what evaluate, predict, export and fine-tuning read of a run."""
  ckpt = Checkpoints(directory)
  try:
    return ckpt.restore_best(template), ckpt.restored
  finally:
    ckpt.close()


def _check_same_shapes(restored, expected, where: str) -> None:
  """Orbax restores whatever shapes were saved; a model of another size must not load."""
  got = dict(jax.tree_util.tree_flatten_with_path(restored)[0])
  for path, want in jax.tree_util.tree_flatten_with_path(expected)[0]:
    want = jax.ShapeDtypeStruct(np.shape(want), np.result_type(want)) \
        if not hasattr(want, "shape") else want
    have = got.get(path)
    if have is None or np.shape(have) != tuple(want.shape):
      raise InputError(where, f"checkpoint cannot be restored into this model: "
                       f"{jax.tree_util.keystr(path)} has shape "
                       f"{None if have is None else np.shape(have)}, the model expects "
                       f"{tuple(want.shape)} (a different model size or architecture?)")


def checkpoint_step(resume: ResumeState) -> int:
  """Unique, increasing Orbax step id for (epoch, step in epoch), so a mid-epoch
  preemption save never collides with an end-of-epoch one; `workdir.last_checkpoint`
  decodes it."""
  return resume.epoch * workdir_lib.STEPS_PER_EPOCH_ID + resume.step_in_epoch


def _state_tree(state) -> dict:
  """The saved part of a TrainState, as host numpy arrays (identical on every
  process, so any process can restore it)."""
  tree = {"step": state.step, "params": state.params, "opt_state": state.opt_state,
          "rng": state.rng}
  if state.ema_params is not None:
    tree["ema_params"] = state.ema_params
  if any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(tree)):
    return tree  # an abstract restore template
  return jax.device_get(tree)
