r"""Speed benchmark: `python -m experiments.benchmark [--config=configs/bench.py] [--quick]`.

Prints one table (name, value, unit, notes) of throughputs measured after warm-up, with
compile times and compile counts as rows of their own: featurisation and the neighbour
search, training end to end and network only, compile counts per step and epoch,
evaluation and prediction (in a child process set up as the predict binary is), the
bf16_matmul mode, scaling with model, crystal and batch size, and time to validation
R^2 0.60 / 0.65 (`xtal2dos_jax/workflows/benchmarks/harness.py` says how each is
measured). `--quick` shrinks everything to finish in seconds (the tests run it);
`--output=rows.json` also writes the rows as JSON. Compile rows are cold: a fresh XLA
cache in a temporary directory (or `--xla_cache_dir`), not the user's.
"""
import sys

from absl import flags

from xtal2dos_jax.training import allocator
from xtal2dos_jax.workflows import cli, commands

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


def main(argv):
  del argv
  if not FLAGS.inference_only:   # the inference child runs as the predict binary does
    allocator.keep_freed_memory()  # before numpy/jax start threads
  if not FLAGS["no_compilation_cache"].present:
    FLAGS.no_compilation_cache = True   # cold compile rows: not the user's XLA cache
  commands.benchmark(FLAGS.config, FLAGS.quick, FLAGS.output, FLAGS.inference_only,
                     FLAGS.xla_cache_dir, sys.argv[1:])


if __name__ == "__main__":
  cli.run(main)
