"""The tables of `python -m experiments.compare` and `python -m experiments.sweep`.

One row per variant from its finished runs (`collect_row`: mean ± standard deviation over
seeds or folds; `ensemble_row`: the seeds' averaged predictions), the table with the
paper's rows beside ours (`build_table`), markdown and JSON (`to_markdown`,
`write_table`).

The compare table, one row per variant:

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

With several seeds or folds the accuracy columns are mean ± standard deviation over the
runs (on ~150 validation crystals one run differs by ~0.02 R^2 from seed to seed, so
claims that one decoder beats another want several seeds; one 152-crystal test split
moves R^2 by ±0.05, so recipes are told apart over folds). On the embedded DFPT set the
paper's Table 1 rows are printed under ours; runs trained with `train.monitor_test` get
the column "R^2, epoch chosen on test" (the public code's checkpoint), for comparison
with published figures. With `ensemble_members`, each variant also gets the row of its
seeds' averaged predictions.

numpy and JAX are imported only by the functions that score runs, so the binaries can
import this module before they set up the runtime.
"""
from __future__ import annotations

import json
import math
import os
import statistics
from typing import Any, Mapping, Sequence

from xtal2dos_jax.core.errors import InputError

TABLE_JSON = "compare.json"
TABLE_MARKDOWN = "compare.md"
# Each run's inference timing (`comparison.time_inference`), read into the table.
INFERENCE_JSON = "inference.json"


# Accuracy columns: row key -> (split, label scale, metric) in results.json. Validation
# R^2 is there because choices between variants belong on the validation split; the
# test columns are the paper's table.
ACCURACY = {
    "val_r2": ("validation", "normalized", "r2"),
    "r2": ("test", "normalized", "r2"),
    "mae": ("test", "normalized", "mae"),
    "mse": ("test", "normalized", "mse"),
    "rmse": ("test", "normalized", "rmse"),
    "wd": ("test", "normalized", "wd"),
    "r2_original": ("test", "original", "r2"),
}


# The paper's Table 1 (Bai et al., Xtal2DoS) on the DFPT phonon-DoS set, normalised scale.
# The public code keeps the checkpoint with the lowest test loss, so these are optimistic.
PAPER_TABLE1_SOURCE = ("Xtal2DoS paper, Table 1 (DFPT phonon DoS; its split, checkpoint "
                       "chosen on the test loss)")


PAPER_TABLE1 = tuple(
    {"model": model, "r2": r2, "mae": mae, "mse": mse, "wd": wd, "source": PAPER_TABLE1_SOURCE}
    for model, r2, mae, mse, wd in (
        ("E3NN", 0.560, 0.00869, 0.000389, 0.1217),
        ("E3NN-new", 0.621, 0.00833, 0.000275, 0.0765),
        ("GATGNN", 0.457, 0.00976, 0.000405, 0.1376),
        ("E3NN2DoS", 0.660, 0.00740, 0.000247, 0.0740),
        ("Mat2Spec", 0.641, 0.00773, 0.000264, 0.0736),
        ("Xtal2DoS", 0.734, 0.00663, 0.000193, 0.0631),
    ))


def published_rows(config) -> tuple[dict[str, Any], ...]:
  """The paper's rows that were measured on the data `config` trains on: Table 1 for the
  embedded DFPT phonon set, nothing for other data."""
  data = config.data
  if data.format == "phonondos_csv" and not data.path and data.l_y == 51:
    return PAPER_TABLE1
  return ()


# (row key, markdown header, format) of the table columns after the name.
COLUMNS = (
    ("model", "model", "{}"),
    ("val_r2", "val R^2", "{:.4f}"),
    ("r2", "R^2", "{:.4f}"),
    ("mae", "MAE", "{:.4g}"),
    ("mse", "MSE", "{:.4g}"),
    ("rmse", "RMSE", "{:.4g}"),
    ("wd", "WD", "{:.4f}"),
    ("r2_original", "R^2 (orig)", "{:.4f}"),
    ("r2_test_chosen", "R^2, epoch chosen on test", "{:.4f}"),
    ("num_params", "params", "{:,}"),
    ("train_seconds_per_epoch", "s/epoch", "{:.2f}"),
    ("inference_crystals_per_s", "crystals/s", "{:.1f}"),
)


