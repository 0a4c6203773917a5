"""The benchmark's sweeps (`harness.py`): the opt-in bf16_matmul mode
against float32, scaling with model, crystal and batch size, and time to accuracy."""
from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import tempfile
import time
from typing import Any, Callable, Sequence

import ase.build
import jax
import ml_collections
import numpy as np

from xtal2dos_jax.input_pipeline import batching, graph_cache, run_data
from xtal2dos_jax.training import train
from xtal2dos_jax.workflows.benchmarks.compile_counter import TrainingRun
from xtal2dos_jax.workflows.benchmarks.tools import (device_batches, network_rate, Row,
                                                     run_device_batches, timed, warm_up,
                                                     with_overrides)


def supercell_set(atoms_per_cell: int, count: int, config: ml_collections.ConfigDict,
                  seed: int = 0):
  """`count` rattled supercells of conventional rock-salt NaCl (8 atoms) with
  `atoms_per_cell` atoms each (8, 16, 32, 64, 128 or 256), random normalised labels."""
  reps = {8: (1, 1, 1), 16: (2, 1, 1), 32: (2, 2, 1), 64: (2, 2, 2), 128: (4, 2, 2),
          256: (4, 4, 2)}
  if atoms_per_cell not in reps:
    raise ValueError(f"atoms_per_cell must be one of {sorted(reps)}, got {atoms_per_cell}")
  base = ase.build.bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat(reps[atoms_per_cell])
  rng = np.random.default_rng(seed)
  structures = []
  for _ in range(count):
    atoms = base.copy()
    atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
    structures.append(atoms)
  ids = [f"nacl{atoms_per_cell}_{k}" for k in range(count)]
  graphs, skipped = graph_cache.featurize_structures(ids, structures, config.data.radius,
                                                  config.data.max_num_nbr)
  if skipped:
    raise RuntimeError(f"supercell featurisation failed: {skipped[0]}")
  y = rng.dirichlet(np.ones(config.data.l_y), count).astype(np.float32)
  return batching.LabelledGraphs(graphs, y, np.ones(count, np.float32))


def bf16_matmul_rows(run: TrainingRun, config, everything, repeats: int, log) -> list[Row]:
  """The opt-in `model.dtype="bf16_matmul"` mode vs the float32 run: network-only training
  over one epoch and `Trainer.predict` on the whole set, rounds interleaved (float32,
  bf16_matmul, float32, ...) so load changes hit both; speed-ups are best vs best."""
  log("bf16_matmul: network-only training and prediction, interleaved with float32")
  rd = run.rd
  t0 = time.perf_counter()
  bf16 = TrainingRun(with_overrides(config, model=dict(dtype="bf16_matmul")), rd)
  init_s = time.perf_counter() - t0
  plan = run.trainer.plan(run.train_data, rd.budget, epoch=0, shuffle=True)
  crystals = sum(len(idx) for step in plan for idx in step)
  on_device = device_batches(run.trainer, run.train_data, rd.budget, plan)
  bf16.state, _, _ = warm_up(bf16.train_step, bf16.state, on_device[0])
  predict = lambda r: timed(lambda: r.trainer.predict(r.state.params, everything, rd.budget))
  predict(run)   # compile both precisions' predict steps before timing
  predict(bf16)
  n_all = len(everything.graphs)
  times = {"train32": [], "train16": [], "predict32": [], "predict16": []}
  for _ in range(max(repeats, 1)):
    times["train32"].append(run_device_batches(run, on_device))
    times["train16"].append(run_device_batches(bf16, on_device))
    times["predict32"].append(predict(run))
    times["predict16"].append(predict(bf16))
  best = {k: min(v) for k, v in times.items()}
  med = {k: statistics.median(v) for k, v in times.items()}
  return [
      Row("bf16_matmul: train network only", crystals / best["train16"], "crystals/s",
          f"best; median {crystals / med['train16']:.1f}; x{best['train32'] / best['train16']:.2f}"
          f" vs float32 interleaved ({crystals / best['train32']:.0f}); compile "
          f"{bf16.train_step.compile_seconds:.1f} s + init {init_s:.1f} s"),
      Row("bf16_matmul: prediction (Trainer.predict)", n_all / best["predict16"], "crystals/s",
          f"best; median {n_all / med['predict16']:.1f}; "
          f"x{best['predict32'] / best['predict16']:.2f} vs float32 interleaved "
          f"({n_all / best['predict32']:.0f}); training process, "
          f"{jax.local_device_count()} device(s)"),
  ]


