"""The datasets of one run: read, featurise (cached), split, scale, budget.

`prepare_run_data` turns a config into batched-ready splits. A new run draws a
seeded split and fits the label scaler on its training crystals; a resumed run passes
the saved split ids and scaler so it sees exactly the same data. Evaluation reads
`EvalData` from the workdir instead (`workdir.Workdir.load_eval_data`), which training
saves at its start, so a trained run is evaluated without its dataset.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import ml_collections
import numpy as np
from absl import logging

from xtal2dos_jax.core.errors import InputError
from xtal2dos_jax.input_pipeline import (batching, data_splits, graph_cache, labels, readers,
                                         symmetry)
from xtal2dos_jax.input_pipeline.graph_cache import GraphSet

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


def featurize_raw(raw: readers.RawDataset, data_config: ml_collections.ConfigDict):
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


def prepare_run_data(config: ml_collections.ConfigDict, num_devices: int = 1,
                     split_ids: Mapping[str, Sequence[str]] | None = None,
                     scaler: labels.LabelScaler | None = None) -> RunData:
  """Reads, featurises, splits and scales the dataset named by `config.data`."""
  raw = readers.load_raw_dataset(config.data)
  leave_out = data_splits.excluded_ids(config.data.exclude_ids)
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
  parts = data_splits.split_rows(graphs.ids, config.data, split_ids)
  y_all = np.asarray(raw.labels, np.float32)[rows]
  if scaler is None:
    scaler = labels.LabelScaler.fit(config.data.scaling, y_all[parts["train"]])
  splits, original, extras = {}, {}, {}
  for name in data_splits.SPLITS:
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
