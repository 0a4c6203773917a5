"""What a run keeps on disk, so evaluate/predict need only `--workdir`.

    workdir/config.json        the run's config (a rerun with another config is refused)
    workdir/run.json           seed, package versions, devices, start time
    workdir/splits.json        crystal ids per split (evaluate uses exactly this test set)
    workdir/label_scaler.json  label scaling and its statistics
    workdir/skipped.json       inputs left out, with reasons
    workdir/metrics.jsonl      one line per epoch
    workdir/events.out.tfevents.xtal2dos_jax   the same metrics for TensorBoard
    workdir/results.json       final metrics; its presence marks a finished run
    workdir/checkpoints/{latest,best}/<step>   Orbax checkpoints

Every JSON file is written atomically (temp file + rename), with the mode a plain
open() would give under the umask, and Orbax commits a checkpoint only once it is
complete, so a run killed at any moment leaves either the old or the new file,
never a torn one.
"""
from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import math
import os
import shutil
import tempfile
import threading
import time
from typing import IO, Any, Callable, NamedTuple

from absl import logging
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from xtal2dos_jax import labels, tensorboard
from xtal2dos_jax.errors import InputError

# Config entries that may differ between a run and its resumption.
_MUTABLE_KEYS = {"train.progress"}
# Config keys added after runs were saved, with the value those runs used implicitly, so
# an older workdir still resumes and is still recognised as the same config.
_ADDED_KEYS = {"data.train_fraction": 1.0, "data.num_folds": 0, "data.fold": 0,
               "train.adam_b2": 0.999, "train.adam_eps": 1e-8, "train.schedule": "cosine",
               "train.warmup_steps": 300, "train.noam_decay_epochs": 0,
               "train.noam_decay_rate": 4.0, "model.composition_activation": "none",
               "model.mlp_energy_embedding": False, "model.source_attention": True}
# Checkpoint step ids are epoch * _STEPS_PER_EPOCH_ID + step in epoch (`_checkpoint_step`).
_STEPS_PER_EPOCH_ID = 1_000_000
# Subdirectories of `<workdir>/checkpoints` holding the two Orbax managers' steps.
_CHECKPOINT_KINDS = ("latest", "best")
_PACKAGES = ("xtal2dos_jax", "jax", "jaxlib", "flax", "optax", "jraph", "orbax-checkpoint", "ase",
             "numpy", "ml-collections")


