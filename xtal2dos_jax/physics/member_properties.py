"""The physics derived from each ensemble member's DoS, for prediction and calibration.

`derived_members` turns members' DoS float[K, n, l_y] into the thermodynamics a
prediction reports per member (phonons: C_v, S, F, U over temperature and their 300 K
values, the zero-point energy, mean frequencies, Debye temperatures; electrons: band gap,
DoS at the Fermi level, Sommerfeld coefficient), so that the mean and the spread over
members can be reported for each.
"""
from __future__ import annotations

import numpy as np

from xtal2dos_jax.physics import thermodynamics

# The temperature of the CSV's single-temperature columns (C_v, S, F), K.
REPORT_TEMPERATURE_K = 300.0
# Thermodynamic curves over temperature (the rest are one value per structure).
CURVES = ("cv_J_per_K_mol", "s_J_per_K_mol", "f_kJ_per_mol", "u_kJ_per_mol",
           "cv_J_per_K_mol_atom", "s_J_per_K_mol_atom", "f_kJ_per_mol_atom",
           "u_kJ_per_mol_atom")

# CSV name of the value at REPORT_TEMPERATURE_K -> its curve.
AT_REPORT_T = {"cv300_J_per_K_mol": "cv_J_per_K_mol", "s300_J_per_K_mol": "s_J_per_K_mol",
                "f300_kJ_per_mol": "f_kJ_per_mol"}


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
  out = {key: v[..., curve_at] if key in CURVES else v
         for key, v in per_member.items() if key != "temperature_K"}
  for key, curve in AT_REPORT_T.items():
    out[key] = per_member[curve][..., report_at]
  return out
