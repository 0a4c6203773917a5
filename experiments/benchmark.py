r"""Speed benchmark: `python -m experiments.benchmark [--config=configs/bench.py] [--quick]`.

Prints one table (name, value, unit, notes) of throughputs measured after warm-up, with
compile times and compile counts as rows of their own:

* data: dataset read time, cold featurisation (crystals/s, no cache), cache-load time;
* training: end to end (host pipeline + pmapped step, train.py's loop) over full epochs
  after a warm-up epoch, and network only (pre-assembled device batches);
* compile counts of the train / eval steps over two epochs (a `jax.monitoring` listener on
  XLA backend compilations, attributed to the step that triggered them), which must equal
  the number of padding buckets (1), with nothing compiled in the second epoch;
* evaluation and prediction crystals/s (`Trainer.evaluate` / `Trainer.predict` on the
  whole set), host pipeline vs device time per step, peak resident memory;
* scaling: the paper-size model, crystal size (supercells) and batch size.

`--quick` shrinks everything (smoke-sized model, data subset) to finish in seconds; it is
what the tests run. `--output=rows.json` also writes the rows as JSON. Throughputs are the
best of `config.bench.repeats` timed repetitions (the notes give the median): the machine
is shared, so the best run is the closest to its capability.
"""
from __future__ import annotations

import copy
import dataclasses
import datetime
import json
import os
import platform
import resource
import shlex
import statistics
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Iterable, Sequence

from absl import app, flags, logging
from ml_collections import config_flags

from experiments import common

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/bench.py", "Benchmark config file.",
                                lock_config=False)
flags.DEFINE_bool("quick", False, "Smoke-sized model and a data subset (seconds; for tests).")
flags.DEFINE_string("output", None, "Also write the rows (and the run's context) as JSON here.")

# Fired by JAX around every XLA backend compilation (or persistent-cache load) of an
# executable; see jax/_src/dispatch.py.
BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
TABLE_HEADER = f"{'name':<48}{'value':>12}  {'unit':<12}notes"


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
    return f"{value:.1f}"
  if abs(value) >= 1:
    return f"{value:.2f}"
  return f"{value:.4g}"


def format_rows(rows: Sequence[Row]) -> str:
  """The table: a header line, then one line per row."""
  lines = [TABLE_HEADER, "-" * len(TABLE_HEADER)]
  for r in rows:
    lines.append(f"{r.name:<48}{_format_value(r.value):>12}  {r.unit:<12}{r.notes}")
  return "\n".join(lines)


def best_of(fn: Callable[[], float], repeats: int) -> tuple[float, float]:
  """(min, median) of `repeats` calls of `fn` (each returns seconds)."""
  times = [fn() for _ in range(max(repeats, 1))]
  return min(times), statistics.median(times)


def rate_row(name: str, items: float, seconds: tuple[float, float], unit: str,
             notes: str = "") -> Row:
  """Throughput row items/s from (best, median) seconds; the median goes to the notes."""
  best, median = seconds
  note = f"best of runs; median {items / median:.1f}"
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
    import jax
    jax.monitoring.register_event_duration_secs_listener(_on_event_duration)
    _LISTENER_INSTALLED = True


def _signature(tree) -> tuple:
  """Static shape/dtype signature of a pytree of arrays (one per padding bucket)."""
  import jax
  import numpy as np
  leaves, treedef = jax.tree.flatten(tree)
  return (str(treedef),) + tuple((np.shape(x), str(x.dtype) if hasattr(x, "dtype") else type(x).__name__) for x in leaves)


