r"""Compare model variants on one split with one budget (paper Tables 3-5):

  python -m experiments.compare \
      --configs=configs/phdos.py,configs/ablations/mlp.py,configs/ablations/rnn.py \
      --workdir=runs/compare [--config_overrides=train.num_epochs=5 ...] [--seeds=0,1,2]

Each config file (its `get_config()`, then every --config_overrides key=value) is trained
in `<workdir>/<name>[/fold_<k>][/seed_<s>]` (name = the file's stem); a finished run is
not retrained. One table, one row per variant (validation R^2; test R^2, MAE, MSE, RMSE,
WD; parameters, s/epoch, inference crystals/s), printed as markdown and written to
`<workdir>/compare.json` and `compare.md`; its columns are described in
`xtal2dos_jax/workflows/compare_tables.py`.
"""
from absl import app, flags

from xtal2dos_jax.training import allocator
from xtal2dos_jax.workflows import cli, commands, comparison

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
  allocator.keep_freed_memory()  # before numpy/jax start threads
  if not FLAGS.configs:
    raise app.UsageError("--configs is required (comma-separated config files)")
  commands.compare(FLAGS.configs, FLAGS.workdir, FLAGS.config_overrides,
                   [int(s) for s in FLAGS.seeds], FLAGS.folds, FLAGS.ensemble,
                   FLAGS.inference_repeats, FLAGS.overwrite)


if __name__ == "__main__":
  cli.run(main)