def scaling_rows(run: TrainingRun, config, everything, main_rate: float, log) -> list[Row]:
  """Paper-size model, crystal size and batch size (network-only train crystals/s);
  `main_rate` is the network-only rate at the config's own batch size."""
  b, rd = config.bench, run.rd
  steps = int(b.scaling_steps)
  rows = []
  if b.paper_model:
    log("scaling: paper-size model")
    paper = with_overrides(config, model=dict(
        d_model=int(b.paper_d_model), num_heads=int(b.paper_num_heads),
        decoder_layers=int(b.paper_decoder_layers), ff_dim=int(b.paper_ff_dim)))
    t0 = time.perf_counter()
    paper_run = TrainingRun(paper, rd)
    init_s = time.perf_counter() - t0
    res = network_rate(paper_run, run.train_data, rd.budget, steps)
    rows.append(Row("scaling: paper-size model, train", res["rate"], "crystals/s",
                    f"d_model {b.paper_d_model}, {b.paper_num_heads} heads, "
                    f"{b.paper_decoder_layers} decoder layers, ff {b.paper_ff_dim}; network "
                    f"only, {res['steps']} step(s) of {res['step_ms']:.0f} ms; compile "
                    f"{res['compile_seconds']:.1f} s + init {init_s:.1f} s"))
    del paper_run
  # The same model on other shapes: the main run's Trainer compiles one more bucket each.
  batch = int(config.train.batch_size)
  n_dev = jax.device_count()
  for atoms in b.atoms_per_cell:
    atoms = int(atoms)
    log(f"scaling: {atoms} atoms per cell")
    data = supercell_set(atoms, batch * max(steps, 1), config)
    budget = batching.make_budget(data.graphs.n_node, data.graphs.n_edge,
                                        run_data.per_device_batch_size(batch, n_dev))
    res = network_rate(run, data, budget, steps)
    rows.append(Row(f"scaling: {atoms} atoms/cell, train", res["rate"], "crystals/s",
                    f"{atoms * res['rate']:.0f} atoms/s; rattled NaCl supercells, "
                    f"{data.graphs.n_edge.mean():.0f} edges/crystal, batch {batch}; "
                    f"{res['steps']} step(s) of {res['step_ms']:.0f} ms; compile "
                    f"{res['compile_seconds']:.1f} s"))
  for bs in b.batch_sizes:
    bs = int(bs)
    if bs == batch:
      rows.append(Row(f"scaling: batch {bs}, train", main_rate, "crystals/s",
                      "the 'train network only' row"))
      continue
    log(f"scaling: batch size {bs}")
    budget = batching.make_budget(everything.graphs.n_node, everything.graphs.n_edge,
                                        run_data.per_device_batch_size(bs, n_dev))
    res = network_rate(run, run.train_data, budget, steps)
    rows.append(Row(f"scaling: batch {bs}, train", res["rate"], "crystals/s",
                    f"embedded set, network only; {res['steps']} step(s) of "
                    f"{res['step_ms']:.0f} ms; compile {res['compile_seconds']:.1f} s"))
  return rows


def first_time_reaching(metrics_lines: Sequence[dict[str, Any]], start_time: float,
                        threshold: float) -> tuple[float, int] | None:
  """(seconds from `start_time` to the end of the first epoch whose validation R^2
  (normalised scale) is >= threshold, that epoch) from metrics.jsonl records; None if
  no epoch reached it."""
  for line in metrics_lines:
    if line["val"]["normalized"]["r2"] >= threshold:
      return line["wall_time"] - start_time, int(line["epoch"])
  return None


def time_to_accuracy_rows(config: ml_collections.ConfigDict, thresholds: Sequence[float],
                          log: Callable[[str], None]) -> list[Row]:
  """Wall time a user waits, from `train_and_evaluate` being called (data read from the
  featurisation cache, compilation, training, per-epoch validation) until the validation
  R^2 first reaches each threshold, training `config` on its split in a fresh workdir."""
  log(f"time to accuracy: training {config.model.decoder} for up to "
      f"{config.train.num_epochs} epochs")
  workdir = tempfile.mkdtemp(prefix="xtal2dos_bench_tta_")
  try:
    run_data.prepare_run_data(config, jax.device_count())   # featurise once, untimed
    start = time.time()
    summary = train.train_and_evaluate(config, workdir)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      lines = [json.loads(line) for line in f if line.strip()]
  finally:
    shutil.rmtree(workdir, ignore_errors=True)
  best = max(line["val"]["normalized"]["r2"] for line in lines)
  rows = []
  for threshold in thresholds:
    hit = first_time_reaching(lines, start, threshold)
    rows.append(Row(f"time to validation R^2 {threshold:.2f}", math.nan if hit is None
                    else hit[0], "s",
                    (f"epoch {hit[1]} of {len(lines)}" if hit else
                     f"not reached in {len(lines)} epochs (best {best:.3f})")
                    + f"; default recipe, split {config.data.split_seed}, incl. compile"))
  rows.append(Row("default recipe: validation R^2 at the selected epoch",
                  summary["metrics"]["validation"]["normalized"]["r2"], "",
                  f"best epoch {summary['best_epoch']}; test R^2 "
                  f"{summary['metrics']['test']['normalized']['r2']:.3f}"))
  return rows