class CountedStep:
  """Wraps a (pmapped) step: counts the XLA compilations its calls trigger.

  Only compilations in the calling thread during a call are attributed, so helper
  compilations elsewhere (replicate, indexing, the prefetch thread) are not counted.
  `compiles` / `compile_seconds` are totals; `signatures` holds the distinct static
  shapes of the batch argument (`batch_arg`) seen, i.e. the padding buckets used.
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


def whole_set(rd) -> Any:
  """All splits of a RunData as one LabelledGraphs (train, validation, test order)."""
  import numpy as np
  from xtal2dos_jax import graphset, input_pipeline
  parts = [rd.splits[name] for name in ("train", "validation", "test")]
  ids = [i for p in parts for i in p.graphs.ids]
  graphs = [p.graphs.graph(i) for p in parts for i in range(len(p.graphs))]
  return input_pipeline.LabelledGraphs(graphset.GraphSet.from_graphs(ids, graphs),
                                       np.concatenate([p.y for p in parts]),
                                       np.concatenate([p.y_scale for p in parts]))


class TrainingRun:
  """A `Trainer` whose steps are counted, set up exactly as `train_and_evaluate` does
  (init_state on a one-crystal sample, `Trainer.replicate`, shuffled epoch plans)."""

  def __init__(self, config, rd):
    import numpy as np
    from xtal2dos_jax import input_pipeline, train
    self.config, self.rd = config, rd
    self.trainer = train.Trainer(config, rd.scaler)
    self.train_step = CountedStep(self.trainer.p_train_step)
    self.eval_step = CountedStep(self.trainer.p_eval_step)
    self.predict_step = CountedStep(self.trainer.p_predict_step)
    self.trainer.p_train_step = self.train_step
    self.trainer.p_eval_step = self.eval_step
    self.trainer.p_predict_step = self.predict_step
    self.train_data = rd.splits["train"]
    self.steps_per_epoch = len(self.trainer.plan(self.train_data, rd.budget))
    sample = input_pipeline.assemble(self.train_data, np.arange(1), rd.budget)
    self.state = self.trainer.replicate(self.trainer.init_state(sample, self.steps_per_epoch))
    self.epoch = 0
    grid = rd.grid
    self.bin_width = float(grid[1] - grid[0]) if len(grid) > 1 else 1.0

  def train_epoch(self, *, sync_every_step: bool = True, validate: bool = True) -> EpochRecord:
    """One shuffled epoch; `sync_every_step` reads the step outputs back every step like
    train.py's loop (`float(x[0])`), else only at the end. Validation (optional) is
    outside the timing but inside the compile count."""
    import jax
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

  def evaluate(self, data, params=None) -> dict:
    return self.trainer.evaluate(self.state.params if params is None else params, data,
                                 self.rd.budget, self.bin_width)

  def rereplicated_params(self):
    """Parameters as evaluate/predict get them after a restore: unreplicate + replicate."""
    import flax
    return self.trainer.replicate(flax.jax_utils.unreplicate(self.state.params))


def count_step_compiles(config, num_epochs: int = 2, rd=None) -> dict[str, Any]:
  """Compilations of the train and eval steps over `num_epochs` epochs of training.

  Follows `train.train_and_evaluate`: replicated state, shuffled epochs, validation after
  every epoch, then a final evaluation with re-replicated parameters (the restore-best
  path). Returns per-epoch train/eval compile counts, the final evaluation's compiles,
  their totals and the number of padding buckets (distinct batch shapes) seen.
  """
  from xtal2dos_jax import data as data_lib
  import jax
  if rd is None:
    rd = data_lib.prepare_run_data(config, jax.device_count())
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


def _device_sharding(devices):
  import jax
  import numpy as np
  from xtal2dos_jax import train
  return jax.sharding.NamedSharding(jax.sharding.Mesh(np.array(devices), (train.AXIS,)),
                                    jax.sharding.PartitionSpec(train.AXIS))


def device_batches(trainer, data, budget, plan) -> list:
  """The plan's stacked batches, assembled and placed on the devices up front."""
  import jax
  sharding = _device_sharding(trainer.devices)
  out = [jax.device_put(b, sharding) for b in trainer.batches(data, budget, plan)]
  return jax.block_until_ready(out)


def warm_up(step: CountedStep, state, batch, max_calls: int = 3):
  """Calls `step` until a call compiles nothing (at most `max_calls`).

  Returns (state, seconds of the calls that compiled, number of compiling calls).
  """
  import jax
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


