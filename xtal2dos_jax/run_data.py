"""The datasets of one run: read, featurise (cached), split, scale, budget.

`prepare_run_data` turns a config into batched-ready splits. A new run draws a
seeded split and fits the label scaler on its training crystals; a resumed run passes
the saved split ids and scaler so it sees exactly the same data. Evaluation reads
`EvalData` from the workdir instead (`workdir.Workdir.load_eval_data`), which training
saves at its start, so a trained run is evaluated without its dataset.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Mapping, Sequence

import ml_collections
import numpy as np
from absl import logging

from xtal2dos_jax import datasets, graph_cache, batching, labels, symmetry
from xtal2dos_jax.errors import InputError
from xtal2dos_jax.graph_cache import GraphSet

SPLITS = ("train", "validation", "test")
# The splits whose crystals and labels a workdir keeps for evaluation.
EVAL_SPLITS = ("validation", "test")


@dataclasses.dataclass
class RunData:
  """Everything a run needs from its data.

  splits: split name -> LabelledGraphs (labels scaled by `scaler`).
  labels: split name -> float32[n, l_y] labels on the original scale.
  extras: split name -> per-crystal extra columns (e.g. cv300).
  grid: float32[l_y] x-axis of the DoS (cm^-1 or eV).
  budget: per-device padding budget that fits every crystal of every split.
  skipped: (id, reason) of inputs left out.
  """
  splits: dict[str, batching.LabelledGraphs]
  labels: dict[str, np.ndarray]
  extras: dict[str, dict[str, np.ndarray]]
  scaler: labels.LabelScaler
  grid: np.ndarray
  budget: batching.Budget
  skipped: list[tuple[str, str]]

  @property
  def split_ids(self) -> dict[str, list[str]]:
    return {name: list(s.graphs.ids) for name, s in self.splits.items()}

  @property
  def bin_width(self) -> float:
    """Grid spacing (cm^-1 or eV), the unit of the physical Wasserstein distance."""
    return bin_width_of(self.grid)


def per_device_batch_size(global_batch_size: int, num_devices: int) -> int:
  if global_batch_size < num_devices:
    raise InputError("config.train.batch_size",
                     f"{global_batch_size} is smaller than the {num_devices} devices")
  return -(-global_batch_size // num_devices)


def bin_width_of(grid: np.ndarray) -> float:
  """Spacing of a uniform DoS grid; 1 for a one-point grid."""
  return float(grid[1] - grid[0]) if len(grid) > 1 else 1.0


def grid_of(data_config: ml_collections.ConfigDict) -> np.ndarray:
  return np.linspace(data_config.grid_start, data_config.grid_stop,
                     data_config.l_y).astype(np.float32)


def featurize_raw(raw: datasets.RawDataset, data_config: ml_collections.ConfigDict):
  """(GraphSet, row index of each graph in `raw`, skipped) with the on-disk cache."""
  graphs, skipped, from_cache = graph_cache.load_or_featurize(
      raw.ids, raw.structures, data_config.radius, data_config.max_num_nbr,
      cache_dir=data_config.cache_dir)
  logging.info("%s %d crystals%s", "loaded" if from_cache else "featurised", len(graphs),
               " from cache" if from_cache else "")
  if skipped:
    logging.warning("skipped %d of %d crystals at featurisation: %s", len(skipped),
                    len(raw.ids), "; ".join(f"{i} ({r})" for i, r in skipped[:10]))
  row = {str(i): k for k, i in enumerate(raw.ids)}
  return graphs, np.asarray([row[str(i)] for i in graphs.ids], np.int64), skipped


@dataclasses.dataclass
class EvalData:
  """What evaluating a trained run needs, as saved in its workdir at the start of training.

  splits: split name -> LabelledGraphs (labels scaled by `scaler`), for EVAL_SPLITS.
  labels: split name -> float32[n, l_y] labels on the original scale.
  grid: float32[l_y] x-axis of the DoS (cm^-1 or eV).
  budget: the training run's per-device padding budget (fits every crystal).
  """
  splits: dict[str, batching.LabelledGraphs]
  labels: dict[str, np.ndarray]
  scaler: labels.LabelScaler
  grid: np.ndarray
  budget: batching.Budget

  @property
  def bin_width(self) -> float:
    return bin_width_of(self.grid)


def labelled(graphs: GraphSet, y_original: np.ndarray, scaler: labels.LabelScaler,
             crystal_system: np.ndarray | None = None) -> batching.LabelledGraphs:
  """A split ready to batch: `graphs` with their labels float32[n, l_y] (original scale)
  scaled by `scaler`."""
  y_scaled, y_scale = scaler.transform(y_original)
  return batching.LabelledGraphs(graphs, np.asarray(y_scaled, np.float32),
                                 np.asarray(y_scale, np.float32), crystal_system)


def crystal_systems_if_needed(config: ml_collections.ConfigDict, structures,
                              ids: Sequence[str]) -> np.ndarray | None:
  """int32[n] crystal systems (spglib, ~5 ms per crystal) for models that use them;
  `ids` name the crystals in spglib's warnings."""
  if config.model.decoder != "dostransformer":
    return None
  return symmetry.crystal_systems(structures, ids=ids)


