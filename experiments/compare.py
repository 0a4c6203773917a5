r"""Compare model variants on one split with one budget (paper Tables 3-5).

  python -m experiments.compare \
      --configs=configs/phdos.py,configs/ablations/mlp.py,configs/ablations/rnn.py \
      --workdir=runs/compare [--config_overrides=train.num_epochs=5 ...]

Each config file (its `get_config()`, then every `--config_overrides key=value`) is
trained with `xtal2dos_jax.train.train_and_evaluate` in `<workdir>/<name>` (name = the
file's stem, made unique). A finished run is not retrained, so rerunning the command
only re-measures inference and rebuilds the table. The variants share the data config
and seed, hence the split; the table records whether the saved test splits agree.

Then one table, one row per variant, printed as markdown and written to
`<workdir>/compare.json` and `<workdir>/compare.md`:

  model | R^2 | MAE | MSE | WD           test split, normalised label scale
  R^2 (orig)                              test split, original label scale
  params                                  trainable parameters
  s/epoch                                 median training seconds per epoch from
                                          metrics.jsonl, the first epoch (which includes
                                          compilation) excluded when there are others
  crystals/s                              inference throughput: `Trainer.predict` over the
                                          test split, best of --inference_repeats timed
                                          runs after a warm-up (<name>/inference.json)
"""
import os
import sys

from absl import app, flags, logging

from experiments import common

FLAGS = flags.FLAGS
flags.DEFINE_list("configs", None, "Comma-separated config files, one per variant.")
flags.DEFINE_string("workdir", "runs/compare", "Parent directory of the variants' run dirs.")
flags.DEFINE_multi_string("config_overrides", [],
                          "key=value applied to every config, e.g. train.num_epochs=5 "
                          "(repeat the flag for several).")
flags.DEFINE_integer("inference_repeats", 3, "Timed Trainer.predict runs after the warm-up.")
flags.DEFINE_bool("overwrite", False, "Discard the variants' runs and train afresh.")


def main(argv):
  del argv
  if not FLAGS.configs:
    raise app.UsageError("--configs is required (comma-separated config files)")
  common.setup_runtime()
  from xtal2dos_jax import train  # after the runtime (devices, distributed) is set up
  from xtal2dos_jax.comparison import (INFERENCE_JSON, apply_overrides, build_table,
                                       load_config_file, run_names, time_inference,
                                       to_markdown, write_table)
  from xtal2dos_jax.workdir import write_json_atomic
  runs = {}
  with common.user_errors():
    names = run_names(FLAGS.configs)
    configs = [apply_overrides(load_config_file(p), FLAGS.config_overrides)
               for p in FLAGS.configs]                     # all parsed before any training
    for name, path, config in zip(names, FLAGS.configs, configs):
      run_dir = os.path.join(FLAGS.workdir, name)
      logging.info("variant %s (%s): %s encoder, %s decoder -> %s", name, path,
                   config.model.encoder, config.model.decoder, run_dir)
      try:
        train.train_and_evaluate(config, run_dir, overwrite=FLAGS.overwrite)
      except train.Preempted as e:
        logging.warning("%s", e)
        sys.exit(143)
      speed = time_inference(run_dir, FLAGS.inference_repeats)
      write_json_atomic(os.path.join(run_dir, INFERENCE_JSON), speed)
      runs[name] = run_dir
    table = build_table(runs)
  json_path, md_path = write_table(table, FLAGS.workdir)
  print(to_markdown(table))
  print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
  app.run(main)
