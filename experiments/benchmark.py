r"""Speed benchmark: `python -m experiments.benchmark [--config=configs/bench.py] [--quick]`.

Prints one table (name, value, unit, notes) of throughputs measured after warm-up, with
compile times and compile counts as rows of their own:

* data: dataset read time, cold featurisation (crystals/s, no cache), cache-load time,
  and the neighbour search (vesin) against the brute-force reference on 8-256-atom cells;
* training: end to end (host pipeline + pmapped step, train.py's loop) over full epochs
  after a warm-up epoch, and network only (pre-assembled device batches), interleaved;
* compile counts of the train / eval steps over two epochs (a `jax.monitoring` listener on
  XLA backend compilations, attributed to the step whose call triggered them), which must
  equal the number of padding buckets (1), with nothing compiled in the second epoch;
* evaluation and prediction crystals/s (`Trainer.evaluate` / `Trainer.predict` on the
  whole set, measured by `--inference_only` in a child process set up as the predict
  binary is: one CPU device per core, no single malloc arena), host pipeline vs device
  time per step, page faults per training step
  (see `xtal2dos_jax/training/allocator.py`), peak resident memory;
* the opt-in mixed-precision mode (`model.dtype="bf16_matmul"`): network-only training
  and prediction, interleaved with the float32 model (`config.bench.bf16_matmul`);
* scaling: the paper-size model, crystal size (supercells) and batch size;
* time to accuracy: the default recipe (configs/phdos.py) trained on split 0 of the DFPT
  set, wall time until validation R^2 first reaches 0.60 and 0.65 (`config.bench`).

`--quick` shrinks everything (smoke-sized model, data subset) to finish in seconds; the
tests run it. `--output=rows.json` also writes the rows as JSON. Throughputs are the best
of `config.bench.repeats` timed repetitions (the notes give the median): the machine may
be shared, and the best run is the closest to what it can do.

Compile rows are cold: the user's persistent XLA cache is not used; a fresh one in a
temporary directory (or `--xla_cache_dir`) serves the "warm persistent cache" row.
"""
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile

from absl import flags, logging

from xtal2dos_jax.training import allocator
from xtal2dos_jax.workflows import cli

FLAGS = flags.FLAGS
cli.define_config_file("config", "configs/bench.py", "Benchmark config file.",
                          lock_config=False)
flags.DEFINE_bool("quick", False, "Smoke-sized model and a data subset (seconds; for tests).")
flags.DEFINE_string("output", None, "Also write the rows (and the run's context) as JSON here.")
flags.DEFINE_bool("inference_only", False,
                  "Only the evaluation/prediction rows. The benchmark runs them this way in a "
                  "child process set up as the predict binary is (no keep_freed_memory).")
flags.DEFINE_string("xla_cache_dir", None,
                    "Persistent XLA cache for this run (default: a fresh temporary directory, "
                    "so compile rows are cold).")


def _inference_in_child(config, xla_cache: str) -> list:
  """The evaluation/prediction rows, measured by `--inference_only` in a new process
  with the same flags, so its malloc set-up is the predict binary's, not training's
  (no keep_freed_memory); featurisation and XLA caches are this run's."""
  from xtal2dos_jax.workflows.benchmarks.tools import Row
  keep = [a for a in sys.argv[1:] if not a.startswith(("--output", "--xla_cache_dir"))]
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


def main(argv):
  del argv
  if not FLAGS.inference_only:   # the inference child runs as the predict binary does
    allocator.keep_freed_memory()  # before numpy/jax start threads (xtal2dos_jax/training/allocator.py)
  if not FLAGS["no_compilation_cache"].present:
    FLAGS.no_compilation_cache = True   # cold compile rows: not the user's XLA cache
  cli.setup_runtime(inference=FLAGS.inference_only)
  from xtal2dos_jax.training import runtime
  from xtal2dos_jax.workflows.benchmarks.harness import (context, inference_rows, quick_config,
                                                         run_benchmark)
  from xtal2dos_jax.workflows.benchmarks.tools import format_rows
  xla_cache = FLAGS.xla_cache_dir or tempfile.mkdtemp(prefix="xtal2dos_bench_xla_")
  runtime.enable_compilation_cache(xla_cache)
  config = quick_config(FLAGS.config) if FLAGS.quick else FLAGS.config
  info = context()
  log = lambda msg: logging.info("benchmark: %s", msg)
  try:
    with cli.user_errors():
      if FLAGS.inference_only:
        rows = inference_rows(config, log)
      else:
        rows = run_benchmark(config, log, lambda c: _inference_in_child(c, xla_cache))
  finally:
    if not FLAGS.xla_cache_dir:
      shutil.rmtree(xla_cache, ignore_errors=True)
  info["load_average_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
  print(f"# xtal2dos_jax benchmark {info['date']}; jax {info['jax']} ({info['backend']}, "
        f"{info['devices']} device(s), {info['cpus']} CPUs, load avg {info['load_average']:.1f}"
        f" -> {info['load_average_end']:.1f}); {info['command']}")
  print(format_rows(rows))
  if FLAGS.output:
    with open(FLAGS.output, "w") as f:
      json.dump({"context": info, "rows": [dataclasses.asdict(r) for r in rows]}, f, indent=1)


if __name__ == "__main__":
  cli.run(main)
