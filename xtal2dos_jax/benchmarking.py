"""Speed measurements behind `python -m experiments.benchmark` (see that binary).

Rows of (name, value, unit, notes): featurisation, training (end to end and network
only), compile counts and times, page faults per training step, evaluation / prediction
throughput, memory, the opt-in bf16_matmul precision mode, and scaling with model,
crystal and batch size. Throughputs are best-of-N after warm-up.
"""
from __future__ import annotations

import copy
import dataclasses
import datetime
import math
import os
import platform
import resource
import shlex
import shutil
import statistics
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Sequence

import ase.build
import flax
import jax
import ml_collections
import numpy as np

from xtal2dos_jax import run_data
from xtal2dos_jax import allocator, datasets, graph_cache, batching, train

# Fired by JAX around every XLA backend compilation (or persistent-cache load) of an
# executable; see jax/_src/dispatch.py.
BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
TABLE_HEADER = f"{'name':<46}{'value':>11}  {'unit':<12}notes"


# --------------------------------------------------------------------------
# Rows and the table.


@dataclasses.dataclass
class Row:
  """One benchmark result: `value` in `unit`; `notes` says how it was measured."""
  name: str
  value: float
  unit: str
  notes: str = ""


def _format_value(value: float) -> str:
  if value != value:  # NaN: not measured
    return "-"
  if float(value).is_integer() and abs(value) < 1e9:
    return f"{int(value):d}"
  if abs(value) >= 100:
    return f"{value:.0f}"
  if abs(value) >= 1:
    return f"{value:.2f}"
  return f"{value:.3g}"


def format_rows(rows: Sequence[Row]) -> str:
  """The table: a header line, a rule, then one line per row."""
  lines = [TABLE_HEADER, "-" * len(TABLE_HEADER)]
  for r in rows:
    lines.append(f"{r.name:<46}{_format_value(r.value):>11}  {r.unit:<12}{r.notes}")
  return "\n".join(lines)


def _timed(fn: Callable[[], Any]) -> float:
  """Wall seconds of one call of `fn`."""
  t0 = time.perf_counter()
  fn()
  return time.perf_counter() - t0


def best_of(fn: Callable[[], float], repeats: int) -> tuple[float, float]:
  """(min, median) over `repeats` calls of `fn`, each returning seconds."""
  times = [fn() for _ in range(max(repeats, 1))]
  return min(times), statistics.median(times)


def rate_row(name: str, items: float, seconds: tuple[float, float], unit: str,
             notes: str = "") -> Row:
  """Throughput row items/s from (best, median) seconds; the median goes to the notes."""
  best, median = seconds
  note = f"best; median {items / median:.1f}"
  return Row(name, items / best, unit, f"{note}; {notes}" if notes else note)


# --------------------------------------------------------------------------
# Counting compilations.

_WATCHERS: list[tuple[int, "CountedStep"]] = []
_LISTENER_INSTALLED = False


def _on_event_duration(event: str, duration: float, **kwargs) -> None:
  del kwargs
  if event != BACKEND_COMPILE_EVENT:
    return
  me = threading.get_ident()
  for thread, watcher in list(_WATCHERS):
    if thread == me:
      watcher.compiles += 1
      watcher.compile_seconds += duration


def _install_listener() -> None:
  global _LISTENER_INSTALLED
  if not _LISTENER_INSTALLED:
    jax.monitoring.register_event_duration_secs_listener(_on_event_duration)
    _LISTENER_INSTALLED = True


def _signature(tree) -> tuple:
  """Static shape/dtype signature of a pytree of arrays (one per padding bucket)."""
  leaves, treedef = jax.tree.flatten(tree)
  return (str(treedef),) + tuple((np.shape(x), str(getattr(x, "dtype", type(x).__name__)))
                                 for x in leaves)


