"""Speed measurements behind `python -m experiments.benchmark`: one table of rows
(name, value, unit, notes), throughputs measured after warm-up, compile times and counts
as rows of their own.

* data: dataset read time, cold featurisation (crystals/s, no cache), cache-load time,
  and the neighbour search (vesin) against the brute-force reference on 8-256-atom cells;
* training: end to end (host pipeline + pmapped step, train.py's loop) over full epochs
  after a warm-up epoch, and network only (pre-assembled device batches), interleaved;
* compile counts of the train / eval steps over two epochs (a `jax.monitoring` listener on
  XLA backend compilations, attributed to the step whose call triggered them), which must
  equal the number of padding buckets (1), with nothing compiled in the second epoch;
* evaluation and prediction crystals/s (`Trainer.evaluate` / `Trainer.predict` on the
  whole set, measured by `--inference_only` in a child process set up as the predict
  binary is: one CPU device per core, no single malloc arena, `inference_in_child`), host
  pipeline vs device time per step, page faults per training step (see
  `training/allocator.py`), peak resident memory;
* the opt-in mixed-precision mode (`model.dtype="bf16_matmul"`): network-only training
  and prediction, interleaved with the float32 model (`config.bench.bf16_matmul`);
* scaling: the paper-size model, crystal size (supercells) and batch size;
* time to accuracy: the default recipe (configs/phdos.py) trained on split 0 of the DFPT
  set, wall time until validation R^2 first reaches 0.60 and 0.65 (`config.bench`).

Throughputs are the best of `config.bench.repeats` timed repetitions (the notes give the
median): the machine may be shared, and the best run is the closest to what it can do.
`quick_config` shrinks everything (smoke-sized model, data subset) for `--quick`.
"""
from __future__ import annotations

import copy
import datetime
import json
import os
import platform
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Sequence

import jax
import ml_collections
import numpy as np

from xtal2dos_jax.input_pipeline import batching, graph_cache, readers, run_data
from xtal2dos_jax.input_pipeline.readers import phonondos_csv
from xtal2dos_jax.training import allocator, train
from xtal2dos_jax.workflows.benchmarks.compile_counter import (CountedStep, install_listener,
                                                               TrainingRun)
from xtal2dos_jax.workflows.benchmarks.neighbours import neighbour_rows
from xtal2dos_jax.workflows.benchmarks.scaling import (bf16_matmul_rows, scaling_rows,
                                                       time_to_accuracy_rows)
from xtal2dos_jax.workflows.benchmarks.tools import (best_of, device_batches, device_sharding,
                                                     peak_rss_mib, rate_row, Row,
                                                     run_device_batches, timed, warm_up, whole_set)


# What `--quick` takes from configs/smoke.py besides the batch size and the data subset.
_MODEL_SIZE_KEYS = ("d_model", "num_heads", "encoder_layers", "decoder_layers", "ff_dim")


