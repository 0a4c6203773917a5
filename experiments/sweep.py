r"""Hyper-parameter sweep: train every cell of a grid of config overrides, pick one on
validation, report its test metrics once.

  python -m experiments.sweep --config=configs/phdos.py \
      --grid='data.radius=2,4,8;model.encoder_layers=3,4' --seeds=0,1,2 \
      --workdir=runs/sweep [--config_overrides=train.num_epochs=5 ...]

The grid is `key=v1,v2,...` parts joined by `;`; its cells are every combination of the
values (the first key varying slowest), each the config file with every
--config_overrides and then the cell's own `key=value`s. The cells share the split and
the training budget (a grid may not vary them: `sweeps.SWEEP_FIXED_KEYS`). Every cell is
trained once per seed in `<workdir>/<cell>[/seed_<s>]`; a finished run is not retrained.
One table (`<workdir>/sweep.json`, `sweep.md`): per cell its validation R^2, best epoch,
s/epoch and parameters; the cell with the highest mean validation R^2 is chosen, and
only its test metrics are reported. A bad --grid is one line `error: --grid: ...`
(exit status 2) before anything is trained.
"""
from absl import flags

from xtal2dos_jax.training import allocator
from xtal2dos_jax.workflows import cli, commands, comparison

FLAGS = flags.FLAGS
flags.DEFINE_string("config", "configs/phdos.py", "Config file every cell starts from.")
flags.DEFINE_string("grid", None, "Overrides to sweep: key=v1,v2;key=v1,v2 (e.g. "
                    "'data.radius=4,8;model.encoder_layers=3,4'); every combination is a cell.")
flags.DEFINE_list("seeds", [], "Train every cell once per seed (e.g. 0,1,2) and report "
                  "mean ± std over seeds; empty: once, with the config's own seed.")
flags.DEFINE_string("workdir", "runs/sweep", "Parent directory of the cells' run dirs.")
flags.DEFINE_multi_string("config_overrides", [],
                          "key=value applied to every cell before its own overrides, e.g. "
                          "train.num_epochs=5 (repeat the flag for several).")
flags.DEFINE_bool("overwrite", False, "Discard the cells' runs and train afresh.")
flags.mark_flag_as_required("grid")
flags.register_validator("seeds", comparison.check_seeds)


def main(argv):
  del argv
  allocator.keep_freed_memory()  # before numpy/jax start threads
  commands.sweep(FLAGS.config, FLAGS.grid, FLAGS.workdir, FLAGS.config_overrides,
                 [int(s) for s in FLAGS.seeds], FLAGS.overwrite)


if __name__ == "__main__":
  cli.run(main)
