"""A trained run restored from its workdir alone, ready to evaluate or predict.

Restoring needs only the workdir: config, split ids, label scaler, set-up (grid, padding
budget), the evaluation splits' crystals and checkpoints are read from it (see
`workdir.py`); the model is built from the config (`model_setup.abstract_train_state`),
never from the dataset. Only the train split, which the workdir does not keep, is read
from the dataset (`rebuild_from_dataset`, with the saved split and label scaling).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from xtal2dos_jax.core.errors import InputError
from xtal2dos_jax.input_pipeline import batching, run_data
from xtal2dos_jax.training import model_setup
from xtal2dos_jax.training import checkpoints as checkpoints_lib
from xtal2dos_jax.training import train as train_lib
from xtal2dos_jax.training import workdir as workdir_lib


@dataclasses.dataclass
class LoadedRun:
  """A trained run ready to evaluate or predict: its config, compiled steps, and the
  restored parameters (the EMA ones when the run kept an average)."""
  config: ml_collections.ConfigDict
  trainer: train_lib.Trainer
  params: Any                                    # replicated over local devices
  checkpoint: checkpoints_lib.RestoredCheckpoint  # which one (best or latest), its epoch


def restore_run(workdir: str, config: ml_collections.ConfigDict, scaler,
                budget: batching.Budget) -> LoadedRun:
  """Builds the run's model from `config` and restores its best checkpoint into a
  template of `budget`'s shapes (`model_setup.abstract_train_state`)."""
  trainer = train_lib.Trainer(config, scaler)
  best, restored = checkpoints_lib.restore_best_of(
      workdir_lib.Workdir(workdir).checkpoint_dir,
      model_setup.abstract_train_state(config, budget))
  return LoadedRun(config, trainer, trainer.replicate(best.state.eval_params), restored)


def predict_members(loaded: LoadedRun, part: batching.LabelledGraphs,
                    budget: batching.Budget) -> np.ndarray:
  """Scaled predictions of every ensemble member, float32[K, n, l_y] in the order of
  part.graphs (K = 1 for a single model)."""
  out = loaded.trainer.predict(loaded.params, part, budget)
  return out if loaded.trainer.ensemble_size > 1 else out[None]


def _saved_scaler(run: workdir_lib.Workdir):
  scaler = run.load_scaler()
  if scaler is None:
    raise InputError(run.path, "has no saved label statistics; the run never started")
  return scaler


def rebuild_from_dataset(run: workdir_lib.Workdir, config: ml_collections.ConfigDict,
                          scaler) -> run_data.RunData:
  """The run's data from its dataset, with the saved split and label scaling."""
  split_ids = run.load_splits()
  if split_ids is None:
    raise InputError(run.path, "has no saved splits; the run never started")
  return run_data.prepare_run_data(config, jax.device_count(), split_ids=split_ids,
                                   scaler=scaler)


def load_eval_data(workdir: str, config: ml_collections.ConfigDict | None = None
                   ) -> run_data.EvalData:
  """The evaluation splits, grid and budget saved in `workdir` at the start of training;
  `config` is the run's, when the caller has loaded it already.

  A workdir trained before they were saved gets them once: the dataset is read with
  the saved split and scaler, and setup.json and eval_data/ are written (one log line).
  """
  run = workdir_lib.Workdir(workdir)
  config = config or workdir_lib.load_config(workdir)
  scaler = _saved_scaler(run)
  setup = run.load_setup()
  data = None if setup is None else run.load_eval_data(scaler, setup)
  if data is None:
    logging.info("%s has no setup.json / eval_data (trained before they were kept): reading "
                 "the dataset once to write them", workdir)
    run.save_data_description(rebuild_from_dataset(run, config, scaler))
    setup = run.load_setup()
    data = run.load_eval_data(scaler, setup)
  return data


def restore_run_and_data(workdir: str) -> tuple[LoadedRun, run_data.EvalData]:
  """A run's best checkpoint and its evaluation splits, from the workdir alone."""
  config = workdir_lib.load_config(workdir)
  data = load_eval_data(workdir, config)
  return restore_run(workdir, config, data.scaler, data.budget), data
