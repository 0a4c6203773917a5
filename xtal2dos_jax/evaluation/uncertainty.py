"""The error bars of an ensemble's predictions: the spread, its scale factors, coverage.

An ensemble's members give each predicted quantity (every DoS point and every quantity of
`member_properties.derived_members`) a mean and a spread. `fit_std_scales` fits, on
labelled crystals (the validation split), the factor each reported std is multiplied by so
that mean +- 1 std covers ~68 % of true values; `std_coverage` measures the coverage those
factors reach on other crystals (the test split); `relative_spread` is the scale-free
spread of each crystal's DoS that flags "high_spread" predictions.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from xtal2dos_jax.evaluation import calibration
from xtal2dos_jax.physics.member_properties import CURVES, derived_members, REPORT_TEMPERATURE_K


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
    if key in CURVES:
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


def relative_spread(members: np.ndarray) -> np.ndarray:
  """Ensemble spread of each crystal: Σ_l std_k / Σ_l |mean_k|, float64[n] from
  members float[K, n, l_y] (0 for K = 1). Scale-free, so the scaled and the physical
  DoS give the same value."""
  m = np.asarray(members, np.float64)
  den = np.abs(m.mean(0)).sum(-1)
  return np.where(den > 0, m.std(0).sum(-1) / np.where(den > 0, den, 1.0), 0.0)
