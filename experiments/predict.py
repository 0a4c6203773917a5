r"""Predict DoS for new structures:
`python -m experiments.predict --workdir=runs/phdos --structures='my_cifs/*.cif'`.

Any ase-readable file (CIF, POSCAR, extxyz, ...) or pymatgen-dict JSON. Unreadable
inputs are reported and skipped; the rest are predicted. Writes predictions.csv,
predictions.npz and predictions.png (and, for phonon DoS, C_v(300 K) and the mean
frequency; for electronic DoS, a band-gap estimate) to --outdir (default: a new
workdir/predict-N).
"""
from absl import flags

from experiments import common

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Run directory written by experiments.train.")
flags.DEFINE_string("structures", None, "Glob pattern or directory of structure files.")
flags.DEFINE_string("outdir", None, "Output directory (default: a new workdir/predict-N).")
flags.mark_flags_as_required(["workdir", "structures"])


def main(argv):
  del argv
  common.setup_runtime(inference=True)
  from xtal2dos_jax import inference
  with common.user_errors():
    out = inference.predict_structures(FLAGS.workdir, FLAGS.structures, FLAGS.outdir)
  print(f"predicted {len(out['ids'])} structures -> {out['outdir']}"
        + (f" ({len(out['skipped'])} skipped, see skipped.json)" if out["skipped"] else ""))


if __name__ == "__main__":
  common.run(main)