def quick_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The `--quick` variant: the model size, batch size and data subset of
  configs/smoke.py, one repeat, tiny sweeps."""
  from configs import smoke
  out = copy.deepcopy(config)
  s = smoke.get_config()
  for key in _MODEL_SIZE_KEYS:
    out.model[key] = s.model[key]
  out.train.batch_size = s.train.batch_size
  out.data.limit = s.data.limit
  b = out.bench
  b.repeats = 1
  b.measured_epochs = 1
  b.scaling_steps = 1
  b.atoms_per_cell = (8,)
  b.neighbour_cell_sizes = (8,)
  b.batch_sizes = (8, 16)
  b.paper_model = False
  b.accuracy_thresholds = (-1e9, 0.99)    # one reached at once, one never: both row kinds
  return out


# --------------------------------------------------------------------------
# The benchmark, section by section.


def _data_rows(config, repeats: int, log) -> tuple[list[Row], float]:
  """Read, cold featurisation, warm cache load. Returns (rows, featurisation rate)."""
  log("data: read, featurise, cache")
  box = {}

  def read():
    phonondos_csv.forget_parsed_files()   # a cold read, not the process's kept rows
    t0 = time.perf_counter()
    box["raw"] = readers.load_raw_dataset(config.data)
    return time.perf_counter() - t0
  read_s = best_of(read, repeats)
  raw = box["raw"]
  if config.data.limit and config.data.limit < len(raw):
    raw = raw.subset(np.arange(config.data.limit))
  n, r, k = len(raw), config.data.radius, config.data.max_num_nbr
  rows = [Row("dataset read (load_raw_dataset)", read_s[0], "s",
              f"config.data source incl. validation; best; median {read_s[1]:.3g} s; "
              f"{n} crystals used")]
  feat = best_of(lambda: timed(lambda: graph_cache.featurize_structures(raw.ids, raw.structures,
                                                                      r, k)), repeats)
  rows.append(rate_row("featurisation, cold (no cache)", n, feat, "crystals/s",
                       f"featurize_structures, radius {r} A, {k} neighbours"))
  warm_dir = os.path.join(config.data.cache_dir, "warm")
  graph_cache.load_or_featurize(raw.ids, raw.structures, r, k, cache_dir=warm_dir)

  def cache_load():
    t0 = time.perf_counter()
    *_, hit = graph_cache.load_or_featurize(raw.ids, raw.structures, r, k, cache_dir=warm_dir)
    if not hit:
      raise RuntimeError("the warm featurisation cache was not used")
    return time.perf_counter() - t0
  load_s = best_of(cache_load, max(repeats, 2))
  rows.append(Row("featurisation cache load (warm)", load_s[0], "s",
                  f"load_or_featurize hit incl. content hash; best; median {load_s[1]:.3g} s"))
  rows += [Row(**row) for row in neighbour_rows(r, k, max(repeats, 3),
                                                tuple(config.bench.neighbour_cell_sizes))]
  return rows, n / feat[0]


def _training_rows(run: TrainingRun, config, repeats: int, log) -> list[Row]:
  """Compile counts over a warm-up and steady epochs; e2e vs network-only, interleaved."""
  rd, b = run.rd, config.bench
  log("training: warm-up epoch and compile counts")
  warm = run.train_epoch()
  second = run.train_epoch()
  before = run.eval_step.compiles
  run.evaluate(rd.splits["validation"], run.rereplicated_params())
  final_eval_compiles = run.eval_step.compiles - before
  buckets = len(run.train_step.signatures)
  rows = [
      Row("compile: train step", run.train_step.compile_seconds, "s",
          f"XLA backend time of {run.train_step.compiles} compilation(s); first epoch "
          f"{warm.seconds:.1f} s vs {second.seconds:.1f} s"),
      Row("compile: eval step", run.eval_step.compile_seconds, "s",
          f"XLA backend time of {run.eval_step.compiles} compilation(s)"),
      Row("compiles: train step, epoch 1", warm.train_compiles, "count",
          f"expected = padding buckets = {buckets}"),
      Row("compiles: train step, epoch 2", second.train_compiles, "count", "expected 0"),
      Row("compiles: eval step, epoch 1", warm.eval_compiles, "count",
          f"validation after the epoch; buckets {len(run.eval_step.signatures)}"),
      Row("compiles: eval step, epoch 2", second.eval_compiles, "count", "expected 0"),
      Row("compiles: eval step, re-replicated params", final_eval_compiles, "count",
          "evaluation after unreplicate+replicate (restore path); expected 0"),
  ]

  log("training: steady state, end to end vs network only (interleaved)")
  train_data = run.train_data
  plan = run.trainer.plan(train_data, rd.budget, epoch=0, shuffle=True)
  crystals = sum(len(idx) for step in plan for idx in step)
  on_device = device_batches(run.trainer, train_data, rd.budget, plan)
  before = run.train_step.compiles
  run.state, _, _ = warm_up(run.train_step, run.state, on_device[0])
  device_input_compiles = run.train_step.compiles - before
  e2e, nosync, net, faults = [], [], [], 0
  for _ in range(max(int(b.measured_epochs), repeats, 1)):
    e2e.append(run.train_epoch(validate=False).rate)
    faults -= resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    net.append(crystals / run_device_batches(run, on_device))
    faults += resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    nosync.append(run.train_epoch(sync_every_step=False, validate=False).rate)
  med = statistics.median
  rows.append(Row("train e2e (train.py loop)", max(nosync), "crystals/s",
                  f"best of {len(nosync)} epochs of {len(plan)} steps after warm-up; median "
                  f"{med(nosync):.1f}; host pipeline + pmapped step, outputs read once per "
                  "epoch"))
  rows.append(Row("train e2e, host sync every step", max(e2e), "crystals/s",
                  f"best; median {med(e2e):.1f}; float(out) after every step (what reading "
                  "the loss every step would cost)"))
  rows.append(Row("train network only (device batches)", max(net), "crystals/s",
                  f"best; median {med(net):.1f}; same epoch pre-assembled on device"
                  + (f"; device-resident inputs compiled {device_input_compiles} more "
                     "executable(s)" if device_input_compiles else "")))
  step_ms = 1e3 * crystals / max(net) / len(plan)
  rows.append(Row("device time per train step", step_ms, "ms/step",
                  f"{crystals / len(plan):.1f} crystals/step; budget (nodes, edges, graphs, "
                  f"atoms) {tuple(rd.budget)}"))
  rows.append(Row("page faults per train step", faults / (len(net) * len(plan)), "count",
                  "minor faults in the network-only epochs; allocator.keep_freed_memory "
                  + ("applied" if allocator.applied else
                     f"not applied ({allocator.ENV_VAR}=0 or no glibc)")))

  def host_pipeline():
    t0 = time.perf_counter()
    for step in plan:
      batching.stack([batching.assemble(train_data, idx, rd.budget,
                                        edge_vectors=run.trainer.edge_vectors)
                            for idx in step])
    return time.perf_counter() - t0
  host_s = best_of(host_pipeline, repeats)
  rows.append(Row("host pipeline time (assemble+stack)", 1e3 * host_s[0] / len(plan),
                  "ms/step", f"{100 * host_s[0] / len(plan) / step_ms:.1f}% of the device "
                  "step; overlapped by the prefetch thread"))
  sharding = device_sharding(run.trainer.devices)
  host = [batching.stack([batching.assemble(train_data, idx, rd.budget,
                                            edge_vectors=run.trainer.edge_vectors)
                                for idx in step]) for step in plan]
  put_s = best_of(lambda: timed(lambda: jax.block_until_ready(
      [jax.device_put(x, sharding) for x in host])), repeats)
  rows.append(Row("host->device transfer", 1e3 * put_s[0] / len(plan), "ms/step",
                  "jax.device_put of one stacked batch"))
  return rows


def _warm_cache_row(run: TrainingRun, config) -> Row:
  """First train step of a second, identical Trainer: served by the persistent cache."""
  trainer = train.Trainer(config, run.rd.scaler)
  step = CountedStep(trainer.p_train_step)
  batch = batching.stack([batching.assemble(run.train_data, np.arange(8), run.rd.budget,
                                            edge_vectors=trainer.edge_vectors)]
                         * trainer.num_local_devices)
  t0 = time.perf_counter()
  run.state, out = step(run.state, batch)
  jax.block_until_ready((run.state, out))
  return Row("compile: train step, warm persistent cache", time.perf_counter() - t0, "s",
             f"first call of a new Trainer (trace + lower + {step.compiles} cache load(s) of "
             f"{step.compile_seconds:.2f} s + one step), i.e. a rerun/resume")


def inference_rows(config: ml_collections.ConfigDict, log: Callable[[str], None] = print
                   ) -> list[Row]:
  """The evaluation/prediction rows on their own, on freshly initialised parameters
  (throughput does not depend on their values): what `experiments/benchmark.py
  --inference_only` runs in a child process set up as the predict binary is."""
  install_listener()
  rd = run_data.prepare_run_data(config, jax.device_count())
  return _inference_rows(TrainingRun(config, rd), whole_set(rd), int(config.bench.repeats),
                         log)


def _inference_rows(run: TrainingRun, everything, repeats: int, log) -> list[Row]:
  """Trainer.evaluate / Trainer.predict over the whole set, after a warm-up call."""
  log("evaluation and prediction on the whole set")
  rd, params = run.rd, run.state.params
  n_all = len(everything.graphs)
  batch = run.config.train.batch_size
  predict_first = timed(lambda: run.trainer.predict(params, everything, rd.budget))
  run.evaluate(everything)
  c_eval = run.eval_step.compiles
  eval_s = best_of(lambda: timed(lambda: run.evaluate(everything)), repeats)
  predict_s = best_of(lambda: timed(lambda: run.trainer.predict(params, everything,
                                                                 rd.budget)), repeats)
  return [
      Row("compile: predict step", run.predict_step.compile_seconds, "s",
          f"XLA backend time of {run.predict_step.compiles} compilation(s); first predict() "
          f"{predict_first:.2f} s"),
      rate_row("evaluation (Trainer.evaluate)", n_all, eval_s, "crystals/s",
               f"{n_all} crystals, batch {batch}, loss + metrics on both scales; new eval "
               f"compiles {run.eval_step.compiles - c_eval}"),
      rate_row("prediction (Trainer.predict)", n_all, predict_s, "crystals/s",
               f"{n_all} featurised crystals, batch {batch}, {jax.local_device_count()} "
               f"device(s); process as the predict binary's (allocator.applied="
               f"{allocator.applied})"),
  ]


def _featurise_then_predict_row(rows: Sequence[Row], feat_rate: float) -> Row:
  pred_rate = next(r.value for r in rows if r.name == "prediction (Trainer.predict)")
  return Row("prediction incl. featurisation", 1.0 / (1.0 / feat_rate + 1.0 / pred_rate),
             "crystals/s", "derived: structures -> DoS without cache = featurisation and "
             "prediction rows in series")


def inference_in_child(config: ml_collections.ConfigDict, xla_cache: str,
                       argv: Sequence[str]) -> list[Row]:
  """The evaluation/prediction rows, measured by `experiments.benchmark --inference_only`
  in a new process with the same arguments `argv`, so its malloc set-up is the predict
  binary's, not training's (no keep_freed_memory); featurisation and XLA caches are this
  run's."""
  keep = [a for a in argv if not a.startswith(("--output", "--xla_cache_dir"))]
  with tempfile.TemporaryDirectory(prefix="xtal2dos_bench_inference_") as tmp:
    out = os.path.join(tmp, "rows.json")
    cmd = [sys.executable, "-m", "experiments.benchmark", *keep, "--inference_only",
           f"--output={out}", f"--xla_cache_dir={xla_cache}",
           f"--config.data.cache_dir={config.data.cache_dir}"]
    proc = subprocess.run(cmd, env=dict(os.environ, **{allocator.ENV_VAR: "0"}),
                          capture_output=True, text=True)
    if proc.returncode != 0:
      raise RuntimeError(f"benchmark --inference_only failed:\n{proc.stderr[-3000:]}")
    with open(out) as f:
      return [Row(**r) for r in json.load(f)["rows"]]