class CountedStep:
  """Wraps a (pmapped) step and counts the XLA compilations its calls trigger.

  Only compilations in the calling thread during a call are attributed, so helper
  compilations elsewhere (replicate, indexing, the prefetch thread) are not counted.
  A persistent-cache load counts as a compilation (it creates an executable too).
  `compile_seconds` is the XLA backend time of those compilations; `signatures` holds
  the distinct static shapes of the batch argument (`batch_arg`), i.e. padding buckets.
  """

  def __init__(self, fn: Callable, batch_arg: int = 1):
    _install_listener()
    self.fn = fn
    self.batch_arg = batch_arg
    self.compiles = 0
    self.compile_seconds = 0.0
    self.calls = 0
    self.signatures: set[tuple] = set()

  def __call__(self, *args, **kwargs):
    self.calls += 1
    self.signatures.add(_signature(args[self.batch_arg]))
    entry = (threading.get_ident(), self)
    _WATCHERS.append(entry)
    try:
      return self.fn(*args, **kwargs)
    finally:
      _WATCHERS.remove(entry)


# --------------------------------------------------------------------------
# Training, evaluation and prediction as the library runs them.


@dataclasses.dataclass
class EpochRecord:
  """One training epoch: wall seconds, real crystals, steps and compiles it triggered."""
  seconds: float
  crystals: int
  steps: int
  train_compiles: int
  eval_compiles: int

  @property
  def rate(self) -> float:
    return self.crystals / self.seconds


def whole_set(rd: run_data.RunData) -> Any:
  """All splits of a RunData as one LabelledGraphs (train, validation, test order)."""
  parts = [rd.splits[name] for name in ("train", "validation", "test")]
  ids = [i for p in parts for i in p.graphs.ids]
  graphs = [p.graphs.graph(i) for p in parts for i in range(len(p.graphs))]
  return batching.LabelledGraphs(graph_cache.GraphSet.from_graphs(ids, graphs),
                                       np.concatenate([p.y for p in parts]),
                                       np.concatenate([p.y_scale for p in parts]))


def _device_sharding(devices):
  """How pmap lays out its outputs: one shard per device on the `train.AXIS` mesh axis."""
  return jax.sharding.NamedSharding(jax.sharding.Mesh(np.array(devices), (train.AXIS,)),
                                    jax.sharding.PartitionSpec(train.AXIS))


class TrainingRun:
  """A `Trainer` whose steps are counted, set up as `train_and_evaluate` does
  (init_state on a one-crystal sample, `Trainer.replicate`, shuffled epoch plans)."""

  def __init__(self, config: ml_collections.ConfigDict, rd: run_data.RunData,
               devices=None):
    self.config, self.rd = config, rd
    self.trainer = train.Trainer(config, rd.scaler, devices=devices)
    self.train_step = CountedStep(self.trainer.p_train_step)
    self.eval_step = CountedStep(self.trainer.p_eval_step)
    self.predict_step = CountedStep(self.trainer.p_predict_step)
    self.trainer.p_train_step = self.train_step
    self.trainer.p_eval_step = self.eval_step
    self.trainer.p_predict_step = self.predict_step
    self.train_data = rd.splits["train"]
    self.steps_per_epoch = len(self.trainer.plan(self.train_data, rd.budget))
    sample = batching.assemble(self.train_data, np.arange(1), rd.budget)
    self.state = self.trainer.replicate(self.trainer.init_state(sample, self.steps_per_epoch))
    self.epoch = 0
    grid = rd.grid
    self.bin_width = float(grid[1] - grid[0]) if len(grid) > 1 else 1.0

  def train_epoch(self, *, sync_every_step: bool = True, validate: bool = True) -> EpochRecord:
    """One shuffled epoch through `Trainer.batches` (prefetching host pipeline).

    `sync_every_step` reads the step outputs back every step as train.py's loop does
    (`float(x[0])`), else only at the end. Validation (optional) is outside the timing
    but inside the compile count.
    """
    trainer, budget = self.trainer, self.rd.budget
    plan = trainer.plan(self.train_data, budget, epoch=self.epoch, shuffle=True)
    crystals = sum(len(idx) for step in plan for idx in step)
    c_train, c_eval = self.train_step.compiles, self.eval_step.compiles
    state, outs = self.state, []
    t0 = time.perf_counter()
    for batch in trainer.batches(self.train_data, budget, plan):
      state, out = trainer.p_train_step(state, batch)
      if sync_every_step:
        out = jax.tree.map(lambda x: float(x[0]), out)
      outs.append(out)
    jax.block_until_ready((state, outs))
    seconds = time.perf_counter() - t0
    self.state = state
    self.epoch += 1
    if validate:
      self.evaluate(self.rd.splits["validation"])
    return EpochRecord(seconds, crystals, len(plan), self.train_step.compiles - c_train,
                       self.eval_step.compiles - c_eval)

  def run_device_batches(self, batches: Sequence[Any]) -> float:
    """Train steps over already device-resident batches; wall seconds."""
    state = self.state
    t0 = time.perf_counter()
    for batch in batches:
      state, out = self.train_step(state, batch)
    jax.block_until_ready((state, out))
    self.state = state
    return time.perf_counter() - t0

  def evaluate(self, data, params=None) -> dict:
    return self.trainer.evaluate(self.state.params if params is None else params, data,
                                 self.rd.budget, self.bin_width)

  def rereplicated_params(self):
    """Parameters as evaluate/predict get them after a restore: unreplicate + replicate."""
    return self.trainer.replicate(flax.jax_utils.unreplicate(self.state.params))


