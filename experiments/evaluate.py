r"""Evaluate a trained run: `python -m experiments.evaluate --workdir=runs/phdos`.

Restores the best checkpoint (the latest, with a warning, if checkpoints/best holds
none), prints the paper-style metrics table for the test split (R^2, MAE, MSE, WD on
the normalised and the original scale), for phonons the errors of C_v(300 K) and of the
mean frequency (both DoS rescaled to 3N modes), and which checkpoint it used, and writes
eval_<split>.json, predictions_<split>.npz and eval_<split>.png into the workdir.
"""
from absl import flags

from xtal2dos_jax.workflows import cli, commands

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Run directory written by experiments.train.")
flags.DEFINE_enum("split", "test", ["train", "validation", "test"], "Split to evaluate.")
flags.mark_flag_as_required("workdir")


def main(argv):
  del argv
  commands.evaluate(FLAGS.workdir, FLAGS.split)


if __name__ == "__main__":
  cli.run(main)
