"""Predict the DoS of new crystals, with an error bar when the model is an ensemble.

    from xtal2dos_jax import Predictor
    p = Predictor.pretrained()              # or Predictor("runs/phdos"), a training workdir
    pred = p.predict(atoms_list)            # ase.Atoms / pymatgen Structure.as_dict() dicts
    pred.dos_mean, pred.dos_std             # float[n, l_y] on pred.grid
    pred.thermodynamics["cv300_J_per_K_mol"], pred.thermodynamics_std["cv300_J_per_K_mol"]

A `Predictor` wraps one trained model: a training workdir (its best checkpoint, through
`inference.restore_run` / `inference.predict_members`) or an exported model
(`pretrained.load_exported`, which reads the export alone). Either way it yields the
members' predictions float32[K, n, l_y] (K = 1 for a single model); everything reported
is derived from each member and summarised as the mean and the standard deviation over
members (numpy's std, ddof 0: 0 for K = 1).

`write_outputs` writes what a person reads (predictions.csv, predictions.npz, a PNG per
structure, predictions.png); `predict_to_dir` is the predict binary's path and
`predict_structures` its workdir form.
"""
from __future__ import annotations

import csv
import dataclasses
import os
import re
from typing import Any, Mapping, Sequence

import ase
import jax
import numpy as np
from absl import logging

from xtal2dos_jax import (batching, calibration, datasets, graph_cache, inference, physics,
                          plotting, pretrained, run_data, thermodynamics)
from xtal2dos_jax import structures as structures_lib
from xtal2dos_jax import workdir as workdir_lib
from xtal2dos_jax.errors import InputError

# Per-structure PNGs written by `write_outputs` (the first this many structures).
MAX_STRUCTURE_PLOTS = 50
# Panels of the summary figure predictions.png.
SUMMARY_PANELS = 12
# The temperature of the CSV's single-temperature columns (C_v, S, F), K.
REPORT_TEMPERATURE_K = 300.0
# Thermodynamic curves over temperature (the rest are one value per structure).
_CURVES = ("cv_J_per_K_mol", "s_J_per_K_mol", "f_kJ_per_mol", "u_kJ_per_mol",
           "cv_J_per_K_mol_atom", "s_J_per_K_mol_atom", "f_kJ_per_mol_atom",
           "u_kJ_per_mol_atom")
# CSV name of the value at REPORT_TEMPERATURE_K -> its curve.
_AT_REPORT_T = {"cv300_J_per_K_mol": "cv_J_per_K_mol", "s300_J_per_K_mol": "s_J_per_K_mol",
                "f300_kJ_per_mol": "f_kJ_per_mol"}


def parse_temperatures(text: str) -> np.ndarray:
  """'start:stop:step' in K -> float64[n_T] from start to stop inclusive (e.g. 0:1000:10
  is 0, 10, ..., 1000 K)."""
  try:
    start, stop, step = (float(v) for v in str(text).split(":"))
  except ValueError:
    raise InputError("--temperatures", f"{text!r} is not start:stop:step in K "
                     "(e.g. 0:1000:10)") from None
  if not (step > 0 and stop >= start >= 0 and np.isfinite(stop)):
    raise InputError("--temperatures", f"{text!r}: need 0 <= start <= stop and step > 0")
  n = int(np.floor((stop - start) / step + 1e-9)) + 1
  if n > 100_000:
    raise InputError("--temperatures", f"{text!r} gives {n} temperatures (at most 100000)")
  return start + step * np.arange(n, dtype=np.float64)


