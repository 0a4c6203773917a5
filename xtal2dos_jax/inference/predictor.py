"""Predict the DoS of new crystals, with an error bar when the model is an ensemble.

    from xtal2dos_jax import Predictor
    p = Predictor.pretrained()              # or Predictor("runs/phdos"), a training workdir
    pred = p.predict(atoms_list)            # ase.Atoms / pymatgen Structure.as_dict() dicts
    pred.dos_mean, pred.dos_std             # float[n, l_y] on pred.grid
    pred.thermodynamics["cv300_J_per_K_mol"], pred.thermodynamics_std["cv300_J_per_K_mol"]

A `Predictor` wraps one trained model: a training workdir (its best checkpoint, through
`restore.restore_run` / `restore.predict_members`) or an exported model
(`pretrained.load_exported`, which reads the export alone). Either way it yields the
members' predictions float32[K, n, l_y] (K = 1 for a single model); everything reported
is derived from each member and summarised as the mean and the standard deviation over
members (numpy's std, ddof 0: 0 for K = 1).

`writers.write_outputs` writes what a person reads (predictions.csv, predictions.npz, a
PNG per structure, predictions.png); `predict_to_dir` is the predict binary's path and
`predict_structures` its workdir form.
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import ase
import jax
import numpy as np
from absl import logging

from xtal2dos_jax.core.errors import InputError
from xtal2dos_jax.evaluation import uncertainty
from xtal2dos_jax.inference import pretrained, writers
from xtal2dos_jax.inference.prediction import Prediction
from xtal2dos_jax.input_pipeline import batching, graph_cache, labels, readers, run_data
from xtal2dos_jax.input_pipeline import structures as structures_lib
from xtal2dos_jax.physics import thermodynamics
from xtal2dos_jax.physics.member_properties import derived_members
from xtal2dos_jax.training import restore
from xtal2dos_jax.training import workdir as workdir_lib


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


def _mean_std(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean and std (ddof 0) over the leading member axis."""
  return values.mean(0), values.std(0)


class Predictor:
  """One trained model (workdir or export) that predicts DoS and derived properties."""

  def __init__(self, workdir: str | None = None, *,
               exported: pretrained.ExportedModel | None = None):
    """`Predictor(workdir)`: a training workdir's best checkpoint. Exported models:
    `Predictor.pretrained(name)` or `Predictor.from_exported(path)`."""
    if (workdir is None) == (exported is None):
      raise InputError("Predictor", "give a training workdir or an exported model, not both")
    self.workdir, self.exported = workdir, exported
    self._runs: dict[batching.Budget, restore.LoadedRun] = {}
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
      self._runs[budget] = restore.restore_run(self.workdir, self.config, self.scaler, budget)
    return np.asarray(restore.predict_members(self._runs[budget], part, budget))

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
    (`readers.read_structure_folder`; ids are the file paths)."""
    raw = readers.read_structure_folder(pattern, validate=False)
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
    physical = [labels.original_scale_for_prediction(self.config, self.scaler, m,
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
    spread = uncertainty.relative_spread(dos)
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


def predict_to_dir(predictor: Predictor, structures: str, outdir: str | None = None,
                   temperatures: Any = thermodynamics.DEFAULT_TEMPERATURES_K,
                   max_plots: int = writers.MAX_STRUCTURE_PLOTS) -> dict[str, Any]:
  """What the predict binary does: predicts the files matching `structures` and writes
  the outputs (`writers.write_outputs`) to `outdir`, default a new predict-N under the workdir
  (a workdir model) or the current directory (an exported model). Returns a summary:
  outdir, ids, skipped, the CSV's per-structure columns as lists, and the Prediction."""
  if outdir:
    writers.check_output_dir(outdir)
  pred = predictor.predict_files(structures, temperatures)
  outdir = outdir or writers.new_output_dir(predictor.workdir or os.getcwd())
  writers.write_outputs(pred, outdir, max_plots)
  return {"outdir": outdir, "ids": pred.ids, "skipped": pred.skipped, "prediction": pred,
          **{c: v.tolist() for c, v in pred.columns().items()}}


def predict_structures(workdir: str, structures: str, outdir: str | None = None,
                       temperatures: Any = thermodynamics.DEFAULT_TEMPERATURES_K
                       ) -> dict[str, Any]:
  """Predicts every readable structure matching `structures` with the run in `workdir`
  and writes the outputs (`predict_to_dir`; default outdir workdir/predict-N). Reads
  only the given structures and the workdir."""
  return predict_to_dir(Predictor(workdir), structures, outdir, temperatures)