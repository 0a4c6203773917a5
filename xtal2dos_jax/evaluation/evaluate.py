"""Evaluate a finished run from its workdir: metrics, derived physics, calibration, plots.

`evaluate_run` restores the best checkpoint (`training.restore`), scores a split on both
label scales, the errors of the physics derived from the DoS (`physics.dos_properties`)
and, for an ensemble, how far its spread is to be trusted (`calibration`).
"""
from __future__ import annotations

from typing import Any

import numpy as np
from absl import logging

from xtal2dos_jax.core import atomic_io
from xtal2dos_jax.core.errors import check_choice
from xtal2dos_jax.evaluation import calibration, plotting
from xtal2dos_jax.input_pipeline import batching, data_splits
from xtal2dos_jax.physics import dos_properties
from xtal2dos_jax.training import restore
from xtal2dos_jax.training import workdir as workdir_lib


def metric_scale_members(loaded: restore.LoadedRun, part: batching.LabelledGraphs,
                         budget: batching.Budget, scaler) -> tuple[np.ndarray, np.ndarray,
                                                                   np.ndarray]:
  """(mean float32[n, l_y], std float32[n, l_y], members float32[K, n, l_y]) on the
  original label scale as the metrics compare them (`LabelScaler.metric_predictions`):
  the mean is that of the members' mean prediction, the std the spread of the members'
  own predictions (0 for a single model)."""
  members = restore.predict_members(loaded, part, budget)
  _, mean = scaler.metric_predictions(members.mean(0), part.y_scale)
  _, each = scaler.metric_predictions(members, part.y_scale[None])
  each = np.asarray(each, np.float32)
  return np.asarray(mean, np.float32), each.std(0), each


def _derived_calibration(kind: str, grid, y_true, members, n_atoms, validation
                         ) -> dict[str, Any]:
  """`calibration.calibration_report` of each per-crystal derived property (C_v(300 K),
  mean frequency; or the band gap), its spread over the members' DoS; the factor is
  fitted on `validation` = (y_true, members, n_atoms) of the validation split."""
  def per_member(y, ms, n):
    values = [dos_properties.derived_property_errors(kind, grid, y, m, n)[1] for m in ms]
    return {key.replace("_pred_", "_"): (values[0][key.replace("_pred_", "_true_")],
                                         np.stack([v[key] for v in values]))
            for key in values[0] if "_pred_" in key}
  test, val = per_member(y_true, members, n_atoms), per_member(*validation)
  out = {}
  for name, (truth, each) in test.items():
    v_truth, v_each = val[name]
    v_ok = np.isfinite(v_truth) & np.all(np.isfinite(v_each), 0)
    ok = np.isfinite(truth) & np.all(np.isfinite(each), 0)
    factor = calibration.recalibration_factor(v_truth[v_ok], v_each[:, v_ok].mean(0),
                                              v_each[:, v_ok].std(0))
    out[name] = calibration.calibration_report(truth[ok], each[:, ok].mean(0),
                                               each[:, ok].std(0), factor)
  return out


def _x_label(config) -> str:
  return "frequency (cm$^{-1}$)" if config.data.kind == "phonon" else "energy (eV)"


def evaluate_run(workdir: str, split: str = "test") -> dict[str, Any]:
  """Metrics of the best checkpoint on `split`; writes eval_<split>.json, predictions
  (npz: ids, grid, y_true, y_pred on the original scale; y_std and y_members [K, n,
  l_y], the ensemble's spread and members, std 0 for one model) and a best/median/worst
  PNG.

  For an ensemble, out[split]["calibration"] says how far its spread is to be trusted
  (`calibration.calibration_report`): coverage of the true DoS points by mean +- 1 and
  2 std, the rank correlation of each crystal's spread with its error, a one-scalar
  recalibration factor fitted on the validation split and the coverage after it; and
  the same for the derived properties under "physics" (C_v(300 K), mean frequency).

  Besides the DoS metrics, out[split]["physics"] holds the errors of properties derived
  from the predicted vs the true DoS (`dos_properties.derived_property_errors`): for phonons
  C_v(300 K) in J/K/mol-atom and the mean frequency in cm^-1, both DoS rescaled to 3N
  modes per cell (N = atoms of the featurised cell); for electrons the band-gap estimate.
  The npz adds n_atoms and the per-crystal values (e.g. cv300_true_J_per_K_mol_atom,
  cv300_pred_J_per_K_mol_atom, mean_freq_true_cm, mean_freq_pred_cm). Print the summary
  with `dos_properties.physics_table(out[split]["physics"])`. out["checkpoint"] says which
  checkpoint was restored (best, or latest when checkpoints/best holds none) and its epoch.

  The validation and test crystals come from the workdir; the train split, which the
  workdir does not keep, is read from the dataset with the saved split and scaling.
  """
  check_choice(split, data_splits.SPLITS, "--split", what="split")
  run = workdir_lib.Workdir(workdir)
  loaded, data = restore.restore_run_and_data(workdir)
  if split in data.splits:
    part, y_true = data.splits[split], data.labels[split]
  else:
    logging.info("the workdir keeps the %s crystals only; reading the %s split from the "
                 "dataset", " and ".join(data.splits), split)
    rd = restore.rebuild_from_dataset(run, loaded.config, data.scaler)
    part, y_true = rd.splits[split], rd.labels[split]
  config, scaler, grid = loaded.config, data.scaler, data.grid
  result = loaded.trainer.evaluate(loaded.params, part, data.budget, data.bin_width)
  y_pred, y_std, y_members = metric_scale_members(loaded, part, data.budget, scaler)
  ids = np.asarray(part.graphs.ids)
  n_atoms = part.graphs.n_node.astype(np.int64)
  result["physics"], per_crystal = dos_properties.derived_property_errors(
      config.data.kind, grid, y_true, y_pred, n_atoms)
  if len(y_members) > 1:
    val_part = data.splits["validation"]
    val_mean, val_std, val_members = metric_scale_members(loaded, val_part, data.budget, scaler)
    val_true = data.labels["validation"]
    result["calibration"] = {
        **calibration.calibration_report(
            y_true, y_pred, y_std, calibration.recalibration_factor(val_true, val_mean,
                                                                   val_std)),
        "members": len(y_members),
        "physics": _derived_calibration(
            config.data.kind, grid, y_true, y_members, n_atoms,
            (val_true, val_members, val_part.graphs.n_node.astype(np.int64)))}
  np.savez(run.file(f"predictions_{split}.npz"), ids=ids, grid=grid, y_true=y_true,
           y_pred=y_pred, y_std=y_std, y_members=y_members, n_atoms=n_atoms, **per_crystal)
  per_crystal_mae = np.abs(y_true - y_pred).mean(1)
  order = np.argsort(per_crystal_mae)
  picks = {"best": order[:3], "median": order[len(order) // 2 - 1:len(order) // 2 + 2],
           "worst": order[-3:]}
  chosen = np.concatenate(list(picks.values()))
  titles = [f"{label} {k + 1}: {ids[i]} (MAE {per_crystal_mae[i]:.3g})"
            for label, idx in picks.items() for k, i in enumerate(idx)]
  plotting.plot_dos_grid(run.file(f"eval_{split}.png"), grid, y_pred[chosen], titles,
                         y_true=y_true[chosen], xlabel=_x_label(config))
  out = {"split": split, "best_epoch": loaded.checkpoint.epoch,
         "checkpoint": loaded.checkpoint.to_json(), split: result}
  atomic_io.write_json_atomic(run.file(f"eval_{split}.json"), out)
  return out


