"""Exported models: a trained run reduced to what prediction needs, and the shipped ones.

`export.export_run` writes one model directory from a training workdir; `load_exported`
reads it back without touching the workdir or the training data. The package ships its models in
`xtal2dos_jax/pretrained/<name>/` (`models_dir`; `XTAL2DOS_PRETRAINED_DIR` points the
look-up elsewhere, e.g. at a test's temporary exports).

    <model>/config.json        the run's config (`workdir.load_config` reads it)
    <model>/label_scaler.json  the label scaling and its statistics
    <model>/setup.json         grid, training padding budget, l_y, ensemble size, storage
                               dtype, training elements, best epoch; for ensembles the
                               spread threshold and std scales (fitted on the validation
                               split) and the test coverage under them
    <model>/test_ids.json      ids of the run's test split (what the card's metrics cover)
    <model>/params.msgpack     the best checkpoint's evaluation parameters (the EMA ones
                               when the run kept an average), flax msgpack; no optimizer
                               state. An ensemble's leaves carry a leading member axis K.
    <model>/model_card.md      data, split sizes, recipe, test metrics, date, size

Members: K = config.train.ensemble_size (an absent key or 1 is a single model whose
parameters have no member axis); `ExportedModel.predict_members` vmaps the model over
the member axis when K > 1.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import serialization

from xtal2dos_jax import models
from xtal2dos_jax.core import paths
from xtal2dos_jax.core.errors import InputError
from xtal2dos_jax.input_pipeline import batching, labels
from xtal2dos_jax.training import model_setup
from xtal2dos_jax.training import workdir as workdir_lib

# The package directory of shipped models, one subdirectory each.
PACKAGE_DIR = paths.PRETRAINED_DIR
# Environment variable naming another directory to look models up in.
DIR_ENV = "XTAL2DOS_PRETRAINED_DIR"
# The model `Predictor.pretrained()` and the predict binary use when none is named.
DEFAULT = "phdos_dfpt"
PARAMS_FILE = "params.msgpack"
# Storage dtypes of the exported parameters (computation is always float32).
STORAGE_DTYPES = ("float32", "float16")
_FILES = ("config.json", "label_scaler.json", "setup.json", "test_ids.json", PARAMS_FILE)


def models_dir(directory: str | None = None) -> str:
  """Where models are looked up: `directory`, else $XTAL2DOS_PRETRAINED_DIR, else the
  package's `pretrained/`."""
  return directory or os.environ.get(DIR_ENV) or PACKAGE_DIR


def is_model_dir(path: str) -> bool:
  return all(os.path.isfile(os.path.join(path, f)) for f in ("config.json", "setup.json",
                                                              PARAMS_FILE))


def available(directory: str | None = None) -> list[str]:
  """Names of the exported models in `models_dir(directory)`, sorted."""
  root = models_dir(directory)
  if not os.path.isdir(root):
    return []
  return sorted(n for n in os.listdir(root) if is_model_dir(os.path.join(root, n)))


def model_path(name: str | None = None, directory: str | None = None) -> str:
  """The directory of model `name` (default `DEFAULT`).

  Raises InputError naming the model and listing the available ones (or saying that
  none is shipped yet).
  """
  root = models_dir(directory)
  name = name or DEFAULT
  path = os.path.join(root, name)
  if is_model_dir(path):
    return path
  names = available(directory)
  if not names:
    raise InputError(name, f"no exported model in {root} yet; train a run and export it "
                     "with python -m experiments.export --workdir=... --name=..., or predict "
                     "with --workdir")
  raise InputError(name, f"no such model in {root}; available: {', '.join(names)}")


# ---------------------------------------------------------------- parameters on disk

def _to_storage(params: Any, dtype: str) -> Any:
  """Host numpy leaves; floating leaves cast to the storage dtype."""
  def cast(x):
    x = np.asarray(x)
    return x.astype(dtype) if np.issubdtype(x.dtype, np.floating) else x
  return jax.tree.map(cast, serialization.to_state_dict(params))


def save_params(path: str, params: Any, dtype: str = "float32") -> None:
  """Writes `params` (a pytree of arrays) as flax msgpack, floats stored as `dtype` (one of
  STORAGE_DTYPES)."""
  with open(path, "wb") as f:
    f.write(serialization.msgpack_serialize(_to_storage(params, dtype)))


