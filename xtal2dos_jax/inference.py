"""Evaluate a finished run and predict DoS (plus derived physics) for new structures.

Both need only the workdir: config, split ids, label scaler and checkpoints are
read from it (see `workdir.py`).
"""
from __future__ import annotations

import csv
import dataclasses
import os
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from xtal2dos_jax import run_data
from xtal2dos_jax import datasets, graph_cache, batching, physics, plotting
from xtal2dos_jax import checkpoints as checkpoints_lib
from xtal2dos_jax import train as train_lib
from xtal2dos_jax import workdir as workdir_lib
from xtal2dos_jax.errors import InputError


@dataclasses.dataclass
class LoadedRun:
  config: ml_collections.ConfigDict
  trainer: train_lib.Trainer
  params: Any          # replicated over local devices
  best_epoch: int


def restore_run(workdir: str, sample: batching.Batch, scaler) -> LoadedRun:
  """Builds the run's model and restores its best checkpoint."""
  config = workdir_lib.load_config(workdir)
  trainer = train_lib.Trainer(config, scaler)
  # Shapes only: restoring needs the tree structure, not a compiled init.
  template = jax.eval_shape(lambda: trainer.init_state(sample, steps_per_epoch=1))
  ckpt = checkpoints_lib.Checkpoints(workdir_lib.Workdir(workdir).checkpoint_dir)
  try:
    best = ckpt.restore_best(template)
  finally:
    ckpt.close()
  return LoadedRun(config, trainer, trainer.replicate(best.state.eval_params), best.epoch)


def restore_run_and_data(workdir: str) -> tuple[LoadedRun, run_data.RunData]:
  """A run's best checkpoint and its data, with the split and label scaling it was
  trained with (what evaluation and inference timing need)."""
  run = workdir_lib.Workdir(workdir)
  config = workdir_lib.load_config(workdir)
  split_ids, scaler = run.load_splits(), run.load_scaler()
  if split_ids is None or scaler is None:
    raise InputError(workdir, "has no saved splits/label statistics; the run never started")
  rd = run_data.prepare_run_data(config, jax.device_count(), split_ids=split_ids, scaler=scaler)
  sample = batching.assemble(rd.splits["train"], np.arange(1), rd.budget)
  return restore_run(workdir, sample, scaler), rd


def _new_output_dir(base: str, prefix: str) -> str:
  """A fresh directory base/prefix-N, so earlier outputs are never overwritten."""
  n = 1
  while os.path.exists(os.path.join(base, f"{prefix}-{n}")):
    n += 1
  path = os.path.join(base, f"{prefix}-{n}")
  os.makedirs(path)
  return path


def _x_label(config) -> str:
  return "frequency (cm$^{-1}$)" if config.data.kind == "phonon" else "energy (eV)"