_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
  """The process umask. Read from /proc/self/status where Linux provides it, since
  os.umask can only be read by setting it, which races with other threads creating
  files; elsewhere it is swapped briefly (under a lock, to the restrictive 0o077)."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("Umask:"):
          return int(line.split()[1], 8)
  except (OSError, ValueError, IndexError):
    pass
  with _UMASK_LOCK:
    mask = os.umask(0o077)
    os.umask(mask)
  return mask


def mkstemp_like_open(directory: str, suffix: str = ".tmp") -> tuple[int, str]:
  """`tempfile.mkstemp` in `directory`, with the file's mode set to what a plain
  `open(path, "w")` gives (0o666 & ~umask) instead of mkstemp's 0600.

  Files written to a temp file and renamed into place keep the temp file's mode, so
  without this every config.json / results.json would be unreadable to collaborators
  on a shared filesystem whatever their umask allows."""
  fd, tmp = tempfile.mkstemp(dir=directory, suffix=suffix)
  try:
    os.fchmod(fd, 0o666 & ~current_umask())
  except BaseException:
    os.close(fd)
    os.remove(tmp)
    raise
  return fd, tmp


def _write_atomic(path: str, write: Callable[[IO[str]], None]) -> None:
  """Calls `write(file)` on a temp file in `path`'s directory, then renames it to
  `path`, so a kill or a full disk leaves the old or the new file, never a torn one;
  the mode follows the umask (see `mkstemp_like_open`)."""
  fd, tmp = mkstemp_like_open(os.path.dirname(os.path.abspath(path)))
  try:
    with os.fdopen(fd, "w") as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_text_atomic(path: str, text: str) -> None:
  """`text` at `path`, atomically (see `_write_atomic`)."""
  _write_atomic(path, lambda f: f.write(text))


def write_json_atomic(path: str, obj: Any) -> None:
  """`obj` as indented JSON at `path`, atomically (see `_write_atomic`)."""
  _write_atomic(path, lambda f: json.dump(obj, f, indent=1))


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    key = f"{prefix}{k}"
    if isinstance(v, dict):
      out.update(_flatten(v, key + "."))
    else:
      out[key] = list(v) if isinstance(v, tuple) else v
  return out


def config_to_dict(config: ml_collections.ConfigDict) -> dict:
  return json.loads(config.to_json())


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run in `workdir` was trained with; keys added to the configs since
  it was saved get the value that run used implicitly (`_ADDED_KEYS`)."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise InputError(workdir, "is not a training workdir (no config.json); train first with "
                     "python -m experiments.train --workdir=...")
  try:
    with open(path) as f:
      saved = json.load(f)
  except (OSError, ValueError) as e:
    raise InputError(path, f"unreadable run config ({e})") from None
  for key, value in _ADDED_KEYS.items():
    *parents, leaf = key.split(".")
    section = saved
    for name in parents:
      section = section.setdefault(name, {})
    section.setdefault(leaf, value)
  return ml_collections.ConfigDict(saved)


def package_versions() -> dict[str, str]:
  out = {}
  for name in _PACKAGES:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = "not installed"
  return out


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


class Workdir:
  """The files of one run (see the module docstring)."""

  def __init__(self, path: str):
    self.path = path
    self.checkpoint_dir = os.path.join(os.path.abspath(path), "checkpoints")

  def file(self, name: str) -> str:
    return os.path.join(self.path, name)

  def prepare(self, config: ml_collections.ConfigDict, overwrite: bool = False) -> dict | None:
    """Creates or validates the workdir; returns saved results if the run finished."""
    try:
      os.makedirs(self.path, exist_ok=True)
      probe = self.file(".write_probe")
      with open(probe, "w") as f:
        f.write("ok")
      os.remove(probe)
    except OSError as e:
      raise InputError(self.path, f"workdir is not writable ({e.strerror or e})") from None
    new = config_to_dict(config)
    if overwrite:
      self._clear()
    elif os.path.exists(self.file("config.json")):
      old = config_to_dict(load_config(self.path))
      a, b = ({**_ADDED_KEYS, **_flatten(old)}, {**_ADDED_KEYS, **_flatten(new)})
      diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in _MUTABLE_KEYS)
      if diff and self._trained_nothing():
        # An earlier attempt stopped before its first epoch (e.g. on a bad config value):
        # its files describe no training, so the corrected command starts afresh.
        logging.info("%s: replacing the config of an attempt that trained nothing", self.path)
        self._clear()
      elif diff:
        shown = ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in diff[:4])
        raise InputError(self.path, f"holds a run with a different config ({shown}); use another "
                         "--workdir, or --overwrite to discard that run")
      if os.path.exists(self.file("results.json")):
        with open(self.file("results.json")) as f:
          return json.load(f)
    if jax.process_index() == 0:
      write_json_atomic(self.file("config.json"), new)
      if not os.path.exists(self.file("run.json")):
        write_json_atomic(self.file("run.json"), {
            "seed": config.seed, "versions": package_versions(),
            "devices": jax.device_count(), "processes": jax.process_count(),
            "platform": jax.default_backend(), "started": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return None

  def _trained_nothing(self) -> bool:
    """No results, no epoch in metrics.jsonl and no saved checkpoint step."""
    if os.path.exists(self.file("results.json")):
      return False
    metrics = self.file("metrics.jsonl")
    if os.path.exists(metrics) and os.path.getsize(metrics) > 0:
      return False
    for kind in _CHECKPOINT_KINDS:
      directory = os.path.join(self.checkpoint_dir, kind)
      if os.path.isdir(directory) and os.listdir(directory):
        return False
    return True

  def _clear(self) -> None:
    for name in ("config.json", "run.json", "splits.json", "label_scaler.json", "skipped.json",
                 "metrics.jsonl", "results.json"):
      if os.path.exists(self.file(name)):
        os.remove(self.file(name))
    tensorboard.remove(self.path)
    shutil.rmtree(self.checkpoint_dir, ignore_errors=True)

  def load_splits(self) -> dict[str, list[str]] | None:
    path = self.file("splits.json")
    if not os.path.exists(path):
      return None
    with open(path) as f:
      return json.load(f)

  def load_scaler(self) -> labels.LabelScaler | None:
    path = self.file("label_scaler.json")
    if not os.path.exists(path):
      return None
    with open(path) as f:
      return labels.LabelScaler.from_dict(json.load(f))

  def save_data_description(self, run_data) -> None:
    write_json_atomic(self.file("splits.json"), run_data.split_ids)
    write_json_atomic(self.file("label_scaler.json"), run_data.scaler.to_dict())
    write_json_atomic(self.file("skipped.json"), [list(s) for s in run_data.skipped])

  def append_metrics(self, record: dict) -> None:
    with open(self.file("metrics.jsonl"), "a") as f:
      f.write(json.dumps(record) + "\n")
      f.flush()
    tensorboard.append_epoch(self.path, record)

  def truncate_metrics(self, epochs: int) -> None:
    """Keeps the metrics of the first `epochs` epochs: lines written after the last
    checkpoint by a run that was then killed are dropped (they are redone)."""
    path = self.file("metrics.jsonl")
    if not os.path.exists(path):
      return
    kept = []
    with open(path) as f:
      for line in f:
        try:
          record = json.loads(line)
          if record["epoch"] <= epochs:
            kept.append(record)
        except (ValueError, KeyError):
          continue  # a line torn by a kill mid-write
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))
    tensorboard.truncate(self.path, kept)

  def save_results(self, results: dict) -> None:
    write_json_atomic(self.file("results.json"), results)


class RestoredCheckpoint(NamedTuple):
  """Which checkpoint `Checkpoints.restore_best` restored."""
  kind: str     # "best", or "latest" when checkpoints/best holds none
  epoch: int    # completed epochs of the restored state
  step: int     # Orbax step (see `_checkpoint_step`)

  def to_json(self) -> dict:
    return self._asdict()


class Checkpoints:
  """Orbax managers for the latest and the best (lowest validation loss) states."""

  def __init__(self, directory: str, keep: int = 2):
    self.directory = directory
    self.restored: RestoredCheckpoint | None = None
    opts = dict(create=True, enable_async_checkpointing=False)
    latest, best = _CHECKPOINT_KINDS
    self.latest = ocp.CheckpointManager(
        os.path.join(directory, latest),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, **opts))
    self.best = ocp.CheckpointManager(
        os.path.join(directory, best),
        options=ocp.CheckpointManagerOptions(max_to_keep=1, best_fn=lambda m: m["score"],
                                             best_mode="min", **opts))

  @staticmethod
  def _args(state, progress: ResumeState):
    return ocp.args.Composite(state=ocp.args.StandardSave(_state_tree(state)),
                              progress=ocp.args.JsonSave(progress.to_json()))

  def save(self, state, progress: ResumeState) -> None:
    step = _checkpoint_step(progress)
    if step in self.latest.all_steps():
      return
    self.latest.save(step, args=self._args(state, progress))
    self.latest.wait_until_finished()

  def save_best(self, state, progress: ResumeState, score: float) -> None:
    """Keeps `state` as the best checkpoint; `score` is the validation score (lower
    is better, see train.VALIDATION_SCORES)."""
    if _checkpoint_step(progress) in self.best.all_steps():
      return  # saved before a kill; the resumed run reached the same point again
    self.best.save(_checkpoint_step(progress), args=self._args(state, progress),
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
    step = self.latest.latest_step()
    return None if step is None else self._restore(self.latest, step, template)

  def restore_best(self, template) -> ResumeState:
    """The best checkpoint; if `checkpoints/best` holds none (deleted, or a run killed
    before its first validation), the latest one, with a warning naming its epoch.
    `self.restored` records which one was used, for evaluation outputs."""
    step = self.best.best_step()
    if step is not None:
      progress = self._restore(self.best, step, template)
      self.restored = RestoredCheckpoint("best", progress.epoch, int(step))
      return progress
    step = self.latest.latest_step()
    if step is None:
      raise InputError(self.directory, "holds no checkpoint; train first")
    progress = self._restore(self.latest, step, template)
    self.restored = RestoredCheckpoint("latest", progress.epoch, int(step))
    logging.warning("no best checkpoint in %s; evaluating the latest, epoch %d",
                    self.best.directory, progress.epoch)
    return progress

  def close(self) -> None:
    self.latest.close()
    self.best.close()


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


def last_checkpoint(checkpoint_dir: str) -> tuple[int, int] | None:
  """(epoch, step in epoch) of the newest committed checkpoint in
  `<checkpoint_dir>/latest`, from the step directory names alone (no Orbax, so it is
  safe from any thread); None if there is none. Orbax commits a step by renaming its
  temporary directory to the bare step number, so only all-digit names count."""
  try:
    names = os.listdir(os.path.join(checkpoint_dir, _CHECKPOINT_KINDS[0]))
  except OSError:
    return None
  steps = [int(n) for n in names if n.isdigit()]
  if not steps:
    return None
  return divmod(max(steps), _STEPS_PER_EPOCH_ID)


def _checkpoint_step(progress: ResumeState) -> int:
  # Unique, increasing id for (epoch, step in epoch): a mid-epoch preemption save
  # never collides with an end-of-epoch one.
  return progress.epoch * _STEPS_PER_EPOCH_ID + progress.step_in_epoch


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
