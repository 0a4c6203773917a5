r"""Train Xtal2DoS: `python -m experiments.train --config=configs/phdos.py --workdir=runs/phdos`.

Every config value can be overridden, e.g. `--config.train.num_epochs=5`. Rerunning
the same command resumes from the last checkpoint; a finished run is not retrained.
Several hosts: the same command on each, with --coordinator_address, --num_processes
and --process_id (or under SLURM).
"""
from absl import flags

from xtal2dos_jax.training import allocator
from xtal2dos_jax.workflows import cli, commands

FLAGS = flags.FLAGS
cli.define_config_file("config", "configs/phdos.py", "Training config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory (default: runs/<config name>).")
flags.DEFINE_bool("overwrite", False, "Discard a run already in --workdir and start afresh.")


def main(argv):
  del argv
  allocator.keep_freed_memory()  # before numpy/jax start threads
  commands.train(FLAGS.config,
                 FLAGS.workdir or cli.default_workdir(FLAGS["config"].config_filename),
                 FLAGS.overwrite)


if __name__ == "__main__":
  cli.run(main)
