"""The runs of `python -m experiments.compare` and `python -m experiments.sweep` (see those
binaries for their flags): run directories per variant, seed and cross-validation fold,
training a variant's runs, and the inference timing of a finished run. Their tables are
in `compare_tables.py`; the sweep's grid and table in `sweeps.py`.

JAX (through `restore` and `train`) is imported only by the functions that train or
measure runs, so the binaries can import this module, e.g. for their flag validators,
before they set up the runtime."""
from __future__ import annotations

import os
import re
import statistics
import time
from typing import TYPE_CHECKING, Any, Sequence

from absl import flags, logging


if TYPE_CHECKING:
  import ml_collections


# --------------------------------------------------------------------------
# Run directories.


def run_names(paths: Sequence[str]) -> list[str]:
  """Unique run names from config paths: the file stem, prefixed with its directory (and
  then numbered) where stems repeat."""
  stems = [os.path.splitext(os.path.basename(p))[0] for p in paths]
  names = [s if stems.count(s) == 1 else
           f"{os.path.basename(os.path.dirname(os.path.abspath(p)))}_{s}"
           for s, p in zip(stems, paths)]
  out = []
  for name in names:
    candidate, k = name, 2
    while candidate in out:
      candidate, k = f"{name}_{k}", k + 1
    out.append(candidate)
  return out


def run_grid(seeds: Sequence[int], folds: int = 0) -> list[tuple[int | None, int | None]]:
  """(seed, fold) of every run of one variant, folds outer: None = the config's own."""
  return [(seed, fold) for fold in (range(folds) if folds else [None])
          for seed in (seeds or [None])]


def run_dirs(workdir: str, name: str, seeds: Sequence[int], folds: int = 0) -> list[str]:
  """Run directories of variant `name`, in `run_grid` order: `<workdir>/<name>`, then
  `/fold_<k>` per cross-validation fold and `/seed_<s>` per seed when asked for."""
  return [os.path.join(workdir, name, *([] if fold is None else [f"fold_{fold}"]),
                       *([] if seed is None else [f"seed_{seed}"]))
          for seed, fold in run_grid(seeds, folds)]


def check_seeds(items: Sequence[str]) -> bool:
  """The `--seeds` flag validator of compare and sweep: every item an integer, none
  listed twice; otherwise raises `flags.ValidationError` saying which."""
  if not all(re.fullmatch(r"[+-]?\d+", item.strip()) for item in items):
    raise flags.ValidationError("seeds must be integers, e.g. --seeds=0,1,2")
  if len({int(i) for i in items}) != len(items):
    raise flags.ValidationError("a seed is listed twice")
  return True


def train_variant(name: str, label: str, config: ml_collections.ConfigDict, workdir: str,
                  seeds: Sequence[int], folds: int = 0, overwrite: bool = False) -> list[str]:
  """Trains every run of one variant (`run_grid` of `seeds` x `folds`) with
  `train.train_and_evaluate` in its `run_dirs` and returns those directories. A finished
  run is not retrained and an interrupted one resumes, so rerunning a command only
  trains what is missing. `label` (the config file, the cell's overrides) is logged.

  `config` is modified: its seed, and with `folds` its `data.num_folds` / `data.fold`,
  are set per run. Raises `preemption.Preempted` after SIGTERM.
  """
  from xtal2dos_jax.training import train as train_lib
  dirs = run_dirs(workdir, name, seeds, folds)
  own_seed = config.seed
  for (seed, fold), run_dir in zip(run_grid(seeds, folds), dirs):
    config.seed = own_seed if seed is None else seed
    if fold is not None:
      config.data.num_folds, config.data.fold = folds, fold
    logging.info("variant %s (%s), seed %d%s: %s encoder, %s decoder -> %s", name, label,
                 config.seed, "" if fold is None else f", fold {fold}/{folds}",
                 config.model.encoder, config.model.decoder, run_dir)
    train_lib.train_and_evaluate(config, run_dir, overwrite=overwrite)
  return dirs


# --------------------------------------------------------------------------
# Measurements of a finished run.


def time_inference(run_dir: str, repeats: int = 3) -> dict[str, Any]:
  """Inference throughput of a finished run's best checkpoint over its test split.

  One warm-up `Trainer.predict` (compilation), then `repeats` timed ones; returns
  {"crystals", "seconds" (best), "median_seconds", "crystals_per_s" (from the best)}.
  """
  from xtal2dos_jax.training import restore
  loaded, rd = restore.restore_run_and_data(run_dir)
  test = rd.splits["test"]
  loaded.trainer.predict(loaded.params, test, rd.budget)            # warm-up (compiles)
  times = []
  for _ in range(max(int(repeats), 1)):
    t0 = time.perf_counter()
    loaded.trainer.predict(loaded.params, test, rd.budget)          # returns host numpy
    times.append(time.perf_counter() - t0)
  n = len(test.graphs)
  return {"crystals": n, "seconds": min(times), "median_seconds": statistics.median(times),
          "repeats": len(times), "crystals_per_s": n / max(min(times), 1e-12)}