def _read_json(path: str) -> Any:
  with open(path) as f:
    return json.load(f)


def _train_seconds_per_epoch(metrics_path: str) -> float:
  """Median `train_seconds` of metrics.jsonl, without the first epoch if there are others."""
  if not os.path.exists(metrics_path):
    return math.nan
  with open(metrics_path) as f:
    seconds = [json.loads(line)["train_seconds"] for line in f if line.strip()]
  if len(seconds) > 1:
    seconds = seconds[1:]
  return statistics.median(seconds) if seconds else math.nan


def _test_chosen_r2(metrics_path: str) -> float:
  """Test R^2 (normalised scale) at the epoch of the lowest test loss, the checkpoint the
  public Xtal2DoS code keeps, for a run trained with `train.monitor_test` (each line of
  metrics.jsonl then holds "test_monitor"); NaN for other runs."""
  if not os.path.exists(metrics_path):
    return math.nan
  with open(metrics_path) as f:
    lines = [json.loads(line) for line in f if line.strip()]
  if not lines or any("test_monitor" not in line for line in lines):
    return math.nan
  best = min(lines, key=lambda line: line["test_monitor"]["loss"])
  return best["test_monitor"]["normalized"]["r2"]


def _config_value(config: Mapping[str, Any], key: str, source: str) -> Any:
  """The value of dotted `key` (e.g. "model.decoder") in a run's plain-dict config (its
  config.json): the saved value, else the default `workdir._ADDED_KEYS` gives a key added
  after the run was saved; raises InputError naming `source` and the key otherwise."""
  from xtal2dos_jax.training.workdir import _ADDED_KEYS
  section: Any = config
  for name in key.split("."):
    if not isinstance(section, Mapping) or name not in section:
      if key in _ADDED_KEYS:
        return _ADDED_KEYS[key]
      raise InputError(source, f"the run's config has no {key}")
    section = section[name]
  return section


def _model_label(config: Mapping[str, Any], source: str) -> str:
  """"<encoder> + <decoder>", the E3NN encoder's variant other than "chen2021" (e.g.
  "e3nn (gate_points) + mlp"), the decoder's departures from its default form, element
  features other than CGCNN's and the ensemble size of a vmapped ensemble, from a run's
  plain-dict config; `source` (its config.json) names it in errors."""
  value = lambda key: _config_value(config, f"model.{key}", source)
  decoder = value("decoder")
  encoder = value("encoder")
  if encoder == "e3nn" and value("e3nn_variant") != "chen2021":
    encoder += f" ({value('e3nn_variant')})"
  label = f"{encoder} + {decoder}"
  if decoder == "transformer" and value("causal") is False:
    label += " (unmasked)"
  if decoder == "chunk_rnn_attn":
    label += f" (chunk {value('chunk_size')})"
  if decoder == "mlp" and value("mlp_energy_embedding"):
    label += " (energy emb.)"
  if decoder == "dostransformer":
    if value("dostransformer_prompt") == "none":
      label += " (no prompt)"
    weight = value("dostransformer_prompt_free_weight")
    if weight > 0:
      label += f" (+ prompt-free loss x{weight:g})"
  if value("atom_features") != "cgcnn":
    label += f" ({value('atom_features')} atoms)"
  members = _config_value(config, "train.ensemble_size", source)
  if members > 1:
    label += f", ensemble of {members}"
  return label


def _accuracy(results: Mapping[str, Any], split: str, scale: str, metric: str) -> float:
  """One metric of results.json; a run saved before results.json held "rmse" gets
  sqrt(mse), its definition (`metrics.finalize`)."""
  values = results["metrics"][split][scale]
  if metric == "rmse" and metric not in values:
    return math.sqrt(values["mse"])
  return values[metric]


