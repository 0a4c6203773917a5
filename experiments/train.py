r"""Train Xtal2DoS: `python -m experiments.train --config=configs/phdos.py --workdir=runs/phdos`.

Every config value can be overridden, e.g. `--config.train.num_epochs=5`. Rerunning
the same command resumes from the last checkpoint; a finished run is not retrained.
"""
import sys

from absl import flags, logging

from xtal2dos_jax.training import allocator, distributed
from xtal2dos_jax.workflows import cli

FLAGS = flags.FLAGS
cli.define_config_file("config", "configs/phdos.py", "Training config file.",
                          lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory (default: runs/<config name>).")
flags.DEFINE_bool("overwrite", False, "Discard a run already in --workdir and start afresh.")


def main(argv):
  del argv
  allocator.keep_freed_memory()  # before numpy/jax start threads (xtal2dos_jax/training/allocator.py)
  cli.setup_runtime()
  # after the runtime (devices, distributed) is set up
  from xtal2dos_jax.objectives import metrics
  from xtal2dos_jax.training import preemption, train
  config = FLAGS.config
  workdir = FLAGS.workdir or cli.default_workdir(flags.FLAGS["config"].config_filename)
  with cli.user_errors(), distributed.lost_processes(workdir):
    try:
      results = train.train_and_evaluate(config, workdir, overwrite=FLAGS.overwrite)
    except preemption.Preempted as e:
      logging.warning("%s", e)
      sys.exit(143)
  print(metrics.format_table(results["metrics"]))
  print(f"workdir: {workdir}")


if __name__ == "__main__":
  cli.run(main)