def network_rate(config, data, budget, scaler, steps: int) -> dict[str, float]:
  """Train-step crystals/s on pre-assembled device batches for `config` (fresh Trainer).

  Warms up (compiles) on the first batch, then times `steps` steps cycling over the
  first few batches of the epoch plan.
  """
  import jax
  import numpy as np
  from xtal2dos_jax import input_pipeline, train
  trainer = train.Trainer(config, scaler)
  step = CountedStep(trainer.p_train_step)
  plan = trainer.plan(data, budget, shuffle=False)
  sample = input_pipeline.assemble(data, np.arange(1), budget)
  state = trainer.replicate(trainer.init_state(sample, len(plan)))
  plan = plan[:max(1, min(steps, len(plan)))]
  batches = device_batches(trainer, data, budget, plan)
  state, compile_seconds, compiling_calls = warm_up(step, state, batches[0])
  crystals = 0
  t0 = time.perf_counter()
  for s in range(steps):
    state, out = step(state, batches[s % len(batches)])
    crystals += sum(len(idx) for idx in plan[s % len(plan)])
  jax.block_until_ready((state, out))
  seconds = time.perf_counter() - t0
  return {"rate": crystals / seconds, "step_ms": 1e3 * seconds / steps,
          "compile_seconds": compile_seconds, "compiling_calls": compiling_calls,
          "crystals_per_step": crystals / steps}


# --------------------------------------------------------------------------
# Scaling inputs.


def supercell_set(atoms_per_cell: int, count: int, config, seed: int = 0):
  """`count` rattled supercells of conventional rock-salt NaCl (8 atoms) with
  `atoms_per_cell` atoms each (8, 16, 32, 64, 128, ...), random normalised labels."""
  import ase.build
  import numpy as np
  from xtal2dos_jax import graphset, input_pipeline
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
  graphs, skipped = graphset.featurize_structures(ids, structures, config.data.radius,
                                                  config.data.max_num_nbr)
  if skipped:
    raise RuntimeError(f"supercell featurisation failed: {skipped[0]}")
  y = rng.dirichlet(np.ones(config.data.l_y), count).astype(np.float32)
  return input_pipeline.LabelledGraphs(graphs, y, np.ones(count, np.float32))


def with_overrides(config, **sections):
  """Deep copy of `config` with {section: {key: value}} overrides."""
  out = copy.deepcopy(config)
  for section, values in sections.items():
    for key, value in values.items():
      out[section][key] = value
  return out


def quick_config(config):
  """The `--quick` variant: smoke-sized model, 120 crystals, one repeat, tiny sweeps."""
  from configs import smoke
  out = copy.deepcopy(config)
  s = smoke.get_config()
  for key in ("d_model", "num_heads", "encoder_layers", "decoder_layers", "ff_dim"):
    out.model[key] = s.model[key]
  out.train.batch_size = 16
  out.data.limit = 120
  b = out.bench
  b.repeats = 1
  b.measured_epochs = 1
  b.scaling_steps = 1
  b.atoms_per_cell = (8, 32)
  b.batch_sizes = (16, 32)
  b.paper_model = False
  return out


# --------------------------------------------------------------------------
# The benchmark.


