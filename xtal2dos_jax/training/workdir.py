"""What a run keeps on disk, so evaluate/predict need only `--workdir`.

    workdir/config.json        the run's config (a rerun with another config is refused)
    workdir/run.json           seed, package versions, devices, start time
    workdir/splits.json        crystal ids per split (evaluate uses exactly this test set)
    workdir/label_scaler.json  label scaling and its statistics
    workdir/skipped.json       inputs left out, with reasons
    workdir/setup.json         label grid, padding budget and l_y (model set-up without data)
    workdir/eval_data/<split>.npz         featurised crystals of the validation and test
                                          splits (graph_cache format)
    workdir/eval_data/<split>_labels.npz  their ids, labels (original scale) and crystal
                                          systems, so evaluation never reads the dataset
    workdir/metrics.jsonl      one line per epoch
    workdir/events.out.tfevents.xtal2dos_jax   the same metrics for TensorBoard
    workdir/results.json       final metrics; its presence marks a finished run
    workdir/checkpoints/{latest,best}/<step>   Orbax checkpoints (`checkpoints.py`)

Every JSON / npz file is written atomically (`core.atomic_io`: temp file + rename), with
the mode a plain open() would give under the umask, and Orbax commits a checkpoint only once it is
complete, so a run killed at any moment leaves either the old or the new file,
never a torn one.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import time
from typing import Any, NamedTuple

from absl import logging
import jax
import ml_collections
import numpy as np

from xtal2dos_jax.core.atomic_io import write_json_atomic, write_npz_atomic, write_text_atomic
from xtal2dos_jax.core.errors import InputError
from xtal2dos_jax.input_pipeline import batching, labels
from xtal2dos_jax.input_pipeline import run_data as run_data_lib
from xtal2dos_jax.input_pipeline.graph_cache import GraphSet
from xtal2dos_jax.training import config_check, tensorboard

# Config entries that may differ between a run and its resumption.
_MUTABLE_KEYS = {"train.progress"}
# Config keys added after runs were saved, with the value those runs used implicitly, so
# an older workdir still resumes and is still recognised as the same config.
_ADDED_KEYS = {"data.train_fraction": 1.0, "data.exclude_ids": "", "data.num_folds": 0, "data.fold": 0,
               "train.adam_b2": 0.999, "train.adam_eps": 1e-8, "train.schedule": "cosine",
               "train.warmup_steps": 300, "train.noam_decay_epochs": 0,
               "train.noam_decay_rate": 4.0, "model.composition_activation": "none",
               "model.mlp_energy_embedding": False, "model.source_attention": True,
               "train.ema_decay": 0.0,
               "train.decay_rate": 0.95, "train.patience_warmup_epochs": 0,
               "train.init_from": "", "train.freeze": "none", "train.ensemble_size": 1,
               "model.e3nn_irreps": "32x0e+32x0o+32x1e+32x1o",
               "model.e3nn_lmax": 1, "model.e3nn_num_basis": 10, "model.e3nn_radial_hidden": 64,
               "model.e3nn_num_neighbors": 28.0, "model.e3nn_variant": "chen2021",
               "model.mat2spec_latent_dim": 128, "model.mat2spec_num_components": 10,
               "model.mat2spec_emb_size": 512, "model.mat2spec_label_weight": 1.0,
               "model.mat2spec_kl_weight": 1.1, "model.mat2spec_contrastive_weight": 0.1,
               "model.mat2spec_temperature": 1.0, "model.dostransformer_prompt": "system",
               "model.dostransformer_prompt_free_weight": 0.0,
               "model.dostransformer_memory_norm": False, "model.atom_features": "cgcnn",
               "data.split_file": "", "train.monitor_test": False}
# Checkpoint step ids are epoch * STEPS_PER_EPOCH_ID + step in epoch
# (`checkpoints.checkpoint_step`); `last_checkpoint` decodes them.
STEPS_PER_EPOCH_ID = 1_000_000
# Subdirectories of `<workdir>/checkpoints` holding the two Orbax managers' steps.
CHECKPOINT_KINDS = ("latest", "best")
# Subdirectory holding the evaluation splits' crystals and labels.
EVAL_DATA_DIR = "eval_data"
_PACKAGES = ("xtal2dos_jax", "jax", "jaxlib", "flax", "optax", "jraph", "orbax-checkpoint", "ase",
             "numpy", "ml-collections")


class RunSetup(NamedTuple):
  """What building the model and its batches needs besides the config (`setup.json`)."""
  grid: np.ndarray          # float32[l_y], the DoS x-axis (cm^-1 or eV)
  budget: batching.Budget   # the training run's per-device padding budget

  @property
  def l_y(self) -> int:
    return len(self.grid)


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
  """The config a run (or an exported model) in `workdir` was trained with, as
  `read_config` gives it, checked by `config_check.validate`: what evaluate, predict,
  export and fine-tuning build from."""
  return config_check.validate(read_config(workdir))


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The config saved in `workdir`, unchecked; keys added to the configs since it was
  saved get the value that run used implicitly (`_ADDED_KEYS`)."""
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
      old = config_to_dict(read_config(self.path))
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
    for kind in CHECKPOINT_KINDS:
      directory = os.path.join(self.checkpoint_dir, kind)
      if os.path.isdir(directory) and os.listdir(directory):
        return False
    return True

  def _clear(self) -> None:
    for name in ("config.json", "run.json", "splits.json", "label_scaler.json", "skipped.json",
                 "setup.json", "metrics.jsonl", "results.json"):
      if os.path.exists(self.file(name)):
        os.remove(self.file(name))
    tensorboard.remove(self.path)
    shutil.rmtree(self.checkpoint_dir, ignore_errors=True)
    shutil.rmtree(self.file(EVAL_DATA_DIR), ignore_errors=True)

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

  def save_data_description(self, rd: run_data_lib.RunData) -> None:
    """What later runs of this workdir need from the data: split ids, label scaler,
    skipped inputs, the set-up (grid, budget) and the evaluation splits' crystals."""
    write_json_atomic(self.file("splits.json"), rd.split_ids)
    write_json_atomic(self.file("label_scaler.json"), rd.scaler.to_dict())
    write_json_atomic(self.file("skipped.json"), [list(s) for s in rd.skipped])
    self.save_setup(RunSetup(rd.grid, rd.budget))
    os.makedirs(self.file(EVAL_DATA_DIR), exist_ok=True)
    for name in run_data_lib.EVAL_SPLITS:
      part = rd.splits[name]
      part.graphs.save(self._eval_file(name, ""))
      extra = {} if part.crystal_system is None else {"crystal_system": part.crystal_system}
      write_npz_atomic(self._eval_file(name, "_labels"), ids=np.asarray(part.graphs.ids, str),
                       labels=np.asarray(rd.labels[name], np.float32), **extra)

  def save_setup(self, setup: RunSetup) -> None:
    write_json_atomic(self.file("setup.json"), {
        "l_y": setup.l_y, "grid": [float(g) for g in setup.grid],
        "budget": setup.budget._asdict()})

  def load_setup(self) -> RunSetup | None:
    """The saved grid and budget; None for a workdir trained before they were saved."""
    path = self.file("setup.json")
    if not os.path.exists(path):
      return None
    try:
      with open(path) as f:
        saved = json.load(f)
      grid = np.asarray(saved["grid"], np.float32)
      budget = batching.Budget(**{k: int(v) for k, v in saved["budget"].items()})
      if len(grid) != int(saved["l_y"]):
        raise ValueError(f"{len(grid)} grid points but l_y {saved['l_y']}")
    except (OSError, ValueError, KeyError, TypeError) as e:
      raise InputError(path, f"unreadable run set-up ({e})") from None
    return RunSetup(grid, budget)

  def _eval_file(self, split: str, suffix: str) -> str:
    return os.path.join(self.file(EVAL_DATA_DIR), f"{split}{suffix}.npz")

  def load_eval_data(self, scaler: labels.LabelScaler,
                     setup: RunSetup) -> run_data_lib.EvalData | None:
    """The evaluation splits as training saved them (`save_data_description`), labels
    scaled by `scaler`; None for a workdir trained before they were saved."""
    splits, original = {}, {}
    for name in run_data_lib.EVAL_SPLITS:
      graphs_path, labels_path = self._eval_file(name, ""), self._eval_file(name, "_labels")
      if not (os.path.exists(graphs_path) and os.path.exists(labels_path)):
        return None
      try:
        graphs, _ = GraphSet.load(graphs_path)
        with np.load(labels_path) as z:
          ids, y = z["ids"].tolist(), np.asarray(z["labels"], np.float32)
          systems = np.asarray(z["crystal_system"], np.int32) if "crystal_system" in z else None
      except (OSError, ValueError, KeyError, EOFError) as e:
        raise InputError(labels_path, f"unreadable evaluation data ({e})") from None
      if ids != graphs.ids or y.shape != (len(ids), setup.l_y):
        raise InputError(labels_path, f"does not match {graphs_path} ({len(ids)} ids, labels "
                         f"{y.shape}, {len(graphs)} crystals, l_y {setup.l_y})")
      splits[name] = run_data_lib.labelled(graphs, y, scaler, systems)
      original[name] = y
    return run_data_lib.EvalData(splits, original, scaler, setup.grid, setup.budget)

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


def last_checkpoint(checkpoint_dir: str) -> tuple[int, int] | None:
  """(epoch, step in epoch) of the newest committed checkpoint in
  `<checkpoint_dir>/latest`, from the step directory names alone (no Orbax, so it is
  safe from any thread); None if there is none. Orbax commits a step by renaming its
  temporary directory to the bare step number, so only all-digit names count."""
  try:
    names = os.listdir(os.path.join(checkpoint_dir, CHECKPOINT_KINDS[0]))
  except OSError:
    return None
  steps = [int(n) for n in names if n.isdigit()]
  if not steps:
    return None
  return divmod(max(steps), STEPS_PER_EPOCH_ID)
