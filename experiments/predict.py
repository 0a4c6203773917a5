r"""Predict DoS for new structures:
`python -m experiments.predict --structures='my_cifs/*.cif'` (the default shipped model),
`--model=NAME` (another exported model) or `--workdir=runs/phdos` (a training run).

Any ase-readable file (CIF, POSCAR, extxyz, ...) or pymatgen-dict JSON. Unreadable
inputs are reported and skipped; the rest are predicted. Writes predictions.csv (per
structure: formula, C_v / S / F at 300 K with their std (the ensemble's spread times the
factor fitted on validation that the exported model carries), mean frequency, Debye
temperatures, flags, then the mean DoS; electronic DoS: the band gap), predictions.npz
(mean, std and members' DoS, thermodynamic curves over --temperatures), a PNG per
structure (the first 50) and predictions.png to --outdir (default: a new predict-N under
the workdir, or under the current directory for an exported model).
"""
from absl import flags

from xtal2dos_jax.workflows import cli

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
  from xtal2dos_jax.core.errors import InputError
  with cli.user_errors():
    if FLAGS.workdir and FLAGS.model:
      raise InputError("--model", "give --model or --workdir, not both")
  cli.setup_runtime(inference=True)
  from xtal2dos_jax.inference import predictor as predictor_lib
  with cli.user_errors():
    temperatures = predictor_lib.parse_temperatures(FLAGS.temperatures)
    if FLAGS.workdir:
      p = predictor_lib.Predictor(FLAGS.workdir)
    else:
      p = predictor_lib.Predictor.pretrained(FLAGS.model, FLAGS.models_dir)
    out = predictor_lib.predict_to_dir(p, FLAGS.structures, FLAGS.outdir, temperatures,
                                       FLAGS.max_plots)
  print(f"predicted {len(out['ids'])} structures with {p.source} -> {out['outdir']}"
        + (f" ({len(out['skipped'])} skipped, see skipped.json)" if out["skipped"] else ""))


if __name__ == "__main__":
  cli.run(main)