def read_split_file(path: str) -> dict[str, list[str]]:
  """The train / validation / test ids of `config.data.split_file`: a JSON object with
  lists of crystal ids under "train", "validation" (or "val", as the reference harness
  writes it) and "test", e.g. another run's splits.json or a published split.
  Raises InputError naming the file for an unreadable file, a missing key or a crystal in
  two splits."""
  name = f"config.data.split_file {path!r}"
  try:
    with open(path) as f:
      table = json.load(f)
  except OSError as e:
    raise InputError(name, f"cannot be read ({e.strerror})") from None
  except ValueError as e:
    raise InputError(name, f"is not JSON ({e})") from None
  if isinstance(table, dict) and "validation" not in table and "val" in table:
    table = {**table, "validation": table["val"]}
  if not isinstance(table, dict) or any(not isinstance(table.get(k), list) for k in SPLITS):
    raise InputError(name, "must be a JSON object with id lists under 'train', "
                     "'validation' (or 'val') and 'test'")
  out = {k: [str(i) for i in table[k]] for k in SPLITS}
  seen: dict[str, str] = {}
  for k in SPLITS:
    for i in out[k]:
      if i in seen:
        raise InputError(name, f"crystal {i!r} is in both '{seen[i]}' and '{k}'")
      seen[i] = k
  return out


def _split_file_rows(ids: Sequence[str], path: str) -> dict[str, np.ndarray]:
  """Row indices of `read_split_file(path)`'s splits among the usable crystals `ids`."""
  split_ids = read_split_file(path)
  where = {str(i): k for k, i in enumerate(ids)}
  out = {}
  for name in SPLITS:
    missing = [i for i in split_ids[name] if i not in where]
    if missing:
      raise InputError(f"config.data.split_file {path!r}",
                       f"{len(missing)} '{name}' ids are not usable crystals of the dataset "
                       f"(first: {missing[0]})")
    out[name] = np.asarray([where[i] for i in split_ids[name]], np.int64)
  unused = len(where) - sum(len(v) for v in out.values())
  if unused:
    logging.info("%d crystals are in no split of %s; left out", unused, path)
  return out


def _split_rows(ids: Sequence[str], data_config, split_ids: Mapping[str, Sequence[str]] | None):
  if split_ids is None:
    if data_config.split_file:
      parts = _split_file_rows(ids, data_config.split_file)
    elif data_config.num_folds:
      parts = datasets.fold_indices(len(ids), data_config.num_folds, data_config.fold,
                                    data_config.split[1], data_config.split_seed)
    else:
      parts = datasets.split_indices(len(ids), tuple(data_config.split), data_config.split_seed)
    parts["train"] = datasets.train_subset(parts["train"],
                                           data_config.train_fraction,
                                           data_config.split_seed)
    return parts
  where = {str(i): k for k, i in enumerate(ids)}
  out = {}
  for name in SPLITS:
    missing = [i for i in split_ids[name] if str(i) not in where]
    if missing:
      raise InputError(f"split '{name}'", f"{len(missing)} saved ids are no longer in the "
                       f"dataset (first: {missing[0]}); the data changed since the run began")
    out[name] = np.asarray([where[str(i)] for i in split_ids[name]], np.int64)
  return out


