"""`Prediction`: what a model predicts for n structures, as the mean and spread of its
members, ready for `writers.write_outputs` or for use in Python."""
from __future__ import annotations

import dataclasses

import numpy as np

from xtal2dos_jax.physics.member_properties import AT_REPORT_T


@dataclasses.dataclass
class Prediction:
  """Predictions for n structures by K members, on `grid` (l_y points).

  dos_members float32[K, n, l_y]: each member's DoS, in physical units when
  `physical_units` (phonons: modes per grid unit per cell, ∫ = 3N; see
  `labels.original_scale_for_prediction`), else on the scaled label scale.
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
  relative_spread float64[n]: Σ_l std / Σ_l |mean| (`uncertainty.relative_spread`).
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
      for key in AT_REPORT_T:
        out[key], out[key + "_std"] = t[key], s[key]
      for key in ("mean_frequency_cm", "debye_temperature_nu2_K", "debye_temperature_moment_K"):
        out[key], out[key + "_std"] = t[key], s[key]
      return out
    return {f"{key}{suffix}": (s if suffix else t)[key]
            for key in ("band_gap_eV", "dos_at_fermi_level", "gamma_mJ_per_mol_K2")
            if key in t for suffix in ("", "_std")}