def _run_record(run_dir: str) -> dict[str, Any]:
  """Seed, accuracy metrics and run facts of one finished run (results.json, config.json,
  metrics.jsonl)."""
  results = _read_json(os.path.join(run_dir, "results.json"))
  config = _read_json(os.path.join(run_dir, "config.json"))
  record = {key: _accuracy(results, split, scale, metric)
            for key, (split, scale, metric) in ACCURACY.items()}
  record.update(
      run_dir=run_dir, seed=config.get("seed"), config=config,
      fold=(config["data"].get("fold") if config.get("data", {}).get("num_folds") else None),
      test_count=results["metrics"]["test"]["normalized"]["count"],
      num_params=int(results.get("num_params", 0)), epochs_run=results.get("epochs_run"),
      best_epoch=results.get("best_epoch"),
      train_seconds_per_epoch=_train_seconds_per_epoch(os.path.join(run_dir, "metrics.jsonl")),
      r2_test_chosen=_test_chosen_r2(os.path.join(run_dir, "metrics.jsonl")))
  return record


def _config_path(record: Mapping[str, Any]) -> str:
  return os.path.join(record["run_dir"], "config.json")


def collect_row(name: str, dirs: Sequence[str]) -> dict[str, Any]:
  """One table row from a variant's finished runs (one per seed).

  Accuracy columns and s/epoch are means over the runs; with several runs each accuracy
  column also gets `<key>_std` (sample standard deviation over seeds, None for one run).
  `runs` lists every run's seed and figures; inference speed comes from the first run
  holding an evaluate.json (NaN if none); missing measurements are NaN.
  """
  records = [_run_record(d) for d in dirs]
  speed = next((_read_json(os.path.join(d, INFERENCE_JSON)) for d in dirs
                if os.path.exists(os.path.join(d, INFERENCE_JSON))), {})
  row = {"name": name, "run_dir": dirs[0] if len(dirs) == 1 else os.path.dirname(dirs[0]),
         "model": _model_label(records[0]["config"], _config_path(records[0])),
         "num_runs": len(records),
         "seeds": sorted({r["seed"] for r in records}),
         "folds": sorted({r["fold"] for r in records if r["fold"] is not None})}
  row["runs_label"] = ", ".join(
      part for part in (f"folds {', '.join(map(str, row['folds']))}" if row["folds"] else "",
                        f"seeds {', '.join(map(str, row['seeds']))}" if len(row["seeds"]) > 1
                        else "") if part)
  for key in list(ACCURACY) + ["train_seconds_per_epoch"]:
    values = [r[key] for r in records]
    row[key] = statistics.fmean(values)
    if key in ACCURACY:
      row[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else None
  chosen = [r["r2_test_chosen"] for r in records]
  monitored = all(math.isfinite(v) for v in chosen)
  row["r2_test_chosen"] = statistics.fmean(chosen) if monitored else math.nan
  row["r2_test_chosen_std"] = statistics.stdev(chosen) if monitored and len(chosen) > 1 else None
  row.update(test_count=records[0]["test_count"], num_params=records[0]["num_params"],
             epochs_run=records[0]["epochs_run"], best_epoch=records[0]["best_epoch"],
             inference_crystals_per_s=speed.get("crystals_per_s", math.nan),
             runs=[{k: v for k, v in r.items() if k != "config"} for r in records])
  return row


def _ensemble_metrics(dirs: Sequence[str]) -> dict[str, Any]:
  """Accuracy of the mean prediction of several runs trained on one split (seeds):
  the runs' scaled predictions are averaged per crystal, then scored like one run."""
  import numpy as np

  from xtal2dos_jax.objectives import metrics
  from xtal2dos_jax.training import restore
  out: dict[str, Any] = {}
  loaded_runs = [restore.restore_run_and_data(d) for d in dirs]
  for split in ("validation", "test"):
    preds = []
    for loaded, rd in loaded_runs:
      part = rd.splits[split]
      if list(part.graphs.ids) != list(loaded_runs[0][1].splits[split].graphs.ids):
        raise ValueError(f"{dirs}: an ensemble needs runs on one split")
      preds.append(loaded.trainer.predict(loaded.params, part, rd.budget))
    rd = loaded_runs[0][1]
    part = rd.splits[split]
    normalized, original = rd.scaler.metric_predictions(np.mean(preds, axis=0), part.y_scale)
    bin_width = float(rd.grid[1] - rd.grid[0])
    out[split] = {"normalized": metrics.compute_metrics(part.y, normalized, bin_width=bin_width),
                  "original": metrics.compute_metrics(rd.labels[split], original,
                                                      bin_width=bin_width)}
  return out


def ensemble_row(name: str, dirs: Sequence[str], members: int) -> dict[str, Any]:
  """A table row for the ensembles of a variant: its runs grouped by split (fold) into
  ensembles of `members` seeds each, every ensemble scored on its split's mean
  prediction; accuracy is the mean (± std) over the splits."""
  records = [_run_record(d) for d in dirs]
  by_fold: dict[Any, list[str]] = {}
  for record in records:
    by_fold.setdefault(record["fold"], []).append(record["run_dir"])
  scored = []
  for fold, fold_dirs in by_fold.items():
    if len(fold_dirs) != members:
      raise ValueError(f"{name}: fold {fold} has {len(fold_dirs)} runs, not {members}")
    result = _ensemble_metrics(fold_dirs)
    scored.append({key: result[split][scale][metric]
                   for key, (split, scale, metric) in ACCURACY.items()})
  row = {"name": f"{name} (mean of {members})", "run_dir": os.path.dirname(dirs[0]),
         "model": (_model_label(records[0]["config"], _config_path(records[0]))
                   + f", ensemble of {members}"),
         "num_runs": len(scored), "seeds": sorted({r["seed"] for r in records}),
         "folds": sorted(f for f in by_fold if f is not None)}
  row["runs_label"] = (f"folds {', '.join(map(str, row['folds']))}" if row["folds"]
                       else "one split")
  for key in ACCURACY:
    values = [r[key] for r in scored]
    row[key] = statistics.fmean(values)
    row[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else None
  row.update(test_count=records[0]["test_count"],
             num_params=members * records[0]["num_params"],
             train_seconds_per_epoch=members * statistics.fmean(
                 r["train_seconds_per_epoch"] for r in records),
             epochs_run=None, best_epoch=None, inference_crystals_per_s=math.nan, runs=scored)
  return row


def _test_ids(run_dir: str) -> list[str] | None:
  path = os.path.join(run_dir, "splits.json")
  return sorted(_read_json(path)["test"]) if os.path.exists(path) else None


def build_table(runs: Mapping[str, str | Sequence[str]],
                published: Sequence[Mapping[str, Any]] = (),
                ensemble_members: int = 0) -> dict[str, Any]:
  """{"rows": one `collect_row` per (name, run dir or dirs), in order; "same_split":
  whether every variant was tested on the same split or sequence of splits (the seeds of
  one variant share a split, its cross-validation folds each have one); "published":
  rows quoted from papers}. With `ensemble_members` > 1 (the number of seeds), every
  variant also gets an `ensemble_row`."""
  runs = {name: [dirs] if isinstance(dirs, str) else list(dirs) for name, dirs in runs.items()}
  rows = [collect_row(name, dirs) for name, dirs in runs.items()]
  if ensemble_members > 1:
    rows += [ensemble_row(name, dirs, ensemble_members) for name, dirs in runs.items()]
  distinct = []  # per variant: its distinct test splits, in order of first appearance
  for dirs in runs.values():
    splits = []
    for ids in (_test_ids(d) for d in dirs):
      if ids not in splits:
        splits.append(ids)
    distinct.append(splits)
  same = all(None not in s and s == distinct[0] for s in distinct)
  return {"rows": rows, "same_split": bool(same), "published": [dict(r) for r in published]}


def format_cell(value: Any, fmt: str, std: float | None = None) -> str:
  """`value` formatted with `fmt` (and ± `std` when given); "n/a" for None or non-finite."""
  if value is None or (isinstance(value, float) and not math.isfinite(value)):
    return "n/a"
  return fmt.format(value) + ("" if std is None else " ± " + fmt.format(std))


def _finite(value: Any) -> bool:
  return isinstance(value, (int, float)) and math.isfinite(value)


def to_markdown(table: Mapping[str, Any]) -> str:
  """The table as GitHub markdown (a warning line first if the test splits differ). The
  column of the test-chosen epoch appears only when some run recorded `test_monitor`."""
  monitored = any(_finite(row.get("r2_test_chosen")) for row in table["rows"])
  columns = [c for c in COLUMNS if c[0] != "r2_test_chosen" or monitored]
  header = ["variant"] + [h for _, h, _ in columns]
  lines = []
  if not table["same_split"]:
    lines += ["**warning: the runs were evaluated on different test splits**", ""]
  lines += ["| " + " | ".join(header) + " |",
            "|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|"]
  for row in table["rows"]:
    cells = [row["name"]] + [format_cell(row.get(k), fmt, row.get(f"{k}_std"))
                             for k, _, fmt in columns]
    lines.append("| " + " | ".join(cells) + " |")
  for row in table.get("published", []):
    cells = [row["model"], "published"] + [
        format_cell(row.get(k), fmt) if k in row else "" for k, _, fmt in columns[1:]]
    lines.append("| " + " | ".join(cells) + " |")
  n = {row["test_count"] for row in table["rows"]}
  runs = {row["num_runs"] for row in table["rows"]}
  seeds = ("" if runs == {1} else
           f" Each variant trained {max(runs)} times ({table['rows'][0]['runs_label']}): mean ± "
           "standard deviation over the runs.")
  if table.get("published"):
    seeds += (" Published rows: " + table["published"][0]["source"] + ".")
  lines += ["", f"val R^2: validation split, normalised scale, at the selected checkpoint "
            f"(compare variants on this). Test split ({', '.join(map(str, sorted(n)))} "
            "crystals); R^2, MAE, MSE, RMSE, WD on the normalised label scale, R^2 (orig) "
            "on the original scale; RMSE is the root of the MSE over all crystals and "
            "points (the DOSTransformer paper averages per-crystal RMSEs, which is at most "
            "this); s/epoch: median training time per epoch (first epoch excluded); "
            "crystals/s: Trainer.predict throughput, best of the timed runs after warm-up."
            + (" R^2, epoch chosen on test: test R^2 at the epoch of the lowest test loss "
               "(the public Xtal2DoS code's \"best\" checkpoint; train.monitor_test), for "
               "comparison with published figures only." if monitored else "")
            + seeds]
  return "\n".join(lines)


def _finite_or_none(tree: Any) -> Any:
  """`tree` with non-finite floats replaced by None (strict JSON has no NaN)."""
  if isinstance(tree, Mapping):
    return {k: _finite_or_none(v) for k, v in tree.items()}
  if isinstance(tree, (list, tuple)):
    return [_finite_or_none(v) for v in tree]
  if isinstance(tree, float) and not math.isfinite(tree):
    return None
  return tree


def write_table(table: Mapping[str, Any], workdir: str, json_name: str = TABLE_JSON,
                markdown_name: str = TABLE_MARKDOWN, markdown: str | None = None
                ) -> tuple[str, str]:
  """Writes the table as JSON (`json_name`) and markdown (`markdown_name`, the text
  `markdown`, by default `to_markdown(table)`) into `workdir`; returns their paths."""
  from xtal2dos_jax.core.atomic_io import write_json_atomic, write_text_atomic
  os.makedirs(workdir, exist_ok=True)
  json_path = os.path.join(workdir, json_name)
  md_path = os.path.join(workdir, markdown_name)
  write_json_atomic(json_path, _finite_or_none(table))
  write_text_atomic(md_path, (to_markdown(table) if markdown is None else markdown) + "\n")
  return json_path, md_path
