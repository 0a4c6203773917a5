"""The grid and table of `python -m experiments.sweep`.

A grid is `key=v1,v2;key2=w1,w2` (config overrides); its cells are every combination,
each trained like a variant of `experiments.compare` (`comparison.train_variant`) on the
same split and budget. The table gives every cell's validation R^2 (mean ± std over
seeds), best epoch and s/epoch, picks the cell with the highest mean validation R^2, and
reports test metrics for that cell only.
"""
from __future__ import annotations

import itertools
import re
import statistics
from typing import Any, Mapping, Sequence

from xtal2dos_jax.core.errors import InputError
from xtal2dos_jax.workflows import cli, compare_tables
from xtal2dos_jax.workflows.compare_tables import format_cell

SWEEP_JSON = "sweep.json"
SWEEP_MARKDOWN = "sweep.md"
# Keys a grid may not vary: every cell trains on one split with one budget, and the
# seeds are --seeds.
SWEEP_FIXED_KEYS = ("seed", "data.split", "data.split_seed", "data.num_folds", "data.fold",
                    "data.limit", "data.train_fraction", "train.num_epochs", "train.patience",
                    "train.patience_warmup_epochs")
# The test columns reported for the cell chosen on validation.
SWEEP_TEST_KEYS = ("r2", "mae", "mse", "rmse", "wd", "r2_original")


def _split_top_level(text: str, sep: str) -> list[str]:
  """`text` split at each `sep` outside brackets, so `data.split=(0.8,0.1,0.1)` stays
  one value."""
  parts, depth, start = [], 0, 0
  for i, ch in enumerate(text):
    depth += ch in "([{"
    depth -= ch in ")]}"
    if ch == sep and depth == 0:
      parts.append(text[start:i])
      start = i + 1
  parts.append(text[start:])
  return parts


def parse_grid(text: str) -> list[tuple[str, list[str]]]:
  """`key=v1,v2;key=v1,...` -> [(key, [value text, ...]), ...] in the order given.

  The values stay text: each cell's config parses them as `--config.key=value` is
  parsed (by the type of the key's default); `''` stands for the empty string (e.g.
  `train.init_from='',runs/pretrained`: from scratch and fine-tuned). Raises InputError
  naming `--grid` for
  empty text, a part without `key=`, an empty value, a key or value listed twice, or a
  key the cells must share (`SWEEP_FIXED_KEYS`).
  """
  example = "expected key=v1,v2;key=v1,v2, e.g. data.radius=4,8;model.encoder_layers=3,4"
  if not text.strip():
    raise InputError("--grid", f"is empty; {example}")
  grid: list[tuple[str, list[str]]] = []
  for part in _split_top_level(text.strip().rstrip(";"), ";"):
    key, eq, values = part.strip().partition("=")
    key = key.strip()
    if not eq or not key or not re.fullmatch(r"[A-Za-z_][\w.]*", key):
      raise InputError("--grid", f"{part.strip()!r}: {example}")
    if key in SWEEP_FIXED_KEYS:
      raise InputError("--grid", f"{key}: the cells share one split and training budget "
                       "(and the seeds are --seeds); set it with --config_overrides")
    if key in (k for k, _ in grid):
      raise InputError("--grid", f"{key} is listed twice")
    items = [v.strip() for v in _split_top_level(values, ",")]
    if not all(items):
      raise InputError("--grid", f"{part.strip()!r}: empty value (write '' for an empty "
                       "string)")
    items = ["" if v in ("''", '""') else v for v in items]
    duplicate = next((v for i, v in enumerate(items) if v in items[:i]), None)
    if duplicate is not None:
      raise InputError("--grid", f"{key}: value {duplicate} is listed twice")
    grid.append((key, items))
  return grid


def grid_cells(grid: Sequence[tuple[str, Sequence[str]]]) -> list[dict[str, str]]:
  """Every combination of the grid's values ({key: value text}), the first key
  varying slowest."""
  keys = [key for key, _ in grid]
  return [dict(zip(keys, values)) for values in itertools.product(*(v for _, v in grid))]


def cell_name(overrides: Mapping[str, str]) -> str:
  """A cell's run directory name from its overrides: `key=value` joined by `__`, e.g.
  `data.radius=4__model.encoder_layers=3`, characters other than letters, digits and
  `._=+-` replaced by `_`."""
  return "__".join(re.sub(r"[^\w.=+-]", "_", f"{key}={value}")
                   for key, value in overrides.items())


def cell_names(cells: Sequence[Mapping[str, str]]) -> list[str]:
  """`cell_name` of every cell; raises InputError naming --grid when two cells would share
  a run directory."""
  names = [cell_name(cell) for cell in cells]
  if len(set(names)) != len(names):
    raise InputError("--grid", "two cells get the same run directory name; write the "
                     "values with letters, digits and ._+- only")
  return names


