r"""Export a trained run as a model prediction can load without the workdir:
`python -m experiments.export --workdir=runs/phdos --name=phdos_dfpt [--dtype=float16]
[--description="..."]`.

Writes xtal2dos_jax/pretrained/NAME/ (or --outdir): config, label scaler, set-up (grid,
budget, training elements), test split ids, the best checkpoint's evaluation parameters
(no optimizer state) and model_card.md. An existing model directory is never
overwritten. Predict with it: `python -m experiments.predict --model=NAME ...` or
`Predictor.pretrained("NAME")`.
"""
import os

from absl import flags

from xtal2dos_jax.workflows import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Run directory written by experiments.train.")
flags.DEFINE_string("name", None, "Model name: the directory under xtal2dos_jax/pretrained/.")
flags.DEFINE_string("outdir", None, "Write the model here instead (default: the package's "
                    "pretrained/NAME).")
flags.DEFINE_enum("dtype", "float32", ["float32", "float16"],
                  "Storage dtype of the parameters (always restored to float32).")
flags.DEFINE_string("description", "", "One paragraph at the top of the model card (what "
                    "the model is for, and what it is not).")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  del argv
  from xtal2dos_jax.core.errors import InputError
  with cli.user_errors():
    if not FLAGS.name and not FLAGS.outdir:
      raise InputError("--name", "is required (or give --outdir)")
  cli.setup_runtime(inference=True)
  from xtal2dos_jax.inference import export, pretrained
  with cli.user_errors():
    outdir = FLAGS.outdir or os.path.join(pretrained.PACKAGE_DIR, FLAGS.name)
    export.export_run(FLAGS.workdir, outdir, FLAGS.name, FLAGS.dtype,
                          description=FLAGS.description)
  print(f"exported {FLAGS.workdir} -> {outdir}")


if __name__ == "__main__":
  cli.run(main)