def run_benchmark(config, log: Callable[[str], None] = print) -> list[Row]:
  """Runs every measurement; returns the rows in table order."""
  import jax
  import numpy as np
  from xtal2dos_jax import data as data_lib, datasets, graphset, input_pipeline

  _install_listener()
  b = config.bench
  repeats = int(b.repeats)
  rows: list[Row] = []
  start = time.perf_counter()
  cache_dir = tempfile.mkdtemp(prefix="xtal2dos_bench_")
  config = copy.deepcopy(config)
  config.data.cache_dir = cache_dir

  # --- data ---------------------------------------------------------------
  log("data: read, featurise, cache")
  raw_box = {}

  def read():
    t0 = time.perf_counter()
    raw_box["raw"] = datasets.load_raw_dataset(config.data)
    return time.perf_counter() - t0
  read_s = best_of(read, repeats)
  raw = raw_box["raw"]
  if config.data.limit and config.data.limit < len(raw):
    raw = raw.subset(np.arange(config.data.limit))
  n = len(raw)
  rows.append(Row("dataset read (load_raw_dataset)", read_s[0], "s",
                  f"{n} crystals used; best of {repeats}, median {read_s[1]:.3g} s"))
  r, k = config.data.radius, config.data.max_num_nbr

  def featurise():
    t0 = time.perf_counter()
    graphset.featurize_structures(raw.ids, raw.structures, r, k)
    return time.perf_counter() - t0
  rows.append(rate_row("featurisation, cold (no cache)", n, best_of(featurise, repeats),
                       "crystals/s", f"featurize_structures, radius {r} A, {k} neighbours"))
  warm_dir = os.path.join(cache_dir, "warm")
  graphset.load_or_featurize(raw.ids, raw.structures, r, k, cache_dir=warm_dir)

  def cache_load():
    t0 = time.perf_counter()
    *_, hit = graphset.load_or_featurize(raw.ids, raw.structures, r, k, cache_dir=warm_dir)
    assert hit, "the warm cache was not used"
    return time.perf_counter() - t0
  load_s = best_of(cache_load, max(repeats, 2))
  rows.append(Row("featurisation cache load (warm)", load_s[0], "s",
                  f"load_or_featurize hit incl. content hash; best of {max(repeats, 2)}, "
                  f"median {load_s[1]:.3g} s"))

  rd = data_lib.prepare_run_data(config, jax.device_count())
  train_data = rd.splits["train"]
  everything = whole_set(rd)

  # --- training: compile counts, end to end --------------------------------
  log("training: warm-up epoch, compile counts, steady-state epochs")
  t0 = time.perf_counter()
  run = TrainingRun(config, rd)
  init_s = time.perf_counter() - t0
  warm = run.train_epoch()
  steady = [run.train_epoch() for _ in range(max(int(b.measured_epochs), 1))]
  final_eval_before = run.eval_step.compiles
  run.evaluate(rd.splits["validation"], run.rereplicated_params())
  final_eval_compiles = run.eval_step.compiles - final_eval_before
  buckets = len(run.train_step.signatures)
  rows.append(Row("compile: model init + Trainer set-up", init_s, "s",
                  "jit(model.init) + optimizer state + replicate"))
  rows.append(Row("compile: train step", run.train_step.compile_seconds, "s",
                  f"XLA backend time, {run.train_step.compiles} compilation(s)"))
  rows.append(Row("compile: eval step", run.eval_step.compile_seconds, "s",
                  f"XLA backend time, {run.eval_step.compiles} compilation(s)"))
  rows.append(Row("compiles: train step, epoch 1", warm.train_compiles, "count",
                  f"padding buckets: {buckets}; expected {buckets}"))
  rows.append(Row("compiles: train step, epoch 2+", sum(s.train_compiles for s in steady),
                  "count", "expected 0"))
  rows.append(Row("compiles: eval step, epoch 1", warm.eval_compiles, "count",
                  f"validation after the epoch; buckets {len(run.eval_step.signatures)}"))
  rows.append(Row("compiles: eval step, epoch 2+", sum(s.eval_compiles for s in steady),
                  "count", "expected 0"))
  rows.append(Row("compiles: eval step, re-replicated params", final_eval_compiles, "count",
                  "final evaluation after unreplicate+replicate (restore path); expected 0"))
  rates = sorted(s.crystals / s.seconds for s in steady)
  rows.append(Row("train e2e (train.py loop)", rates[-1], "crystals/s",
                  f"host pipeline + pmapped step, float(out) every step; {len(steady)} epochs "
                  f"of {steady[0].steps} steps after a warm-up epoch; best; median "
                  f"{statistics.median(rates):.1f}; warm-up epoch "
                  f"{warm.crystals / warm.seconds:.1f}"))
  nosync = [run.train_epoch(sync_every_step=False, validate=False) for _ in range(repeats)]
  nosync_rates = sorted(s.crystals / s.seconds for s in nosync)
  rows.append(Row("train e2e, no per-step host sync", nosync_rates[-1], "crystals/s",
                  f"as above, outputs read once per epoch; best of {repeats}; median "
                  f"{statistics.median(nosync_rates):.1f}"))

  # --- network only, host pipeline vs device --------------------------------
  log("training: network only, host pipeline")
  trainer = run.trainer
  plan = trainer.plan(train_data, rd.budget, epoch=0, shuffle=True)
  crystals = sum(len(idx) for step in plan for idx in step)
  on_device = device_batches(trainer, train_data, rd.budget, plan)
  before = run.train_step.compiles
  run.state, _, _ = warm_up(run.train_step, run.state, on_device[0])
  device_put_compiles = run.train_step.compiles - before

  def network():
    state = run.state
    t0 = time.perf_counter()
    for batch in on_device:
      state, out = run.train_step(state, batch)
    jax.block_until_ready((state, out))
    run.state = state
    return time.perf_counter() - t0
  net_s = best_of(network, repeats)
  rows.append(rate_row("train network only (device batches)", crystals, net_s, "crystals/s",
                       f"{len(plan)} steps of pre-assembled batches"
                       + (f"; device-placed batches caused {device_put_compiles} extra "
                          "compile(s)" if device_put_compiles else "")))
  step_ms = 1e3 * net_s[0] / len(plan)
  rows.append(Row("device step time (train)", step_ms, "ms/step",
                  f"{crystals / len(plan):.1f} crystals/step, budget {tuple(rd.budget)}"))
  devices = trainer.devices

  def host_pipeline():
    t0 = time.perf_counter()
    for step in plan:
      input_pipeline.stack([input_pipeline.assemble(train_data, idx, rd.budget)
                            for idx in step])
    return time.perf_counter() - t0
  host_s = best_of(host_pipeline, repeats)
  rows.append(Row("host pipeline time (assemble+stack)", 1e3 * host_s[0] / len(plan), "ms/step",
                  f"{100 * host_s[0] / net_s[0]:.1f}% of the device step; runs in a "
                  "prefetch thread"))
  sharding = _device_sharding(devices)
  host_batches = [input_pipeline.stack([input_pipeline.assemble(train_data, idx, rd.budget)
                                        for idx in step]) for step in plan]

  def transfer():
    t0 = time.perf_counter()
    jax.block_until_ready([jax.device_put(x, sharding) for x in host_batches])
    return time.perf_counter() - t0
  tr_s = best_of(transfer, repeats)
  rows.append(Row("host->device transfer", 1e3 * tr_s[0] / len(plan), "ms/step",
                  "jax.device_put of one stacked batch"))

  # --- evaluation and prediction --------------------------------------------
  log("evaluation and prediction on the whole set")
  params = run.state.params
  n_all = len(everything.graphs)
  c_eval, c_pred = run.eval_step.compiles, run.predict_step.compiles
  t0 = time.perf_counter()
  run.trainer.predict(params, everything, rd.budget)
  predict_first_s = time.perf_counter() - t0
  run.evaluate(everything)
  eval_s = best_of(lambda: _timed(lambda: run.evaluate(everything)), repeats)
  predict_s = best_of(lambda: _timed(lambda: run.trainer.predict(params, everything,
                                                                 rd.budget)), repeats)
  rows.append(Row("compile: predict step", run.predict_step.compile_seconds, "s",
                  f"XLA backend time; first predict() call {predict_first_s:.2f} s"))
  rows.append(rate_row("evaluation (Trainer.evaluate)", n_all, eval_s, "crystals/s",
                       f"whole set, batch {config.train.batch_size}, loss + metrics on both "
                       f"scales; new eval compiles {run.eval_step.compiles - c_eval}"))
  rows.append(rate_row("prediction (Trainer.predict)", n_all, predict_s, "crystals/s",
                       f"whole set, batch {config.train.batch_size}, featurised graphs; "
                       f"predict compiles {run.predict_step.compiles - c_pred}"))
  feat_rate = next(row.value for row in rows if row.name.startswith("featurisation, cold"))
  pred_rate = n_all / predict_s[0]
  rows.append(Row("prediction incl. featurisation", 1.0 / (1.0 / feat_rate + 1.0 / pred_rate),
                  "crystals/s", "derived: structures -> DoS, no cache (serial composition of "
                  "the two rows above)"))

  # --- scaling ---------------------------------------------------------------
  steps = int(b.scaling_steps)
  if b.paper_model:
    log("scaling: paper-size model")
    paper = with_overrides(config, model=dict(
        d_model=int(b.paper_d_model), num_heads=int(b.paper_num_heads),
        decoder_layers=int(b.paper_decoder_layers), ff_dim=int(b.paper_ff_dim)))
    res = network_rate(paper, train_data, rd.budget, rd.scaler, steps)
    rows.append(Row("scaling: paper-size model, train", res["rate"], "crystals/s",
                    f"d_model {b.paper_d_model}, {b.paper_num_heads} heads, "
                    f"{b.paper_decoder_layers} decoder layers, ff {b.paper_ff_dim}; network "
                    f"only, {steps} steps; {res['step_ms']:.0f} ms/step; compile "
                    f"{res['compile_seconds']:.1f} s"))
  for atoms in b.atoms_per_cell:
    log(f"scaling: {atoms} atoms per cell")
    bs = int(config.train.batch_size)
    data = supercell_set(int(atoms), bs * max(steps, 1), config)
    budget = input_pipeline.make_budget(data.graphs.n_node, data.graphs.n_edge, bs)
    res = network_rate(config, data, budget, rd.scaler, steps)
    rows.append(Row(f"scaling: {atoms} atoms/cell, train", res["rate"], "crystals/s",
                    f"NaCl supercells, {int(data.graphs.n_edge.mean())} edges/crystal, budget "
                    f"{budget.n_node} nodes / {budget.n_edge} edges; {res['step_ms']:.0f} "
                    f"ms/step; {atoms * res['rate']:.0f} atoms/s; compile "
                    f"{res['compile_seconds']:.1f} s"))
  main_rate = next(row.value for row in rows if row.name.startswith("train network only"))
  for bs in b.batch_sizes:
    bs = int(bs)
    if bs == int(config.train.batch_size):
      rows.append(Row(f"scaling: batch {bs}, train", main_rate, "crystals/s",
                      "= 'train network only' row"))
      continue
    log(f"scaling: batch size {bs}")
    cfg = with_overrides(config, train=dict(batch_size=bs))
    n_dev = jax.device_count()
    budget = input_pipeline.make_budget(everything.graphs.n_node, everything.graphs.n_edge,
                                        data_lib.per_device_batch_size(bs, n_dev))
    res = network_rate(cfg, train_data, budget, rd.scaler, steps)
    rows.append(Row(f"scaling: batch {bs}, train", res["rate"], "crystals/s",
                    f"network only, {steps} steps; {res['step_ms']:.0f} ms/step; compile "
                    f"{res['compile_seconds']:.1f} s"))

  rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  rows.append(Row("peak resident memory", rss_kib / 1024.0, "MiB", "ru_maxrss of this process"))
  rows.append(Row("benchmark wall time", time.perf_counter() - start, "s", ""))
  return rows