def load_cell_config(path: str, overrides: Sequence[str], cell: Mapping[str, str]):
  """The config of one cell: the config file `path` with `overrides` and then the cell's
  `key=value`s, loaded as compare loads its variants (`cli.load_config_file`).

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


def build_sweep_table(grid: Sequence[tuple[str, Sequence[str]]],
                      cells: Sequence[tuple[Mapping[str, str], Sequence[str]]]
                      ) -> dict[str, Any]:
  """The sweep's table from its cells' finished runs ((overrides, run dirs) per cell).

  {"grid", "rows": per cell its overrides, validation R^2 (mean, `val_r2_std` over
  seeds), best epoch (mean, std), s/epoch and per-seed `runs`, without test metrics;
  "chosen": the name of the cell with the highest mean validation R^2 (the first of
  ties); "test": that cell's test metrics (`SWEEP_TEST_KEYS`, mean and std over its
  seeds, crystal count), the only test figures of the table; "same_split"}.
  """
  named = {cell_name(overrides): (dict(overrides), list(dirs)) for overrides, dirs in cells}
  table = compare_tables.build_table({name: dirs for name, (_, dirs) in named.items()})
  test_keys = [*SWEEP_TEST_KEYS, *(f"{k}_std" for k in SWEEP_TEST_KEYS)]
  chosen = max(table["rows"], key=lambda row: row["val_r2"])  # max keeps the first of ties
  test = {"name": chosen["name"], "test_count": chosen["test_count"],
          "seeds": chosen["seeds"], **{k: chosen[k] for k in test_keys}}
  rows = []
  for row in table["rows"]:
    best_epochs = [r["best_epoch"] for r in row["runs"]]
    rows.append({
        "name": row["name"], "overrides": named[row["name"]][0], "run_dir": row["run_dir"],
        "val_r2": row["val_r2"], "val_r2_std": row["val_r2_std"],
        "best_epoch": statistics.fmean(best_epochs),
        "best_epoch_std": statistics.stdev(best_epochs) if len(best_epochs) > 1 else None,
        "train_seconds_per_epoch": row["train_seconds_per_epoch"],
        "num_params": row["num_params"], "seeds": row["seeds"], "num_runs": row["num_runs"],
        "runs": [{k: r[k] for k in ("run_dir", "seed", "val_r2", "best_epoch", "epochs_run",
                                    "train_seconds_per_epoch")} for r in row["runs"]]})
  return {"grid": [{"key": key, "values": list(values)} for key, values in grid],
          "rows": rows, "chosen": chosen["name"], "selected_on": "validation R^2",
          "test": test, "same_split": table["same_split"]}


def sweep_to_markdown(table: Mapping[str, Any]) -> str:
  """The sweep table as GitHub markdown: one row per cell (its grid values, validation
  R^2, best epoch, s/epoch; the chosen cell marked), then the chosen cell's test row."""
  keys = [g["key"] for g in table["grid"]]
  lines = []
  if not table["same_split"]:
    lines += ["**warning: the cells were evaluated on different test splits**", ""]
  header = keys + ["val R^2", "best epoch", "s/epoch", "params", "chosen"]
  lines += ["| " + " | ".join(header) + " |", "|" + "|".join(["---:"] * len(header)) + "|"]
  for row in table["rows"]:
    cells = [row["overrides"][k] or "''" for k in keys] + [
        format_cell(row["val_r2"], "{:.4f}", row["val_r2_std"]),
        format_cell(row["best_epoch"], "{:.1f}", row["best_epoch_std"]),
        format_cell(row["train_seconds_per_epoch"], "{:.2f}"),
        format_cell(row["num_params"], "{:,}"),
        "yes" if row["name"] == table["chosen"] else ""]
    lines.append("| " + " | ".join(cells) + " |")
  test = table["test"]
  columns = [c for c in compare_tables.COLUMNS if c[0] in SWEEP_TEST_KEYS]
  chosen = next(row for row in table["rows"] if row["name"] == table["chosen"])
  chosen_text = ", ".join(f"{k}={v}" for k, v in chosen["overrides"].items())
  lines += ["", f"Test split of the chosen cell ({chosen_text}), reported once:", "",
            "| " + " | ".join(h for _, h, _ in columns) + " |",
            "|" + "|".join(["---:"] * len(columns)) + "|",
            "| " + " | ".join(format_cell(test[k], fmt, test.get(f"{k}_std"))
                              for k, _, fmt in columns) + " |"]
  runs = max(row["num_runs"] for row in table["rows"])
  seeds = "" if runs == 1 else (f" Each cell trained {runs} times (seeds "
                                f"{', '.join(map(str, table['rows'][0]['seeds']))}): mean ± "
                                "standard deviation over the seeds.")
  lines += ["", "val R^2: validation split, normalised scale, at the selected checkpoint; the "
            "cell with the highest mean is chosen, on validation only. best epoch: the "
            "epoch of the selected checkpoint; s/epoch: median training time per epoch "
            f"(first epoch excluded). Test split: {test['test_count']} crystals; R^2, MAE, "
            "MSE, RMSE, WD on the normalised label scale, R^2 (orig) on the original scale." + seeds]
  return "\n".join(lines)