def evaluate_run(workdir: str, split: str = "test") -> dict[str, Any]:
  """Metrics of the best checkpoint on `split`; writes eval_<split>.json, predictions
  (npz: ids, grid, y_true, y_pred on the original scale) and a best/median/worst PNG.

  Besides the DoS metrics, out[split]["physics"] holds the errors of properties derived
  from the predicted vs the true DoS (`physics.derived_property_errors`): for phonons
  C_v(300 K) in J/K/mol-atom and the mean frequency in cm^-1, both DoS rescaled to 3N
  modes per cell (N = atoms of the featurised cell); for electrons the band-gap estimate.
  The npz adds n_atoms and the per-crystal values (e.g. cv300_true_J_per_K_mol_atom,
  cv300_pred_J_per_K_mol_atom, mean_freq_true_cm, mean_freq_pred_cm). Print the summary
  with `physics.physics_table(out[split]["physics"])`.
  """
  run = workdir_lib.Workdir(workdir)
  loaded, rd = restore_run_and_data(workdir)
  if split not in rd.splits:
    raise InputError(split, f"unknown split; expected one of {', '.join(rd.splits)}")
  config, scaler, part = loaded.config, rd.scaler, rd.splits[split]
  bin_width = float(rd.grid[1] - rd.grid[0])
  result = loaded.trainer.evaluate(loaded.params, part, rd.budget, bin_width)
  _, y_pred = scaler.metric_predictions(loaded.trainer.predict(loaded.params, part, rd.budget),
                                        part.y_scale)
  y_pred = np.asarray(y_pred)
  y_true = rd.labels[split]
  ids = np.asarray(part.graphs.ids)
  n_atoms = part.graphs.n_node.astype(np.int64)
  result["physics"], per_crystal = physics.derived_property_errors(
      config.data.kind, rd.grid, y_true, y_pred, n_atoms)
  np.savez(run.file(f"predictions_{split}.npz"), ids=ids, grid=rd.grid, y_true=y_true,
           y_pred=y_pred, n_atoms=n_atoms, **per_crystal)
  per_crystal_mae = np.abs(y_true - y_pred).mean(1)
  order = np.argsort(per_crystal_mae)
  picks = {"best": order[:3], "median": order[len(order) // 2 - 1:len(order) // 2 + 2],
           "worst": order[-3:]}
  chosen = np.concatenate(list(picks.values()))
  titles = [f"{label} {k + 1}: {ids[i]} (MAE {per_crystal_mae[i]:.3g})"
            for label, idx in picks.items() for k, i in enumerate(idx)]
  plotting.plot_dos_grid(run.file(f"eval_{split}.png"), rd.grid, y_pred[chosen], titles,
                         y_true=y_true[chosen], xlabel=_x_label(config))
  out = {"split": split, "best_epoch": loaded.best_epoch, split: result}
  workdir_lib.write_json_atomic(run.file(f"eval_{split}.json"), out)
  return out


def original_scale_for_prediction(config, scaler, y_scaled: np.ndarray,
                                  n_atoms: np.ndarray, grid: np.ndarray) -> np.ndarray | None:
  """Predictions in physical units where the scaling allows it, else None.

  `standardized` labels invert exactly. A `normalized_sum` phonon DoS is rescaled
  so it integrates to 3N modes (sum * bin width = 3N), as the shipped data does.
  Other cases need the true per-crystal scale, which a new structure does not have.
  """
  if scaler.name == "standardized":
    return np.asarray(scaler.inverse(y_scaled, np.ones(len(y_scaled), np.float32)))
  if scaler.name == "normalized_sum" and config.data.kind == "phonon":
    return y_scaled * (3.0 * n_atoms / float(grid[1] - grid[0]))[:, None]
  return None


def predict_structures(workdir: str, structures: str, outdir: str | None = None
                       ) -> dict[str, Any]:
  """Predicts the DoS of every readable structure matching `structures`.

  Bad files are reported (`skipped.json`, a warning) and the rest predicted. Writes
  predictions.csv / predictions.npz / predictions.png (+ heat capacity and mean
  frequency for phonons, a band-gap estimate for electrons) to a fresh directory
  (default workdir/predict-N) and returns a summary.
  """
  run = workdir_lib.Workdir(workdir)
  config = workdir_lib.load_config(workdir)
  scaler = run.load_scaler()
  if scaler is None:
    raise InputError(workdir, "has no saved label statistics; the run never started")
  raw = datasets.read_structure_folder(structures)
  skipped = list(raw.skipped)
  graphs, bad = graph_cache.featurize_structures(raw.ids, raw.structures, config.data.radius,
                                              config.data.max_num_nbr)
  skipped += bad
  if skipped:
    logging.warning("skipped %d input(s): %s", len(skipped),
                    "; ".join(f"{i} ({r})" for i, r in skipped[:10]))
  if len(graphs) == 0:
    raise InputError(structures, "no structure could be read and featurised "
                     f"({len(skipped)} skipped)")
  l_y = config.data.l_y
  by_id = dict(zip(raw.ids, raw.structures))
  systems = run_data.crystal_systems_if_needed(config, [by_id[i] for i in graphs.ids])
  part = batching.LabelledGraphs(graphs, np.zeros((len(graphs), l_y), np.float32),
                                       np.ones(len(graphs), np.float32), systems)
  budget = batching.make_budget(
      graphs.n_node, graphs.n_edge,
      run_data.per_device_batch_size(config.train.batch_size, jax.device_count()))
  loaded = restore_run(workdir, batching.assemble(part, np.arange(1), budget), scaler)
  y_scaled = loaded.trainer.predict(loaded.params, part, budget)
  grid = run_data.grid_of(config.data)
  n_atoms = graphs.n_node.astype(np.float64)
  y_phys = original_scale_for_prediction(config, scaler, y_scaled, n_atoms, grid)

  outdir = outdir or _new_output_dir(workdir, "predict")
  os.makedirs(outdir, exist_ok=True)
  if os.path.exists(os.path.join(outdir, "predictions.csv")):
    raise InputError(outdir, "already holds predictions.csv; choose another --outdir")
  columns: dict[str, np.ndarray] = {}
  if config.data.kind == "phonon" and y_phys is not None:
    columns["cv300_J_per_K_mol"] = physics.heat_capacity(grid, y_phys, 300.0)
    columns["mean_frequency_cm"] = physics.mean_frequency(grid, y_phys)
  elif config.data.kind == "electronic":
    columns["band_gap_eV"] = physics.band_gap(grid, y_phys if y_phys is not None else y_scaled)
  dos = y_phys if y_phys is not None else y_scaled
  ids = list(graphs.ids)
  with open(os.path.join(outdir, "predictions.csv"), "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["id", "n_atoms", *columns, *[f"dos@{g:g}" for g in grid]])
    for k, i in enumerate(ids):
      w.writerow([i, int(n_atoms[k]), *[f"{columns[c][k]:.6g}" for c in columns],
                  *[f"{v:.6g}" for v in dos[k]]])
  np.savez(os.path.join(outdir, "predictions.npz"), ids=np.asarray(ids), grid=grid,
           dos=dos, dos_normalized=y_scaled, n_atoms=n_atoms, **columns)
  show = min(len(ids), 12)
  plotting.plot_dos_grid(os.path.join(outdir, "predictions.png"), grid, dos[:show],
                         [os.path.basename(str(i)) for i in ids[:show]],
                         xlabel=_x_label(config))
  workdir_lib.write_json_atomic(os.path.join(outdir, "skipped.json"), [list(s) for s in skipped])
  return {"outdir": outdir, "ids": ids, "skipped": skipped,
          **{c: v.tolist() for c, v in columns.items()}}
