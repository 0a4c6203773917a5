r"""Predict DoS for new structures:
`python -m experiments.predict --structures='my_cifs/*.cif'` (the default shipped model),
`--model=NAME` (another exported model) or `--workdir=runs/phdos` (a training run).

Any ase-readable file (CIF, POSCAR, extxyz, ...) or pymatgen-dict JSON. Unreadable
inputs are reported and skipped; the rest are predicted. Writes predictions.csv (per
structure: formula, C_v / S / F at 300 K with their std, mean frequency, Debye
temperatures, flags, then the mean DoS; electronic DoS: the band gap), predictions.npz
(mean, std and members' DoS, thermodynamic curves over --temperatures), a PNG per
structure (the first --max_plots) and predictions.png to --outdir (default: a new
predict-N under the workdir, or under the current directory for an exported model).
"""
from absl import flags

from xtal2dos_jax.workflows import cli, commands

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Run directory written by experiments.train.")
flags.DEFINE_string("model", None, "Exported model name (default: the package's default "
                    "shipped model when --workdir is not given).")
flags.DEFINE_string("models_dir", None, "Directory of exported models (default: "
                    "$XTAL2DOS_PRETRAINED_DIR, else the package's pretrained/).")
flags.DEFINE_string("structures", None, "Glob pattern or directory of structure files.")
flags.DEFINE_string("outdir", None, "Output directory (default: a new predict-N under the "
                    "workdir, or the current directory for an exported model).")
flags.DEFINE_string("temperatures", "0:1000:10", "start:stop:step (K) of the "
                    "thermodynamic curves.")
flags.DEFINE_integer("max_plots", 50, "Per-structure PNGs for at most this many structures.",
                     lower_bound=0)
flags.mark_flags_as_required(["structures"])


def main(argv):
  del argv
  commands.predict(FLAGS.structures, FLAGS.workdir, FLAGS.model, FLAGS.models_dir,
                   FLAGS.outdir, FLAGS.temperatures, FLAGS.max_plots)


if __name__ == "__main__":
  cli.run(main)
