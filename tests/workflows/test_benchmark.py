"""Tests for the benchmark: compile counts (`benchmarks/compile_counter.py`, no timing), the
harness's table and time-to-accuracy helpers (`benchmarks/tools.py`, `scaling.py`) and the
--quick run."""
import os
import subprocess
import sys
import tempfile

import pytest

from configs import smoke
from xtal2dos_jax.workflows.benchmarks import compile_counter, scaling, tools

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_train_and_eval_steps_compile_once_per_bucket(tmp_path):
  config = smoke.get_config()
  config.data.limit = 48
  config.data.cache_dir = str(tmp_path / "graphs")
  counts = compile_counter.count_step_compiles(config, num_epochs=2)
  # One padding bucket, so one executable per step function ...
  assert counts["train_buckets"] == 1
  assert counts["eval_buckets"] == 1
  assert counts["train_total"] == 1, counts
  assert counts["eval_total"] == 1, counts
  # ... all of it in the first epoch: nothing new in epoch 2 or after re-replicating.
  assert counts["train_per_epoch"] == [1, 0], counts
  assert counts["eval_per_epoch"] == [1, 0], counts
  assert counts["eval_final_rereplicated"] == 0, counts


def test_counted_step_attributes_compiles_to_the_calling_step():
  import jax
  import jax.numpy as jnp
  import numpy as np
  step = compile_counter.CountedStep(jax.jit(lambda x, y: x * y.sum() + 1.0), batch_arg=1)
  other = jax.jit(lambda x: x - 2.0)
  x = jnp.ones(3)
  step(x, np.ones(3, np.float32))
  other(x)                                  # compiles, but not during a call of `step`
  step(x, np.full(3, 2.0, np.float32))      # same shapes: cached
  assert (step.compiles, len(step.signatures)) == (1, 1)
  step(x, np.ones(4, np.float32))           # a new bucket compiles once more
  assert (step.compiles, len(step.signatures)) == (2, 2)
  assert step.compile_seconds > 0


def test_format_rows_has_header_and_one_line_per_row():
  rows = [tools.Row("a", 1.5, "s", "note"), tools.Row("b", 1234.0, "crystals/s")]
  lines = tools.format_rows(rows).splitlines()
  assert lines[0] == tools.TABLE_HEADER
  assert len(lines) == 2 + len(rows)
  assert lines[2].startswith("a") and lines[2].rstrip().endswith("note")


@pytest.mark.slow
@pytest.mark.long
def test_quick_benchmark_runs_and_prints_the_table(tmp_path):
  env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "xdg"), JAX_PLATFORMS="cpu")
  # Reuse the test session's compiled executables (conftest), so reruns are fast.
  xla_cache = os.path.join(tempfile.gettempdir(), "xtal2dos_jax_tests", "benchmark_xla")
  out = tmp_path / "rows.json"
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.benchmark", "--quick", f"--output={out}",
       f"--xla_cache_dir={xla_cache}"],
      cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert tools.TABLE_HEADER in proc.stdout
  import json
  rows = {r["name"]: r for r in json.load(open(out))["rows"]}
  assert rows["compiles: train step, epoch 1"]["value"] == 1
  assert rows["compiles: train step, epoch 2"]["value"] == 0
  assert rows["train network only (device batches)"]["value"] > 0
  assert rows["bf16_matmul: train network only"]["value"] > 0
  assert rows["bf16_matmul: prediction (Trainer.predict)"]["value"] > 0
  if sys.platform.startswith("linux"):  # the benchmark binary keeps freed memory
    assert rows["page faults per train step"]["notes"].endswith("keep_freed_memory applied")
    # ... but the inference rows come from a child set up as the predict binary is.
    assert rows["prediction (Trainer.predict)"]["notes"].endswith("allocator.applied=False)")
  assert rows["prediction (Trainer.predict)"]["value"] > 0
  assert rows["evaluation (Trainer.evaluate)"]["value"] > 0
  assert rows["prediction incl. featurisation"]["value"] > 0
  assert rows["featurise 8 atoms: speed-up"]["notes"].endswith("graphs identical")
  reached = rows["time to validation R^2 -1000000000.00"]
  assert reached["value"] > 0 and reached["notes"].startswith("epoch 1 of 2")
  assert rows["time to validation R^2 0.99"]["notes"].startswith("not reached in 2 epochs")


def test_first_time_reaching_a_validation_r2():
  lines = [{"epoch": e, "wall_time": 100.0 + 10 * e, "val": {"normalized": {"r2": r2}}}
           for e, r2 in ((1, 0.3), (2, 0.61), (3, 0.59), (4, 0.66))]
  assert scaling.first_time_reaching(lines, 100.0, 0.60) == (20.0, 2)
  assert scaling.first_time_reaching(lines, 100.0, 0.65) == (40.0, 4)
  assert scaling.first_time_reaching(lines, 100.0, 0.70) is None