def count_step_compiles(config: ml_collections.ConfigDict, num_epochs: int = 2,
                        rd: "run_data.RunData | None" = None) -> dict[str, Any]:
  """Compilations of the train and eval steps over `num_epochs` epochs of training.

  Follows `train.train_and_evaluate`: replicated state, shuffled epochs, validation after
  every epoch, then a final evaluation with re-replicated parameters (the restore-best
  path). Returns per-epoch train/eval compile counts, the final evaluation's compiles,
  totals, and the number of padding buckets (distinct batch shapes) each step saw.
  """
  if rd is None:
    rd = run_data.prepare_run_data(config, jax.device_count())
  run = TrainingRun(config, rd)
  records = [run.train_epoch() for _ in range(num_epochs)]
  before = run.eval_step.compiles
  run.evaluate(rd.splits["validation"], run.rereplicated_params())
  return {
      "train_per_epoch": [r.train_compiles for r in records],
      "eval_per_epoch": [r.eval_compiles for r in records],
      "eval_final_rereplicated": run.eval_step.compiles - before,
      "train_total": run.train_step.compiles,
      "eval_total": run.eval_step.compiles,
      "train_buckets": len(run.train_step.signatures),
      "eval_buckets": len(run.eval_step.signatures),
      "train_compile_seconds": run.train_step.compile_seconds,
      "eval_compile_seconds": run.eval_step.compile_seconds,
  }


def device_batches(trainer, data, budget, plan) -> list:
  """The plan's stacked batches, assembled and placed on the devices up front."""
  sharding = _device_sharding(trainer.devices)
  out = [jax.device_put(b, sharding) for b in trainer.batches(data, budget, plan)]
  return jax.block_until_ready(out)


def warm_up(step: CountedStep, state, batch, max_calls: int = 3):
  """Calls `step` until a call compiles nothing (at most `max_calls` calls).

  Returns (state, wall seconds of the compiling calls, number of compiling calls).
  """
  seconds, compiling = 0.0, 0
  for _ in range(max_calls):
    before = step.compiles
    t0 = time.perf_counter()
    state, out = step(state, batch)
    jax.block_until_ready((state, out))
    if step.compiles == before:
      break
    seconds += time.perf_counter() - t0
    compiling += 1
  return state, seconds, compiling


