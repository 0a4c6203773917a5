"""Pieces of the speed benchmark (`harness.py`): result rows and their
table, timing helpers, device-resident batches and the network-only training rate."""
from __future__ import annotations

import copy
import dataclasses
import resource
import statistics
import time
from typing import Any, Callable, Sequence

import jax
import ml_collections
import numpy as np

from xtal2dos_jax.input_pipeline import batching, graph_cache, run_data
from xtal2dos_jax.training import train_steps
from xtal2dos_jax.workflows.benchmarks.compile_counter import CountedStep, TrainingRun

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


def timed(fn: Callable[[], Any]) -> float:
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
# Training as the library runs it, timed.


def whole_set(rd: run_data.RunData) -> Any:
  """All splits of a RunData as one LabelledGraphs (train, validation, test order)."""
  parts = [rd.splits[name] for name in ("train", "validation", "test")]
  ids = [i for p in parts for i in p.graphs.ids]
  graphs = [p.graphs.graph(i) for p in parts for i in range(len(p.graphs))]
  return batching.LabelledGraphs(graph_cache.GraphSet.from_graphs(ids, graphs),
                                       np.concatenate([p.y for p in parts]),
                                       np.concatenate([p.y_scale for p in parts]))


def device_sharding(devices):
  """How pmap lays out its outputs: one shard per device on the `train_steps.AXIS` mesh axis."""
  return jax.sharding.NamedSharding(jax.sharding.Mesh(np.array(devices), (train_steps.AXIS,)),
                                    jax.sharding.PartitionSpec(train_steps.AXIS))


def run_device_batches(run: TrainingRun, batches: Sequence[Any]) -> float:
  """`run`'s train step over already device-resident batches; wall seconds."""
  state = run.state
  t0 = time.perf_counter()
  for batch in batches:
    state, out = run.train_step(state, batch)
  jax.block_until_ready((state, out))
  run.state = state
  return time.perf_counter() - t0


def device_batches(trainer, data, budget, plan) -> list:
  """The plan's stacked batches, assembled and placed on the devices up front."""
  sharding = device_sharding(trainer.devices)
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
    seconds += run_device_batches(run, [batches[done % len(batches)]])
    crystals += sum(len(idx) for idx in plan[done % len(plan)])
    done += 1
  return {"rate": crystals / seconds, "step_ms": 1e3 * seconds / done, "steps": done,
          "compiles": run.train_step.compiles - c0,
          "compile_seconds": run.train_step.compile_seconds - s0,
          "first_call_seconds": warm_seconds}


def with_overrides(config: ml_collections.ConfigDict, **sections: dict[str, Any]
                   ) -> ml_collections.ConfigDict:
  """Deep copy of `config` with {section: {key: value}} overrides."""
  out = copy.deepcopy(config)
  for section, values in sections.items():
    for key, value in values.items():
      out[section][key] = value
  return out


def peak_rss_mib() -> float:
  """Peak resident memory of this process so far (Linux ru_maxrss is in KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
