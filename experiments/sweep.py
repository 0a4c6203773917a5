r"""Hyper-parameter sweep: train every cell of a grid of config overrides, pick one on
validation, report its test metrics once.

  python -m experiments.sweep --config=configs/phdos.py \
      --grid='data.radius=2,4,8;model.encoder_layers=3,4' --seeds=0,1,2 \
      --workdir=runs/sweep [--config_overrides=train.num_epochs=5 ...]

The grid is `key=v1,v2,...` parts joined by `;`; its cells are every combination of
the values (the first key varying slowest). Each cell is the config file with every
`--config_overrides key=value` and then the cell's own `key=value`s applied, loaded as
`experiments.compare` loads its variants (`cli.load_config_file`, values parsed by
the type of each key's default). The cells share the data config apart from the grid's
keys, hence the split (`data.split_seed`), and the training budget: a grid may not vary
the split, the epochs, the patience or the seed (`sweeps.SWEEP_FIXED_KEYS`).

Every cell is trained once per seed in `<workdir>/<cell>/seed_<s>` (`<workdir>/<cell>`
without --seeds), the cell's name made of its overrides, e.g.
`data.radius=4__model.encoder_layers=3`. A finished run is not retrained and an
interrupted one resumes, so rerunning the command after an interruption trains only
what is missing, and rerunning a finished sweep only rebuilds the table.

One table, printed as markdown and written to `<workdir>/sweep.json` and
`<workdir>/sweep.md`: per cell its grid values, validation R^2 (normalised scale,
mean ± std over the seeds), best epoch (mean ± std), median s/epoch and parameter
count; the cell with the highest mean validation R^2 is chosen, and only its test
metrics (R^2, MAE, MSE, RMSE, WD normalised, R^2 on the original scale; mean ± std) are
reported, so the choice never looks at the test split.

A bad --grid ends with one line `error: --grid: ...` and exit status 2, before anything
is trained.
"""
import sys

from absl import flags, logging

from xtal2dos_jax.core.errors import InputError
from xtal2dos_jax.training import allocator
from xtal2dos_jax.workflows import cli, compare_tables, comparison, sweeps

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


def load_cell_config(path: str, overrides: list[str], cell: dict[str, str]):
  """The config of one cell: `path` with `overrides` and then the cell's `key=value`s.

  Raises InputError naming `--config` (the file), the bad `--config_overrides=...`, or
  `--grid` with the cell's bad `key=value` (an unknown key, a value of the wrong type).
  """
  items = [f"{key}={value}" for key, value in cell.items()]
  try:
    return cli.load_config_file(path, [*overrides, *items])
  except InputError as e:
    if e.name == "--configs":
      raise InputError("--config", e.reason) from None
    item = e.name.partition("=")[2]
    if e.name.startswith("--config_overrides=") and item in items:
      raise InputError("--grid", f"{item}: {e.reason}") from None
    raise


def main(argv):
  del argv
  allocator.keep_freed_memory()  # before numpy/jax start threads (xtal2dos_jax/training/allocator.py)
  with cli.user_errors():
    grid = sweeps.parse_grid(FLAGS.grid)
    cells = sweeps.grid_cells(grid)
    configs = [load_cell_config(FLAGS.config, FLAGS.config_overrides, cell)
               for cell in cells]                          # all parsed before any training
    names = [sweeps.cell_name(cell) for cell in cells]
    if len(set(names)) != len(names):
      raise InputError("--grid", "two cells get the same run directory name; write the "
                       "values with letters, digits and ._+- only")
  cli.setup_runtime()
  from xtal2dos_jax.training import preemption, train
  seeds = [int(s) for s in FLAGS.seeds]
  finished = []
  with cli.user_errors():
    for config in configs:          # every cell's values checked before any training
      train.check_config(config)
    for cell, name, config in zip(cells, names, configs):
      label = ", ".join(f"{key}={value}" for key, value in cell.items())
      try:
        dirs = comparison.train_variant(name, label, config, FLAGS.workdir, seeds,
                                        overwrite=FLAGS.overwrite)
      except preemption.Preempted as e:
        logging.warning("%s", e)
        sys.exit(143)
      finished.append((cell, dirs))
    table = sweeps.build_sweep_table(grid, finished)
  markdown = sweeps.sweep_to_markdown(table)
  json_path, md_path = compare_tables.write_table(table, FLAGS.workdir, sweeps.SWEEP_JSON,
                                              sweeps.SWEEP_MARKDOWN, markdown)
  print(markdown)
  print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
  cli.run(main)