def run_benchmark(config: ml_collections.ConfigDict, log: Callable[[str], None] = print,
                  inference_rows_fn: Callable[[ml_collections.ConfigDict], list[Row]] | None
                  = None) -> list[Row]:
  """Runs every measurement of the module docstring; returns the rows in table order.

  `inference_rows_fn(config)` measures the evaluation/prediction rows (default: in this
  process, with the trained parameters); the benchmark binary runs them in a child process.

  Featurisation caches go to a temporary directory, removed at the end.
  """
  install_listener()
  config = copy.deepcopy(config)
  config.data.cache_dir = tempfile.mkdtemp(prefix="xtal2dos_bench_")
  try:
    return _run_all(config, log, inference_rows_fn)
  finally:
    shutil.rmtree(config.data.cache_dir, ignore_errors=True)


def _run_all(config: ml_collections.ConfigDict, log: Callable[[str], None],
             inference_rows_fn) -> list[Row]:
  start = time.perf_counter()
  repeats = int(config.bench.repeats)
  rows: list[Row] = []

  data_rows, feat_rate = _data_rows(config, repeats, log)
  rows += data_rows
  rd = run_data.prepare_run_data(config, jax.device_count())
  everything = whole_set(rd)
  t0 = time.perf_counter()
  run = TrainingRun(config, rd)
  rows.append(Row("compile: model init + Trainer set-up", time.perf_counter() - t0, "s",
                  "jit(model.init), optimizer state, replicate"))
  rows += _training_rows(run, config, repeats, log)
  rows.append(_warm_cache_row(run, config))
  inference = (inference_rows_fn(config) if inference_rows_fn
               else _inference_rows(run, everything, repeats, log))
  rows += inference + [_featurise_then_predict_row(inference, feat_rate)]
  if config.bench.bf16_matmul and config.model.dtype == "float32":
    rows += bf16_matmul_rows(run, config, everything, repeats, log)
  rows.append(Row("peak resident memory, bench model", peak_rss_mib(), "MiB",
                  "ru_maxrss of the training process after data, training and bf16 rows "
                  "(before scaling)"))
  main_rate = next(r.value for r in rows if r.name == "train network only (device batches)")
  rows += scaling_rows(run, config, everything, main_rate, log)
  rows.append(Row("peak resident memory, whole benchmark", peak_rss_mib(), "MiB",
                  "ru_maxrss incl. the scaling rows (largest: paper-size model, 128 atoms)"))
  if config.bench.time_to_accuracy:
    rows += time_to_accuracy_rows(_default_recipe(config), config.bench.accuracy_thresholds,
                                  log)
  rows.append(Row("benchmark wall time", time.perf_counter() - start, "s", ""))
  return list(rows)


def _default_recipe(bench_config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The README's first command (configs/phdos.py) on the benchmark's data and caches;
  under --quick (data.limit set) configs/smoke.py, the same recipe shrunk (2 epochs)."""
  from configs import phdos, smoke
  config = smoke.get_config() if bench_config.data.limit else phdos.get_config()
  config.data.cache_dir = bench_config.data.cache_dir
  config.train.progress = False
  return config


def context() -> dict[str, Any]:
  """When, where and how the benchmark ran."""
  return {
      "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
      "command": " ".join(shlex.quote(a) for a in ["python", "-m", "experiments.benchmark"]
                          + sys.argv[1:]),
      "jax": jax.__version__, "backend": jax.default_backend(),
      "devices": jax.device_count(), "cpus": os.cpu_count(),
      "machine": platform.processor() or platform.machine(),
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
  }
