"""The files a prediction leaves for a person to read: CSV, npz, PNGs, skipped.json.

`write_outputs` writes one `Prediction` into a directory that holds no predictions yet
(`check_output_dir`); `new_output_dir` makes a fresh predict-N, so earlier outputs are
never overwritten.
"""
from __future__ import annotations

import csv
import os
import re

import numpy as np
from absl import logging

from xtal2dos_jax.core import atomic_io
from xtal2dos_jax.core.errors import InputError
from xtal2dos_jax.evaluation import plotting
from xtal2dos_jax.inference.prediction import Prediction

# Per-structure PNGs written by `write_outputs` (the first this many structures).
MAX_STRUCTURE_PLOTS = 50
# Panels of the summary figure predictions.png.
SUMMARY_PANELS = 12


def new_output_dir(base: str, prefix: str = "predict") -> str:
  """A fresh directory base/prefix-N, so earlier outputs are never overwritten."""
  n = 1
  while os.path.exists(os.path.join(base, f"{prefix}-{n}")):
    n += 1
  path = os.path.join(base, f"{prefix}-{n}")
  os.makedirs(path)
  return path


def x_label(kind: str) -> str:
  return "frequency (cm$^{-1}$)" if kind == "phonon" else "energy (eV)"


def y_label(kind: str, physical_units: bool) -> str:
  if not physical_units:
    return "DoS (scaled)"
  return "DoS (modes / cm$^{-1}$ / cell)" if kind == "phonon" else "DoS"


def _file_stem(k: int, rid: str) -> str:
  """A file name for structure k: its index and its id's base name, safe characters only."""
  base = re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.basename(str(rid)))[:60].strip("._")
  return f"{k:04d}_{base or 'structure'}"


def check_output_dir(outdir: str) -> None:
  if os.path.exists(os.path.join(outdir, "predictions.csv")):
    raise InputError(outdir, "already holds predictions.csv; choose another --outdir")


def write_outputs(pred: Prediction, outdir: str, max_plots: int = MAX_STRUCTURE_PLOTS) -> str:
  """Writes `pred` to `outdir` (created; refused if it already holds predictions):

  - predictions.csv: one row per structure: id, formula, n_atoms, `Prediction.columns()`
    (each mean followed by its `_std` over members where there is one), flag, then the
    mean DoS at each grid point (`dos@<x>`);
  - predictions.npz: ids, formulas, n_atoms, grid, dos_mean, dos_std, dos_members,
    temperature_K, every entry of `thermodynamics` (mean) and `<key>_std`,
    relative_spread, flags, physical_units, std_scale_keys / std_scale_values (the
    factors the stds carry);
  - plots/<index>_<id>.png for the first `max_plots` structures (DoS with its ±2σ band,
    and C_v(T) with its band for phonons) and predictions.png, the first 12 DoS;
  - skipped.json: [[id, reason], ...].
  Returns `outdir`.
  """
  check_output_dir(outdir)
  os.makedirs(outdir, exist_ok=True)
  columns = pred.columns()
  with open(os.path.join(outdir, "predictions.csv"), "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["id", "formula", "n_atoms", *columns, "flag",
                *[f"dos@{g:g}" for g in pred.grid]])
    for k, rid in enumerate(pred.ids):
      w.writerow([rid, pred.formulas[k], int(pred.n_atoms[k]),
                  *[f"{columns[c][k]:.6g}" for c in columns], pred.flags[k],
                  *[f"{v:.6g}" for v in pred.dos_mean[k]]])
  arrays = {f"{key}_std": v for key, v in pred.thermodynamics_std.items()}
  atomic_io.write_npz_atomic(
      os.path.join(outdir, "predictions.npz"), ids=np.asarray(pred.ids, str),
      formulas=np.asarray(pred.formulas, str), n_atoms=pred.n_atoms, grid=pred.grid,
      dos_mean=pred.dos_mean, dos_std=pred.dos_std, dos_members=pred.dos_members,
      temperature_K=pred.temperatures, relative_spread=pred.relative_spread,
      flags=np.asarray(pred.flags, str), physical_units=np.asarray(pred.physical_units),
      std_scale_keys=np.asarray(list(pred.std_scale), str),
      std_scale_values=np.asarray(list(pred.std_scale.values()), np.float64),
      **pred.thermodynamics, **arrays)
  n_plots = min(len(pred.ids), max_plots)
  if n_plots:
    os.makedirs(os.path.join(outdir, "plots"), exist_ok=True)
  phonon = pred.kind == "phonon"
  ylabel = y_label(pred.kind, pred.physical_units)
  for k in range(n_plots):
    plotting.plot_prediction(
        os.path.join(outdir, "plots", _file_stem(k, pred.ids[k]) + ".png"), pred.grid,
        pred.dos_mean[k], pred.dos_std[k], f"{pred.ids[k]} ({pred.formulas[k]})",
        xlabel=x_label(pred.kind), ylabel=ylabel,
        temperatures=pred.temperatures if phonon else None,
        cv_mean=pred.thermodynamics["cv_J_per_K_mol"][k] if phonon else None,
        cv_std=pred.thermodynamics_std["cv_J_per_K_mol"][k] if phonon else None)
  if n_plots < len(pred.ids):
    logging.info("per-structure plots for the first %d of %d structures (the rest are in "
                 "predictions.csv / predictions.npz)", n_plots, len(pred.ids))
  show = min(len(pred.ids), SUMMARY_PANELS)
  plotting.plot_dos_grid(os.path.join(outdir, "predictions.png"), pred.grid,
                         pred.dos_mean[:show],
                         [os.path.basename(str(i)) for i in pred.ids[:show]],
                         xlabel=x_label(pred.kind), ylabel=ylabel, y_std=pred.dos_std[:show])
  atomic_io.write_json_atomic(os.path.join(outdir, "skipped.json"),
                                [list(s) for s in pred.skipped])
  return outdir
