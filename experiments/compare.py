r"""Compare model variants on one split with one budget (paper Tables 3-5).

  python -m experiments.compare \
      --configs=configs/phdos.py,configs/ablations/mlp.py,configs/ablations/rnn.py \
      --workdir=runs/compare [--config_overrides=train.num_epochs=5 ...] [--seeds=0,1,2]

Each config file (its `get_config()`, then every `--config_overrides key=value`) is
trained with `xtal2dos_jax.training.train.train_and_evaluate` in `<workdir>/<name>` (name = the
file's stem, made unique). A finished run is not retrained, so rerunning the command
only re-measures inference and rebuilds the table. The variants share the data config,
hence the split; the table records whether the saved test splits agree.

With `--seeds`, every variant is trained once per seed (`config.seed`: initialisation,
dropout and data order; the split stays `data.split_seed`) in `<workdir>/<name>/seed_<s>`,
and the accuracy columns become mean ± standard deviation over the seeds. On a few
hundred validation crystals one run per variant differs by ~0.02 R^2 from seed to seed,
so claims that one decoder beats another want several seeds.

With `--folds=K`, every variant is trained on each fold of a seeded K-fold
cross-validation (`config.data.num_folds`/`fold`: the fold is the test split, the
validation split is drawn from the rest) in `<workdir>/<name>/fold_<k>[/seed_<s>]`; the
columns are mean ± standard deviation over all the runs. This tells recipes apart where
one 152-crystal test split moves R^2 by ±0.05. On the embedded DFPT set the paper's
Table 1 rows are printed under ours. `--ensemble` adds, per variant, the row of its
seeds' averaged predictions (an ensemble of len(--seeds) members per split).

Then one table, one row per variant, printed as markdown and written to
`<workdir>/compare.json` and `<workdir>/compare.md`:

  model | val R^2                         validation split, normalised scale (choose on this)
  R^2 | MAE | MSE | RMSE | WD             test split, normalised label scale
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

from xtal2dos_jax.training import allocator
from xtal2dos_jax.workflows import cli, comparison

FLAGS = flags.FLAGS
flags.DEFINE_list("configs", None, "Comma-separated config files, one per variant.")
flags.DEFINE_string("workdir", "runs/compare", "Parent directory of the variants' run dirs.")
flags.DEFINE_multi_string("config_overrides", [],
                          "key=value applied to every config, e.g. train.num_epochs=5 "
                          "(repeat the flag for several), parsed as --config.key=value is "
                          "by experiments.train.")
flags.DEFINE_integer("inference_repeats", 3, "Timed Trainer.predict runs after the warm-up.",
                     lower_bound=1)
flags.DEFINE_bool("overwrite", False, "Discard the variants' runs and train afresh.")
flags.DEFINE_list("seeds", [], "Train every variant once per seed (e.g. 0,1,2) and report "
                  "mean ± std over seeds; empty: once, with each config's own seed.")
flags.DEFINE_bool("ensemble", False, "With several --seeds: also score each variant's "
                  "seeds as one ensemble (their predictions averaged), per split or fold.")
flags.DEFINE_integer("folds", 0, "K >= 2: train every variant on each of K cross-validation "
                     "folds and report mean ± std over folds; 0: one split.", lower_bound=0)
flags.register_validator("seeds", comparison.check_seeds)
flags.register_validator("folds", lambda folds: folds != 1,
                         "use 0 (one split) or at least 2 folds")


def main(argv):
  del argv
  allocator.keep_freed_memory()  # before numpy/jax start threads (xtal2dos_jax/training/allocator.py)
  if not FLAGS.configs:
    raise app.UsageError("--configs is required (comma-separated config files)")
  with cli.user_errors():
    configs = [cli.load_config_file(p, FLAGS.config_overrides)
               for p in FLAGS.configs]                     # all parsed before any training
  cli.setup_runtime()
  # after the runtime (devices, distributed) is set up
  from xtal2dos_jax.core.atomic_io import write_json_atomic
  from xtal2dos_jax.training import preemption
  from xtal2dos_jax.workflows.compare_tables import (build_table, INFERENCE_JSON, published_rows,
                                                     to_markdown, write_table)
  from xtal2dos_jax.workflows.comparison import run_names, time_inference, train_variant
  runs = {}
  seeds, folds = [int(s) for s in FLAGS.seeds], FLAGS.folds
  with cli.user_errors():
    names = run_names(FLAGS.configs)
    for name, path, config in zip(names, FLAGS.configs, configs):
      try:
        dirs = train_variant(name, path, config, FLAGS.workdir, seeds, folds,
                             overwrite=FLAGS.overwrite)
      except preemption.Preempted as e:
        logging.warning("%s", e)
        sys.exit(143)
      speed = time_inference(dirs[0], FLAGS.inference_repeats)   # speed does not depend on the seed
      write_json_atomic(os.path.join(dirs[0], INFERENCE_JSON), speed)
      runs[name] = dirs
    table = build_table(runs, published=published_rows(configs[0]),
                        ensemble_members=len(seeds) if FLAGS.ensemble else 0)
  json_path, md_path = write_table(table, FLAGS.workdir)
  print(to_markdown(table))
  print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
  cli.run(main)