def excluded_ids(spec: str) -> set[str]:
  """The ids `config.data.exclude_ids` names: "" (none); a file of ids (a JSON list, or one
  id per line); or "file.json:key1,key2", the union of those keys' lists in a JSON object
  (e.g. another run's splits.json:validation,test, to keep its evaluation crystals out of a
  pre-training set)."""
  spec = str(spec or "")
  if not spec:
    return set()
  path, keys = spec.rsplit(":", 1) if ".json:" in spec else (spec, "")
  name = "config.data.exclude_ids"
  try:
    with open(path) as f:
      text = f.read()
  except OSError as e:
    raise InputError(name, f"cannot read {path!r} ({e.strerror})") from None
  if keys:
    try:
      table = json.loads(text)
      return {str(i) for key in keys.split(",") for i in table[key]}
    except (ValueError, KeyError, TypeError) as e:
      raise InputError(name, f"{path!r} is not a JSON object with lists under "
                       f"{keys!r} ({type(e).__name__}: {e})") from None
  if path.endswith(".json"):
    try:
      ids = json.loads(text)
    except ValueError as e:
      raise InputError(name, f"{path!r} is not JSON ({e})") from None
    if not isinstance(ids, list):
      raise InputError(name, f"{path!r} holds a JSON {type(ids).__name__}, not a list of ids; "
                       "name its keys as file.json:key1,key2")
    return {str(i) for i in ids}
  return {line.strip() for line in text.splitlines() if line.strip()}


def prepare_run_data(config: ml_collections.ConfigDict, num_devices: int = 1,
                     split_ids: Mapping[str, Sequence[str]] | None = None,
                     scaler: labels.LabelScaler | None = None) -> RunData:
  """Reads, featurises, splits and scales the dataset named by `config.data`."""
  raw = datasets.load_raw_dataset(config.data)
  leave_out = excluded_ids(config.data.exclude_ids)
  if leave_out:
    keep = [i for i, rid in enumerate(raw.ids) if str(rid) not in leave_out]
    logging.info("left out %d of %d crystals listed by config.data.exclude_ids",
                 len(raw) - len(keep), len(raw))
    raw = raw.subset(keep)
  if config.data.limit and config.data.limit < len(raw):
    raw = raw.subset(np.arange(config.data.limit))
  graphs, rows, skipped = featurize_raw(raw, config.data)
  skipped = list(raw.skipped) + skipped
  systems = crystal_systems_if_needed(config, [raw.structures[r] for r in rows], graphs.ids)
  parts = _split_rows(graphs.ids, config.data, split_ids)
  y_all = np.asarray(raw.labels, np.float32)[rows]
  if scaler is None:
    scaler = labels.LabelScaler.fit(config.data.scaling, y_all[parts["train"]])
  splits, original, extras = {}, {}, {}
  for name in SPLITS:
    idx = parts[name]
    if len(idx) == 0:
      raise InputError(f"split '{name}'", f"has no crystals ({len(graphs)} usable in total)")
    splits[name] = labelled(graphs.subset(idx), y_all[idx], scaler,
                            None if systems is None else systems[idx])
    original[name] = y_all[idx]
    extras[name] = {k: np.asarray(v)[rows][idx] for k, v in raw.extras.items()}
  budget = batching.make_budget(
      graphs.n_node, graphs.n_edge, per_device_batch_size(config.train.batch_size, num_devices))
  grid = raw.grid if raw.grid is not None else grid_of(config.data)
  return RunData(splits, original, extras, scaler, np.asarray(grid, np.float32), budget,
                 skipped)