def network_rate(run: TrainingRun, data, budget, steps: int,
                 max_seconds: float = 20.0) -> dict[str, float]:
  """Train-step crystals/s of `run`'s model on `data` packed with `budget`.

  Pre-assembles device batches, warms up (compiles the new shapes), then times up to
  `steps` steps (at least one; fewer if they exceed `max_seconds`).
  """
  plan = run.trainer.plan(data, budget, shuffle=False)[:max(1, steps)]
  batches = device_batches(run.trainer, data, budget, plan)
  c0, s0 = run.train_step.compiles, run.train_step.compile_seconds
  run.state, warm_seconds, _ = warm_up(run.train_step, run.state, batches[0])
  crystals, seconds, done = 0, 0.0, 0
  while done < max(1, steps) and (done == 0 or seconds < max_seconds):
    seconds += run.run_device_batches([batches[done % len(batches)]])
    crystals += sum(len(idx) for idx in plan[done % len(plan)])
    done += 1
  return {"rate": crystals / seconds, "step_ms": 1e3 * seconds / done, "steps": done,
          "compiles": run.train_step.compiles - c0,
          "compile_seconds": run.train_step.compile_seconds - s0,
          "first_call_seconds": warm_seconds}


# --------------------------------------------------------------------------
# Scaling inputs and config variants.


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


def with_overrides(config: ml_collections.ConfigDict, **sections: dict[str, Any]
                   ) -> ml_collections.ConfigDict:
  """Deep copy of `config` with {section: {key: value}} overrides."""
  out = copy.deepcopy(config)
  for section, values in sections.items():
    for key, value in values.items():
      out[section][key] = value
  return out