def load_params(path: str) -> Any:
  """The parameters of `save_params`, floating leaves as float32 numpy arrays."""
  try:
    with open(path, "rb") as f:
      tree = serialization.msgpack_restore(f.read())
  except (OSError, ValueError, TypeError) as e:
    raise InputError(path, f"unreadable model parameters ({e})") from None
  return jax.tree.map(lambda x: np.asarray(x, np.float32)
                      if np.issubdtype(np.asarray(x).dtype, np.floating) else np.asarray(x),
                      tree)


# ---------------------------------------------------------------- loading

@dataclasses.dataclass
class ExportedModel:
  """An exported model ready to predict.

  params: the evaluation parameters, float32 numpy leaves, with a leading member axis of
    size `num_members` when num_members > 1.
  training_elements: element symbols of the training crystals (None when not recorded).
  spread_threshold: relative ensemble spread above which a prediction is flagged
    "high_spread" (None: never flagged).
  std_scale: the factor each reported std is multiplied by (`uncertainty.fit_std_scales`
    on the validation split; empty: the raw spread).
  """
  path: str
  config: ml_collections.ConfigDict
  scaler: labels.LabelScaler
  grid: np.ndarray                 # float32[l_y]
  budget: batching.Budget          # the training run's padding budget
  params: Any
  num_members: int
  training_elements: list[str] | None
  spread_threshold: float | None
  setup: dict[str, Any]
  std_scale: dict[str, float] = dataclasses.field(default_factory=dict)
  _apply: Any = dataclasses.field(default=None, repr=False)

  def predict_members(self, part: batching.LabelledGraphs, budget: batching.Budget
                      ) -> np.ndarray:
    """Scaled predictions of every member, float32[K, n, l_y] in the order of part.graphs.

    One jitted eval-mode forward pass per padded batch of `budget` (one device; K > 1:
    vmapped over the members' parameters)."""
    if self._apply is None:
      model = models.create_model(self.config)

      def apply(params, batch):
        return model.apply({"params": params}, batch, train=False)
      self._apply = jax.jit(jax.vmap(apply, in_axes=(0, None)) if self.num_members > 1
                            else apply)
    batching.check_fits(part.graphs, budget)
    plan = batching.epoch_plan(part, budget, 1)
    out = np.zeros((self.num_members, len(part.graphs), self.config.data.l_y), np.float32)
    batches = batching.step_batches(part, budget, plan,
                                    edge_vectors=models.needs_edge_vectors(self.config))
    for step, batch in zip(plan, batches):
      pred = np.asarray(self._apply(self.params, jax.tree.map(lambda x: x[0], batch)))
      if self.num_members == 1:
        pred = pred[None]
      idx = step[0]
      out[:, idx] = pred[:, :len(idx)]
    return out


def load_exported(path: str) -> ExportedModel:
  """Reads an exported model directory (nothing else: no workdir, no dataset)."""
  if not is_model_dir(path):
    raise InputError(path, "is not an exported model (needs config.json, setup.json and "
                     f"{PARAMS_FILE}; see python -m experiments.export)")
  config = workdir_lib.load_config(path)
  scaler = workdir_lib.Workdir(path).load_scaler()
  if scaler is None:
    raise InputError(path, "has no label_scaler.json")
  try:
    with open(os.path.join(path, "setup.json")) as f:
      setup = json.load(f)
    grid = np.asarray(setup["grid"], np.float32)
    budget = batching.Budget(**{k: int(v) for k, v in setup["budget"].items()})
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise InputError(os.path.join(path, "setup.json"), f"unreadable model set-up ({e})") from None
  params = load_params(os.path.join(path, PARAMS_FILE))
  k = model_setup.ensemble_size(config)
  if k > 1:
    leading = {np.shape(x)[0] if np.ndim(x) else None for x in jax.tree.leaves(params)}
    if leading != {k}:
      raise InputError(path, f"config says {k} ensemble members but the parameters' leading "
                       f"axes are {sorted(map(str, leading))}")
  threshold = setup.get("spread_threshold")
  return ExportedModel(path, config, scaler, grid, budget, params, k,
                       setup.get("training_elements"),
                       None if threshold is None else float(threshold), setup,
                       {str(key): float(v) for key, v in (setup.get("std_scale") or {}).items()})


# ---------------------------------------------------------------- export


