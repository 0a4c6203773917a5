"""Export a training run as a model that prediction loads without the workdir.

`export_run` writes the model directory that `pretrained.load_exported` reads (its layout
is in `pretrained.py`): the best checkpoint's evaluation parameters, the run's config,
label scaler and set-up, and a model card; for an ensemble also the spread threshold and
the std scale factors fitted on the validation split, with the test coverage they reach
(`ensemble_spread`).
"""
from __future__ import annotations

import datetime
import json
import os
import shutil
import tempfile
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np
from absl import logging

from xtal2dos_jax.core import atomic_io
from xtal2dos_jax.core.errors import check_choice, InputError
from xtal2dos_jax.evaluation import uncertainty
from xtal2dos_jax.inference.pretrained import (ExportedModel, load_exported, PARAMS_FILE,
                                               save_params, STORAGE_DTYPES)
from xtal2dos_jax.input_pipeline import batching, labels, readers
from xtal2dos_jax.training import model_setup, restore
from xtal2dos_jax.training import checkpoints as checkpoints_lib
from xtal2dos_jax.training import workdir as workdir_lib


# Quantile of the validation crystals' ensemble spread that becomes the model's
# "high_spread" threshold (only for ensembles: a single model has no spread).
SPREAD_QUANTILE = 0.95


def _best_eval_params(workdir: str, config: ml_collections.ConfigDict,
                      budget: batching.Budget) -> tuple[Any, int]:
  """The best checkpoint's evaluation parameters (host arrays) and its epoch."""
  best, restored = checkpoints_lib.restore_best_of(
      workdir_lib.Workdir(workdir).checkpoint_dir,
      model_setup.abstract_train_state(config, budget))
  return jax.tree.map(np.asarray, best.state.eval_params), int(restored.epoch)


def training_elements(config: ml_collections.ConfigDict,
                      train_ids: Sequence[str]) -> list[str] | None:
  """Element symbols of the training split's crystals, read from the run's dataset;
  None (with a warning) when the dataset cannot be read any more."""
  try:
    raw = readers.load_raw_dataset(config.data)
  except (InputError, OSError) as e:
    logging.warning("training elements not recorded: the dataset is unreadable (%s); "
                    "predictions of this model are never flagged unseen_elements", e)
    return None
  wanted = {str(i) for i in train_ids}
  symbols: set[str] = set()
  for rid, atoms in zip(raw.ids, raw.structures):
    if str(rid) in wanted:
      symbols.update(atoms.get_chemical_symbols())
  return sorted(symbols)