def quick_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The `--quick` variant: smoke-sized model, 96 crystals, one repeat, tiny sweeps."""
  from configs import smoke
  out = copy.deepcopy(config)
  s = smoke.get_config()
  for key in ("d_model", "num_heads", "encoder_layers", "decoder_layers", "ff_dim"):
    out.model[key] = s.model[key]
  out.train.batch_size = 16
  out.data.limit = 96
  b = out.bench
  b.repeats = 1
  b.measured_epochs = 1
  b.scaling_steps = 1
  b.atoms_per_cell = (8,)
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
    t0 = time.perf_counter()
    box["raw"] = datasets.load_raw_dataset(config.data)
    return time.perf_counter() - t0
  read_s = best_of(read, repeats)
  raw = box["raw"]
  if config.data.limit and config.data.limit < len(raw):
    raw = raw.subset(np.arange(config.data.limit))
  n, r, k = len(raw), config.data.radius, config.data.max_num_nbr
  rows = [Row("dataset read (load_raw_dataset)", read_s[0], "s",
              f"config.data source incl. validation; best; median {read_s[1]:.3g} s; "
              f"{n} crystals used")]
  feat = best_of(lambda: _timed(lambda: graph_cache.featurize_structures(raw.ids, raw.structures,
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
    net.append(crystals / run.run_device_batches(on_device))
    faults += resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    nosync.append(run.train_epoch(sync_every_step=False, validate=False).rate)
  med = statistics.median
  rows.append(Row("train e2e (train.py loop)", max(nosync), "crystals/s",
                  f"best of {len(nosync)} epochs of {len(plan)} steps after warm-up; median "
                  f"{med(nosync):.1f}; host pipeline + pmapped step, outputs read once per "
                  "epoch"))
  rows.append(Row("train e2e, host sync every step", max(e2e), "crystals/s",
                  f"best; median {med(e2e):.1f}; float(out) after every step (train.py's "
                  "loop before 715d1c5)"))
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
      batching.stack([batching.assemble(train_data, idx, rd.budget)
                            for idx in step])
    return time.perf_counter() - t0
  host_s = best_of(host_pipeline, repeats)
  rows.append(Row("host pipeline time (assemble+stack)", 1e3 * host_s[0] / len(plan),
                  "ms/step", f"{100 * host_s[0] / len(plan) / step_ms:.1f}% of the device "
                  "step; overlapped by the prefetch thread"))
  sharding = _device_sharding(run.trainer.devices)
  host = [batching.stack([batching.assemble(train_data, idx, rd.budget)
                                for idx in step]) for step in plan]
  put_s = best_of(lambda: _timed(lambda: jax.block_until_ready(
      [jax.device_put(x, sharding) for x in host])), repeats)
  rows.append(Row("host->device transfer", 1e3 * put_s[0] / len(plan), "ms/step",
                  "jax.device_put of one stacked batch"))
  return rows


def _warm_cache_row(run: TrainingRun, config) -> Row:
  """First train step of a second, identical Trainer: served by the persistent cache."""
  trainer = train.Trainer(config, run.rd.scaler)
  step = CountedStep(trainer.p_train_step)
  batch = batching.stack([batching.assemble(run.train_data, np.arange(8),
                                                        run.rd.budget)] * trainer.num_local_devices)
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
  _install_listener()
  rd = run_data.prepare_run_data(config, jax.device_count())
  return _inference_rows(TrainingRun(config, rd), whole_set(rd), int(config.bench.repeats),
                         log)


def _inference_rows(run: TrainingRun, everything, repeats: int, log) -> list[Row]:
  """Trainer.evaluate / Trainer.predict over the whole set, after a warm-up call."""
  log("evaluation and prediction on the whole set")
  rd, params = run.rd, run.state.params
  n_all = len(everything.graphs)
  batch = run.config.train.batch_size
  predict_first = _timed(lambda: run.trainer.predict(params, everything, rd.budget))
  run.evaluate(everything)
  c_eval = run.eval_step.compiles
  eval_s = best_of(lambda: _timed(lambda: run.evaluate(everything)), repeats)
  predict_s = best_of(lambda: _timed(lambda: run.trainer.predict(params, everything,
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


def _bf16_matmul_rows(run: TrainingRun, config, everything, repeats: int, log) -> list[Row]:
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
  predict = lambda r: _timed(lambda: r.trainer.predict(r.state.params, everything, rd.budget))
  predict(run)   # compile both precisions' predict steps before timing
  predict(bf16)
  n_all = len(everything.graphs)
  times = {"train32": [], "train16": [], "predict32": [], "predict16": []}
  for _ in range(max(repeats, 1)):
    times["train32"].append(run.run_device_batches(on_device))
    times["train16"].append(bf16.run_device_batches(on_device))
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


def _scaling_rows(run: TrainingRun, config, everything, main_rate: float, log) -> list[Row]:
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
  import json
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


def _peak_rss_mib() -> float:
  """Peak resident memory of this process so far (Linux ru_maxrss is in KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_benchmark(config: ml_collections.ConfigDict, log: Callable[[str], None] = print,
                  inference_rows_fn: Callable[[ml_collections.ConfigDict], list[Row]] | None
                  = None) -> list[Row]:
  """Runs every measurement of the module docstring; returns the rows in table order.

  `inference_rows_fn(config)` measures the evaluation/prediction rows (default: in this
  process, with the trained parameters); the benchmark binary runs them in a child process.

  Featurisation caches go to a temporary directory, removed at the end.
  """
  _install_listener()
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
  if config.bench.get("bf16_matmul", False) and config.model.dtype == "float32":
    rows += _bf16_matmul_rows(run, config, everything, repeats, log)
  rows.append(Row("peak resident memory, bench model", _peak_rss_mib(), "MiB",
                  "ru_maxrss of the training process after data, training and bf16 rows "
                  "(before scaling)"))
  main_rate = next(r.value for r in rows if r.name == "train network only (device batches)")
  rows += _scaling_rows(run, config, everything, main_rate, log)
  rows.append(Row("peak resident memory, whole benchmark", _peak_rss_mib(), "MiB",
                  "ru_maxrss incl. the scaling rows (largest: paper-size model, 128 atoms)"))
  if config.bench.get("time_to_accuracy", False):
    rows += time_to_accuracy_rows(_default_recipe(config), config.bench.accuracy_thresholds,
                                  log)
  rows.append(Row("benchmark wall time", time.perf_counter() - start, "s", ""))
  return list(rows)


def _default_recipe(bench_config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The README's first command (configs/phdos.py) on the benchmark's data and caches;
  under --quick (data.limit set) shrunk like the rest of the benchmark."""
  from configs import phdos
  config = phdos.get_config()
  config.data.cache_dir = bench_config.data.cache_dir
  config.train.progress = False
  if bench_config.data.limit:
    config.data.limit = bench_config.data.limit
    for key in ("d_model", "num_heads", "encoder_layers", "decoder_layers", "ff_dim"):
      config.model[key] = bench_config.model[key]
    config.train.num_epochs = 2
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