@dataclasses.dataclass
class Prediction:
  """Predictions for n structures by K members, on `grid` (l_y points).

  dos_members float32[K, n, l_y]: each member's DoS, in physical units when
  `physical_units` (phonons: modes per grid unit per cell, ∫ = 3N; see
  `inference.original_scale_for_prediction`), else on the scaled label scale.
  dos_mean / dos_std float32[n, l_y]: mean and standard deviation over members, the std
  multiplied by std_scale["dos"].
  temperatures float64[n_T] (K). thermodynamics / thermodynamics_std: the mean and the
  std over members of each derived quantity, per structure, each std multiplied by
  std_scale[key] where there is one. Phonons: the curves of
  `thermodynamics.phonon_thermodynamics` ([n, n_T] over `temperatures`: cv_J_per_K_mol,
  s_J_per_K_mol, f_kJ_per_mol, u_kJ_per_mol per mole of cells and their `_atom` forms),
  [n] values (zpe_kJ_per_mol(_atom), mean_frequency_cm, log_mean_frequency_cm,
  debye_temperature_nu2_K, debye_temperature_moment_K) and the 300 K values
  cv300_J_per_K_mol, s300_J_per_K_mol, f300_kJ_per_mol. Electrons
  (`thermodynamics.electronic_properties`, E_F / VBM at 0 eV): band_gap_eV and
  dos_at_fermi_level [n] (states / eV / cell when physical_units, else on the scaled
  label scale), and gamma_mJ_per_mol_K2 [n] (metals; only when physical_units).
  relative_spread float64[n]: Σ_l std / Σ_l |mean| (`pretrained.relative_spread`).
  flags: per structure, ";"-joined "unseen_elements:X,Y" (elements absent from the
  training data, when the model recorded them) and "high_spread" (relative_spread above
  the model's threshold, when it has one); "" otherwise.
  skipped: (id, reason) of every input that could not be predicted.
  std_scale: the factors the stds carry (`fit_std_scales`, fitted on the validation split
  when the model was exported; empty, so the raw spread, for a workdir or a single model).
  The raw spread is dos_members' std.
  """
  ids: list[str]
  formulas: list[str]
  n_atoms: np.ndarray
  grid: np.ndarray
  kind: str
  physical_units: bool
  dos_members: np.ndarray
  dos_mean: np.ndarray
  dos_std: np.ndarray
  temperatures: np.ndarray
  thermodynamics: dict[str, np.ndarray]
  thermodynamics_std: dict[str, np.ndarray]
  relative_spread: np.ndarray
  flags: list[str]
  skipped: list[tuple[str, str]]
  std_scale: dict[str, float] = dataclasses.field(default_factory=dict)

  @property
  def num_members(self) -> int:
    return int(self.dos_members.shape[0])

  def columns(self) -> dict[str, np.ndarray]:
    """The per-structure numbers of predictions.csv, in its column order: float[n] each."""
    t, s = self.thermodynamics, self.thermodynamics_std
    if self.kind == "phonon":
      out = {}
      for key in _AT_REPORT_T:
        out[key], out[key + "_std"] = t[key], s[key]
      for key in ("mean_frequency_cm", "debye_temperature_nu2_K", "debye_temperature_moment_K"):
        out[key], out[key + "_std"] = t[key], s[key]
      return out
    return {f"{key}{suffix}": (s if suffix else t)[key]
            for key in ("band_gap_eV", "dos_at_fermi_level", "gamma_mJ_per_mol_K2")
            if key in t for suffix in ("", "_std")}