def _physical_labels_and_members(model: ExportedModel, part: batching.LabelledGraphs,
                                 budget: batching.Budget
                                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
  """(true DoS float[n, l_y], members float[K, n, l_y], n_atoms int64[n], physical) of a
  labelled split as the exported (stored-precision) model predicts it, in physical units
  where the scaling has them (`labels.original_scale_for_prediction`; physical True),
  else scaled."""
  members = model.predict_members(part, budget)
  n_atoms = part.graphs.n_node.astype(np.int64)
  to_physical = lambda y: labels.original_scale_for_prediction(  # noqa: E731
      model.config, model.scaler, y, n_atoms.astype(np.float64), model.grid)
  true = to_physical(part.y)
  if true is None:
    return part.y, members, n_atoms, False
  return true, np.stack([to_physical(m) for m in members]), n_atoms, True


def ensemble_spread(model: ExportedModel, validation: batching.LabelledGraphs,
                    test: batching.LabelledGraphs, budget: batching.Budget) -> dict[str, Any]:
  """What an ensemble's reported spread rests on. From the validation split:
  "spread_threshold" (the SPREAD_QUANTILE of the crystals' `relative_spread`) and
  "std_scale" (`uncertainty.fit_std_scales`); from the test split, "std_coverage"
  (`uncertainty.std_coverage` with those scales)."""
  kind, grid = str(model.config.data.kind), np.asarray(model.grid)
  true, members, n_atoms, physical = _physical_labels_and_members(model, validation, budget)
  scales = uncertainty.fit_std_scales(kind, grid, true, members, n_atoms, physical)
  threshold = float(np.quantile(uncertainty.relative_spread(members), SPREAD_QUANTILE))
  true, members, n_atoms, physical = _physical_labels_and_members(model, test, budget)
  return {"spread_threshold": threshold, "std_scale": scales,
          "std_coverage": uncertainty.std_coverage(kind, grid, true, members, n_atoms, scales,
                                                 physical)}


def _fmt_metric(m: dict[str, Any], key: str) -> str:
  v = m.get(key)
  return "n/a" if v is None else f"{v:.4g}"


def model_card(name: str, config: ml_collections.ConfigDict, results: dict[str, Any] | None,
               split_sizes: dict[str, int], setup: dict[str, Any], size_mb: float) -> str:
  """model_card.md: what the model was trained on, how, and how well it does."""
  d, m, t = config.data, config.model, config.train
  lines = [f"# {name}", ""]
  if setup.get("description"):
    lines += [setup["description"], ""]
  lines += [f"Exported {setup['exported']} from a training run of xtal2dos_jax "
           f"({setup['num_members']} member{'s' if setup['num_members'] > 1 else ''}; "
           f"parameters stored as {setup['param_dtype']}, {size_mb:.2f} MB).", "",
           "## Data", "",
           f"- {d.kind} DoS, format `{d.format}`, source `{d.path or 'embedded'}`"
           + (f" (first {d.limit} crystals)" if d.limit else ""),
           f"- grid: {len(setup['grid'])} points, {setup['grid'][0]:g} .. {setup['grid'][-1]:g}"
           f" ({'cm^-1' if d.kind == 'phonon' else 'eV'}); label scaling `{d.scaling}`",
           "- splits: " + ", ".join(f"{k} {v}" for k, v in split_sizes.items()),
           "- training elements: " + (", ".join(setup["training_elements"])
                                      if setup.get("training_elements") else "not recorded"),
           "", "## Recipe", ""]
  recipe = {"encoder": m.encoder, "decoder": m.decoder, "d_model": m.d_model,
            "num_heads": m.num_heads, "encoder_layers": m.encoder_layers,
            "decoder_layers": m.decoder_layers, "loss": t.loss, "optimizer": t.optimizer,
            "learning_rate": t.learning_rate, "batch_size": t.batch_size,
            "num_epochs": t.num_epochs, "ema_decay": t.ema_decay, "seed": config.seed,
            "ensemble_size": setup["num_members"], "best_epoch": setup.get("best_epoch")}
  lines += [f"- {k}: {v}" for k, v in recipe.items() if v is not None]
  lines += ["", "## Test metrics", ""]
  test = (results or {}).get("metrics", {}).get("test")
  if test:
    lines += ["| scale | R^2 | MAE | MSE | WD | crystals |", "|---|---|---|---|---|---|"]
    for scale in ("normalized", "original"):
      s = test.get(scale, {})
      lines.append(f"| {scale} | " + " | ".join(_fmt_metric(s, k) for k in
                                                 ("r2", "mae", "mse", "wd"))
                   + f" | {s.get('count', 'n/a')} |")
  else:
    lines.append("No results.json in the workdir (the run did not finish): no test metrics.")
  cal = setup.get("calibration")
  if cal:
    lines += ["", "## Calibration (test split)", "",
              f"Ensemble spread (std over {cal['members']} members) against the true DoS: "
              f"{100 * cal['coverage_1sigma']:.1f} % of points within +-1 std, "
              f"{100 * cal['coverage_2sigma']:.1f} % within +-2 std (a calibrated Gaussian: "
              f"68.3 %, 95.4 %); rank correlation of each crystal's spread with its error "
              f"{cal['spread_error_correlation']:.2f}. Scale fitted on validation: "
              f"{cal['recalibration_factor']:.2f} (std x it gives "
              f"{100 * cal.get('coverage_1sigma_recalibrated', float('nan')):.1f} % / "
              f"{100 * cal.get('coverage_2sigma_recalibrated', float('nan')):.1f} %)."]
  if setup.get("std_scale"):
    coverage = setup.get("std_coverage", {})
    lines += ["", "## Reported spread", "",
              "Every std a prediction reports is the members' std times a factor fitted on "
              "the validation split (a curve's is that of its value at 300 K). The share of "
              "test values inside the reported +-1 / +-2 std (a calibrated Gaussian: 68.3 % / "
              "95.4 %), and the rank correlation of each crystal's spread with its error:",
              "", "| quantity | factor | within 1 std | within 2 std | spread-error rank "
              "correlation |", "|---|---:|---:|---:|---:|"]
    for key, v in sorted(setup["std_scale"].items()):
      c = coverage.get(key, {})
      cells = [f"{100 * c[f]:.1f} %" if f in c else "n/a"
               for f in ("coverage_1sigma", "coverage_2sigma")]
      rho = c.get("spread_error_correlation")
      cells.append("n/a" if rho is None else f"{rho:.2f}")
      lines.append(f"| {key} | {v:.2f} | " + " | ".join(cells) + " |")
  if setup.get("spread_threshold") is not None:
    lines += ["", f"Predictions whose relative ensemble spread exceeds "
              f"{setup['spread_threshold']:.4g} (the {100 * SPREAD_QUANTILE:.0f}th percentile "
              "on the validation split) are flagged high_spread."]
  return "\n".join(lines) + "\n"


def export_run(workdir: str, outdir: str, name: str | None = None,
               dtype: str = "float32", description: str = "") -> str:
  """Writes the exported model of `workdir` to `outdir` (which must not exist yet);
  `description` opens the model card.

  The files are written to a temporary sibling directory that is renamed into place at
  the end, so a failed export leaves no half model. Returns `outdir`.
  """
  check_choice(dtype, STORAGE_DTYPES, "--dtype", what="storage dtype")
  outdir = os.path.abspath(outdir)
  if os.path.exists(outdir):
    raise InputError(outdir, "already exists; exporting never overwrites a model (choose "
                     "another --name/--outdir or remove it)")
  name = name or os.path.basename(outdir)
  run = workdir_lib.Workdir(workdir)
  config = workdir_lib.load_config(workdir)
  data = restore.load_eval_data(workdir, config)
  splits = run.load_splits() or {}
  params, epoch = _best_eval_params(workdir, config, data.budget)
  k = model_setup.ensemble_size(config)
  results = None
  if os.path.exists(run.file("results.json")):
    with open(run.file("results.json")) as f:
      results = json.load(f)
  setup: dict[str, Any] = {
      "l_y": int(len(data.grid)), "grid": [float(g) for g in data.grid],
      "budget": data.budget._asdict(), "num_members": k, "param_dtype": dtype,
      "kind": str(config.data.kind), "scaling": str(config.data.scaling),
      "training_elements": training_elements(config, splits.get("train", [])),
      "spread_threshold": None, "best_epoch": epoch,
      "exported": datetime.date.today().isoformat(), "name": name,
      "description": str(description).strip(),
      "test_metrics": None if results is None else results["metrics"]["test"]}
  if os.path.exists(run.file("eval_test.json")):  # the ensemble's calibration, if evaluated
    with open(run.file("eval_test.json")) as f:
      setup["calibration"] = json.load(f)["test"].get("calibration")
  os.makedirs(os.path.dirname(outdir), exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(outdir)}-", dir=os.path.dirname(outdir))
  try:
    atomic_io.write_json_atomic(os.path.join(tmp, "config.json"),
                                  workdir_lib.config_to_dict(config))
    atomic_io.write_json_atomic(os.path.join(tmp, "label_scaler.json"), data.scaler.to_dict())
    atomic_io.write_json_atomic(os.path.join(tmp, "test_ids.json"),
                                  [str(i) for i in splits.get("test", [])])
    save_params(os.path.join(tmp, PARAMS_FILE), params, dtype)
    if k > 1:
      atomic_io.write_json_atomic(os.path.join(tmp, "setup.json"), setup)
      setup.update(ensemble_spread(load_exported(tmp), data.splits["validation"],
                                   data.splits["test"], data.budget))
    atomic_io.write_json_atomic(os.path.join(tmp, "setup.json"), setup)
    size_mb = os.path.getsize(os.path.join(tmp, PARAMS_FILE)) / 2**20
    sizes = {s: len(splits[s]) for s in ("train", "validation", "test") if s in splits}
    atomic_io.write_text_atomic(os.path.join(tmp, "model_card.md"),
                                  model_card(name, config, results, sizes, setup, size_mb))
    os.chmod(tmp, 0o777 & ~atomic_io.current_umask())
    os.rename(tmp, outdir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  logging.info("exported %s (epoch %d, %d member(s), %s) -> %s", workdir, epoch, k, dtype,
               outdir)
  return outdir
