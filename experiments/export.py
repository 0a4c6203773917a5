r"""Export a trained run as a model prediction can load without the workdir:
`python -m experiments.export --workdir=runs/phdos --name=phdos_dfpt [--dtype=float16]
[--description="..."]`.

Writes xtal2dos_jax/pretrained/NAME/ (or --outdir): config, label scaler, set-up (grid,
budget, training elements), test split ids, the best checkpoint's evaluation parameters
(no optimizer state) and model_card.md. An existing model directory is never
overwritten. Predict with it: `python -m experiments.predict --model=NAME ...` or
`Predictor.pretrained("NAME")`.
"""
from absl import flags

from xtal2dos_jax.workflows import cli, commands

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
  commands.export(FLAGS.workdir, FLAGS.name, FLAGS.outdir, FLAGS.dtype, FLAGS.description)


if __name__ == "__main__":
  cli.run(main)