def _mean_std(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean and std (ddof 0) over the leading member axis."""
  return values.mean(0), values.std(0)


def derived_members(kind: str, grid: np.ndarray, dos_members: np.ndarray, n_atoms: np.ndarray,
                    temperatures: np.ndarray, absolute: bool = True) -> dict[str, np.ndarray]:
  """What `Prediction.thermodynamics` reports, for each member: float[K, n, n_T] curves over
  `temperatures` (K) and float[K, n] values, from DoS members float[K, n, l_y] (phonons:
  in modes per grid unit per cell; electrons: states per eV per cell when `absolute`,
  else any scale, and then no Sommerfeld coefficient)."""
  if kind != "phonon":
    each = [thermodynamics.electronic_properties(grid, m) for m in dos_members]
    keys = ("band_gap_eV", "dos_at_fermi_level") + (("gamma_mJ_per_mol_K2",) if absolute
                                                    else ())
    return {key: np.stack([e[key] for e in each]) for key in keys}
  t_all = np.union1d(temperatures, [REPORT_TEMPERATURE_K])
  curve_at = np.searchsorted(t_all, temperatures)
  report_at = int(np.searchsorted(t_all, REPORT_TEMPERATURE_K))
  with np.errstate(invalid="ignore", divide="ignore"):
    per_member = thermodynamics.phonon_thermodynamics(grid, dos_members, n_atoms, t_all)
  out = {key: v[..., curve_at] if key in _CURVES else v
         for key, v in per_member.items() if key != "temperature_K"}
  for key, curve in _AT_REPORT_T.items():
    out[key] = per_member[curve][..., report_at]
  return out


def _labelled_values(kind: str, grid: np.ndarray, dos_true: np.ndarray,
                     dos_members: np.ndarray, n_atoms: np.ndarray, absolute: bool):
  """(name, truth float[m], members float[K, m]) for the DoS points ("dos", all of them)
  and each `derived_members` quantity (a curve by its value at REPORT_TEMPERATURE_K), over
  the crystals where truth and members are finite."""
  m = np.asarray(dos_members, np.float64)
  yield "dos", np.asarray(dos_true, np.float64).ravel(), m.reshape(len(m), -1)
  at = np.asarray([REPORT_TEMPERATURE_K])
  truth = derived_members(kind, grid, np.asarray(dos_true)[None], n_atoms, at, absolute)
  for key, v in derived_members(kind, grid, m, n_atoms, at, absolute).items():
    t = truth[key][0]
    if key in _CURVES:
      t, v = t[..., 0], v[..., 0]
    ok = np.isfinite(t) & np.all(np.isfinite(v), 0)
    yield key, t[ok], v[:, ok]


def fit_std_scales(kind: str, grid: np.ndarray, dos_true: np.ndarray, dos_members: np.ndarray,
                   n_atoms: np.ndarray, absolute: bool = True) -> dict[str, float]:
  """The factor each reported std is multiplied by, fitted on labelled crystals (the
  validation split): `calibration.recalibration_factor` of the DoS points ("dos") and of
  every `derived_members` quantity (`_labelled_values`). dos_true float[n, l_y] and
  dos_members float[K, n, l_y] on the same scale (`absolute`: in physical units, as for
  `derived_members`). Quantities whose members never disagree (no factor) are left out."""
  scales = {key: calibration.recalibration_factor(t, v.mean(0), v.std(0))
            for key, t, v in _labelled_values(kind, grid, dos_true, dos_members, n_atoms,
                                              absolute)}
  return {k: float(v) for k, v in scales.items() if np.isfinite(v)}


def std_coverage(kind: str, grid: np.ndarray, dos_true: np.ndarray, dos_members: np.ndarray,
                 n_atoms: np.ndarray, std_scale: Mapping[str, float], absolute: bool = True
                 ) -> dict[str, dict[str, float]]:
  """Per quantity of `_labelled_values`: the fraction of true values inside the reported
  mean +- 1 and +- 2 std (std x std_scale[key], 1 where absent), on labelled crystals
  other than those the scales were fitted on (the test split), and for the per-crystal
  quantities the Spearman correlation of the spread with the error."""
  out = {}
  for key, t, v in _labelled_values(kind, grid, dos_true, dos_members, n_atoms, absolute):
    std = v.std(0) * std_scale.get(key, 1.0)
    out[key] = {f"coverage_{k}sigma": calibration.coverage(t, v.mean(0), std, k)
                for k in (1, 2)}
    if key != "dos":
      out[key]["spread_error_correlation"] = calibration.spearman(std, np.abs(t - v.mean(0)))
  return out


def _new_output_dir(base: str, prefix: str = "predict") -> str:
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


class Predictor:
  """One trained model (workdir or export) that predicts DoS and derived properties."""

  def __init__(self, workdir: str | None = None, *,
               exported: pretrained.ExportedModel | None = None):
    """`Predictor(workdir)`: a training workdir's best checkpoint. Exported models:
    `Predictor.pretrained(name)` or `Predictor.from_exported(path)`."""
    if (workdir is None) == (exported is None):
      raise InputError("Predictor", "give a training workdir or an exported model, not both")
    self.workdir, self.exported = workdir, exported
    self._runs: dict[batching.Budget, inference.LoadedRun] = {}
    if exported is not None:
      self.config, self.scaler, self.grid = exported.config, exported.scaler, exported.grid
      self.train_budget: batching.Budget | None = exported.budget
      self.training_elements = exported.training_elements
      self.spread_threshold = exported.spread_threshold
      self.std_scale: dict[str, float] = dict(exported.std_scale)
      return
    run = workdir_lib.Workdir(workdir)
    self.config = workdir_lib.load_config(workdir)
    self.scaler = run.load_scaler()
    if self.scaler is None:
      raise InputError(workdir, "has no saved label statistics; the run never started")
    setup = run.load_setup()
    if setup is None:
      logging.info("%s has no setup.json (trained before it was kept): DoS grid from its "
                   "config", workdir)
    self.grid = run_data.grid_of(self.config.data) if setup is None else setup.grid
    self.train_budget = None if setup is None else setup.budget
    # The workdir keeps the training crystals' ids, not their structures: no element check.
    self.training_elements: list[str] | None = None
    self.spread_threshold: float | None = None
    self.std_scale: dict[str, float] = {}  # raw spread: a workdir has no fitted scales

  @classmethod
  def pretrained(cls, name: str | None = None, dir: str | None = None) -> "Predictor":
    """A model exported into `dir` (default: $XTAL2DOS_PRETRAINED_DIR, else the package's
    `pretrained/`), by name (default `pretrained.DEFAULT`)."""
    return cls(exported=pretrained.load_exported(pretrained.model_path(name, dir)))

  @classmethod
  def from_exported(cls, path: str) -> "Predictor":
    """The exported model in directory `path`."""
    return cls(exported=pretrained.load_exported(path))

  @staticmethod
  def available(dir: str | None = None) -> list[str]:
    """Names of the exported models `pretrained` can load."""
    return pretrained.available(dir)

  @property
  def kind(self) -> str:
    return str(self.config.data.kind)

  @property
  def source(self) -> str:
    return self.workdir if self.exported is None else self.exported.path

  # ---------------------------------------------------------------- members

  def budget_for(self, graphs: graph_cache.GraphSet) -> batching.Budget:
    """Padding budget for these crystals (a new crystal may be larger than any training
    one), at least the training run's, so calls on small inputs share one compiled step."""
    devices = jax.device_count() if self.exported is None else 1
    b = batching.make_budget(graphs.n_node, graphs.n_edge,
                             run_data.per_device_batch_size(self.config.train.batch_size,
                                                            devices))
    if self.train_budget is None:
      return b
    return batching.Budget(*(max(x, y) for x, y in zip(b, self.train_budget)))

  def predict_members(self, part: batching.LabelledGraphs, budget: batching.Budget
                      ) -> np.ndarray:
    """Scaled predictions of every member, float32[K, n, l_y]. A workdir's restored run
    is kept per budget, so repeated calls do not restore or compile again."""
    if self.exported is not None:
      return self.exported.predict_members(part, budget)
    if budget not in self._runs:
      self._runs[budget] = inference.restore_run(self.workdir, self.config, self.scaler, budget)
    return np.asarray(inference.predict_members(self._runs[budget], part, budget))

  # ---------------------------------------------------------------- predict

  def predict(self, structures: Any, ids: Sequence[str] | None = None,
              temperatures: Any = thermodynamics.DEFAULT_TEMPERATURES_K) -> Prediction:
    """Predicts `structures`: an ase.Atoms, a structure dict (pymatgen
    `Structure.as_dict()` or an ASE Atoms dict), or a list of them. `ids` (default
    "0", "1", ...) name them in the outputs. Inputs that cannot be used are skipped and
    reported in `Prediction.skipped`; the rest are predicted. `temperatures` (K) are
    those of the thermodynamic curves."""
    if isinstance(structures, (ase.Atoms, Mapping)):
      structures = [structures]
    structures = list(structures)
    if ids is None:
      ids = [str(k) for k in range(len(structures))]
    ids = [str(i) for i in ids]
    if len(ids) != len(structures):
      raise InputError("ids", f"{len(ids)} ids for {len(structures)} structures")
    if len(set(ids)) != len(ids):
      raise InputError("ids", "are not unique")
    good_ids, atoms_list, skipped = [], [], []
    for rid, s in zip(ids, structures):
      try:
        atoms_list.append(structures_lib.atoms_from_dict(s, rid))
        good_ids.append(rid)
      except InputError as e:
        skipped.append((rid, e.reason))
    return self._predict(good_ids, atoms_list, skipped, temperatures, "structures")

  def predict_files(self, pattern: str,
                    temperatures: Any = thermodynamics.DEFAULT_TEMPERATURES_K) -> Prediction:
    """Predicts every structure in the files matching a glob pattern or in a folder
    (`datasets.read_structure_folder`; ids are the file paths)."""
    raw = datasets.read_structure_folder(pattern, validate=False)
    return self._predict(list(raw.ids), list(raw.structures), list(raw.skipped),
                         temperatures, pattern)

  def _predict(self, ids: list[str], atoms_list: list[ase.Atoms],
               skipped: list[tuple[str, str]], temperatures: Any, what: str) -> Prediction:
    temperatures = np.atleast_1d(thermodynamics._temperatures(temperatures)).astype(np.float64)
    usable_ids, usable = [], []
    for rid, atoms in zip(ids, atoms_list):
      try:
        structures_lib.validate_atoms(atoms, rid, check_overlap=False)
        usable_ids.append(rid)
        usable.append(atoms)
      except InputError as e:
        skipped.append((rid, e.reason))
    d = self.config.data
    graphs, bad = graph_cache.featurize_structures(usable_ids, usable, d.radius, d.max_num_nbr)
    skipped = list(skipped) + list(bad)
    if skipped:
      logging.warning("skipped %d input(s): %s", len(skipped),
                      "; ".join(f"{i} ({r})" for i, r in skipped[:10]))
    if len(graphs) == 0:
      raise InputError(what, f"no structure could be read and featurised ({len(skipped)} "
                       "skipped" + (f"; first: {skipped[0][0]}: {skipped[0][1]})"
                                    if skipped else ")"))
    by_id = dict(zip(usable_ids, usable))
    kept = [by_id[i] for i in graphs.ids]
    systems = run_data.crystal_systems_if_needed(self.config, kept, graphs.ids)
    part = batching.LabelledGraphs(graphs, np.zeros((len(graphs), d.l_y), np.float32),
                                   np.ones(len(graphs), np.float32), systems)
    members = self.predict_members(part, self.budget_for(graphs))
    if members.ndim != 3 or members.shape[1:] != (len(graphs), d.l_y):
      raise InputError(self.source, f"member predictions have shape {members.shape}, "
                       f"expected [K, {len(graphs)}, {d.l_y}]")
    n_atoms = graphs.n_node.astype(np.int64)
    physical = [inference.original_scale_for_prediction(self.config, self.scaler, m,
                                                        n_atoms.astype(np.float64), self.grid)
                for m in members]
    is_physical = all(p is not None for p in physical)
    dos = np.stack(physical).astype(np.float32) if is_physical else members
    grid = np.asarray(self.grid)
    mean, std = {}, {}
    for key, v in derived_members(self.kind, grid, dos, n_atoms, temperatures,
                                  absolute=is_physical).items():
      mean[key], std[key] = _mean_std(v)
      std[key] = std[key] * self.std_scale.get(key, 1.0)
    spread = pretrained.relative_spread(dos)
    flags = []
    for k, atoms in enumerate(kept):
      f = []
      if self.training_elements is not None:
        unseen = sorted(set(atoms.get_chemical_symbols()) - set(self.training_elements))
        if unseen:
          f.append("unseen_elements:" + ",".join(unseen))
      if self.spread_threshold is not None and spread[k] > self.spread_threshold:
        f.append("high_spread")
      flags.append(";".join(f))
    return Prediction(
        ids=list(graphs.ids), formulas=[a.get_chemical_formula() for a in kept],
        n_atoms=n_atoms, grid=grid, kind=self.kind, physical_units=is_physical,
        dos_members=dos, dos_mean=dos.mean(0),
        dos_std=dos.std(0) * self.std_scale.get("dos", 1.0), temperatures=temperatures,
        thermodynamics=mean, thermodynamics_std=std, relative_spread=spread, flags=flags,
        skipped=skipped, std_scale=dict(self.std_scale))


# ---------------------------------------------------------------- outputs

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
  workdir_lib.write_npz_atomic(
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
  workdir_lib.write_json_atomic(os.path.join(outdir, "skipped.json"),
                                [list(s) for s in pred.skipped])
  return outdir


def predict_to_dir(predictor: Predictor, structures: str, outdir: str | None = None,
                   temperatures: Any = thermodynamics.DEFAULT_TEMPERATURES_K,
                   max_plots: int = MAX_STRUCTURE_PLOTS) -> dict[str, Any]:
  """What the predict binary does: predicts the files matching `structures` and writes
  the outputs (`write_outputs`) to `outdir`, default a new predict-N under the workdir
  (a workdir model) or the current directory (an exported model). Returns a summary:
  outdir, ids, skipped, the CSV's per-structure columns as lists, and the Prediction."""
  if outdir:
    check_output_dir(outdir)
  pred = predictor.predict_files(structures, temperatures)
  outdir = outdir or _new_output_dir(predictor.workdir or os.getcwd())
  write_outputs(pred, outdir, max_plots)
  return {"outdir": outdir, "ids": pred.ids, "skipped": pred.skipped, "prediction": pred,
          **{c: v.tolist() for c, v in pred.columns().items()}}


def predict_structures(workdir: str, structures: str, outdir: str | None = None,
                       temperatures: Any = thermodynamics.DEFAULT_TEMPERATURES_K
                       ) -> dict[str, Any]:
  """Predicts every readable structure matching `structures` with the run in `workdir`
  and writes the outputs (`predict_to_dir`; default outdir workdir/predict-N). Reads
  only the given structures and the workdir."""
  return predict_to_dir(Predictor(workdir), structures, outdir, temperatures)