def _timed(fn: Callable[[], Any]) -> float:
  t0 = time.perf_counter()
  fn()
  return time.perf_counter() - t0


def context() -> dict[str, Any]:
  """When, where and how the benchmark ran."""
  import jax
  return {
      "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
      "command": " ".join(shlex.quote(a) for a in ["python", "-m", "experiments.benchmark"]
                          + sys.argv[1:]),
      "jax": jax.__version__, "backend": jax.default_backend(),
      "devices": jax.device_count(), "cpus": os.cpu_count(),
      "machine": platform.processor() or platform.machine(),
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
  }


def main(argv):
  del argv
  common.setup_runtime()
  config = FLAGS.config
  if FLAGS.quick:
    config = quick_config(config)
  info = context()
  with common.user_errors():
    rows = run_benchmark(config, log=lambda msg: logging.info("benchmark: %s", msg))
  print(f"# xtal2dos_jax benchmark, {info['date']}; jax {info['jax']} ({info['backend']}, "
        f"{info['devices']} device(s), {info['cpus']} CPUs); {info['command']}")
  print(format_rows(rows))
  if FLAGS.output:
    with open(FLAGS.output, "w") as f:
      json.dump({"context": info, "rows": [dataclasses.asdict(r) for r in rows]}, f, indent=1)


if __name__ == "__main__":
  app.run(main)
