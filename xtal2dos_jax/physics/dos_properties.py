"""Physics derived from a (predicted) DoS. Host-side numpy post-processing.

- phonon DoS -> harmonic heat capacity C_v(T) and mean phonon frequency;
- electronic DoS -> band-gap estimate (width of the low-DoS window at 0 eV);
- evaluation: errors of these properties between predicted and true DoS
  (`derived_property_errors`, phonon DoS rescaled to 3N modes per cell first, C_v per
  mole of atoms) and `physics_table` to print them.

All functions are vectorised over a batch of DoS on a shared grid, dos float[..., l].
Grids must be ascending. Integrals use the trapezoid rule on the given grid.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from xtal2dos_jax.core.errors import InputError

# CODATA 2018 exact SI values.
_H = 6.62607015e-34        # J s
_C_CM = 2.99792458e10      # speed of light, cm/s
_K_B = 1.380649e-23        # J/K
_N_A = 6.02214076e23       # 1/mol
R_GAS = _N_A * _K_B        # J/(K mol), 8.314462618...
# Second radiation constant h c / k_B in cm K: x = HC_OVER_KB * omega[cm^-1] / T[K].
HC_OVER_KB = _H * _C_CM / _K_B  # 1.438776877... cm K


def as_grid(x: Any, name: str) -> np.ndarray:
  """`x` as a float64 1-d strictly ascending grid (>= 2 points), else InputError naming it."""
  x = np.asarray(x, np.float64)
  if x.ndim != 1 or x.size < 2:
    raise InputError(name, f"grid must be 1-d with >= 2 points, got shape {x.shape}")
  if np.any(np.diff(x) <= 0):
    raise InputError(name, "grid must be strictly ascending")
  return x


def as_dos(dos: Any, grid: np.ndarray, name: str = "dos") -> np.ndarray:
  """`dos` as float64 [..., len(grid)], else InputError naming it."""
  dos = np.asarray(dos, np.float64)
  if dos.ndim == 0 or dos.shape[-1] != grid.shape[0]:
    raise InputError(name, f"last axis {dos.shape[-1:] or ()} != grid length {grid.shape[0]}")
  return dos


def einstein_function(x: Any) -> np.ndarray:
  """x^2 e^x / (e^x - 1)^2, the heat capacity of one mode in units of k_B.

  Written as (x e^{-x/2} / (1 - e^{-x}))^2 so it never overflows; even in x; the x -> 0
  limit is 1 (classical equipartition), returned exactly at x = 0 without NaN.
  """
  x = np.abs(np.asarray(x, np.float64))
  small = x < 1e-4
  xs = np.where(small, 1.0, x)  # keep the unused branch finite
  big = xs * np.exp(-0.5 * xs) / (-np.expm1(-xs))
  return np.where(small, 1.0 - x * x / 12.0, big * big)


def _trapezoid(y: np.ndarray, x: np.ndarray) -> np.ndarray:
  return np.trapezoid(y, x, axis=-1)


def heat_capacity(freq_cm: Any,
                  dos: Any,
                  temperature_K: Any,
                  n_modes: Optional[Any] = None) -> np.ndarray:
  """Harmonic constant-volume heat capacity per cell, J/K per mole of cells.

  C_v(T) = N_A k_B ∫ g(ω) f(hcω / k_B T) dω,  f(x) = x^2 e^x / (e^x - 1)^2,
  with ω in cm^-1 and g in states per cm^-1 per cell (∫ g dω = 3N for N atoms), by the
  trapezoid rule on the given grid. ω = 0 uses the limit f -> 1; T = 0 gives 0. Modes
  off the grid (e.g. imaginary ones) are simply absent.

  Args:
    freq_cm: float[l] ascending frequency grid in cm^-1.
    dos: float[..., l] DoS on that grid.
    temperature_K: scalar or float[n_T] temperatures in K (>= 0).
    n_modes: optional 3N (scalar or float[...]): rescale each g to integrate to this
      first. Useful for a predicted/coarse DoS whose total is not exactly 3N (e.g. a
      `normalized_sum` prediction), at the cost of ignoring the DoS's own norm.

  Returns:
    float64[...] for a scalar temperature, else float64[..., n_T].
  """
  freq = as_grid(freq_cm, "freq_cm")
  g = as_dos(dos, freq)
  t = np.asarray(temperature_K, np.float64)
  if t.ndim > 1:
    raise InputError("temperature_K", f"expected a scalar or 1-d array, got shape {t.shape}")
  if np.any(~np.isfinite(t)) or np.any(t < 0):
    raise InputError("temperature_K", "temperatures must be finite and >= 0 K")
  if n_modes is not None:
    total = _trapezoid(g, freq)
    g = g * (np.asarray(n_modes, np.float64) / np.where(total != 0, total, 1.0))[..., None]
  t1 = np.atleast_1d(t)
  positive = t1 > 0
  with np.errstate(divide="ignore"):
    x = HC_OVER_KB * freq[None, :] / np.where(positive, t1, 1.0)[:, None]  # [n_T, l]
  f = np.where(positive[:, None], einstein_function(x), 0.0)
  # [..., 1, l] * [n_T, l] -> [..., n_T, l] -> integrate over l.
  cv = R_GAS * _trapezoid(g[..., None, :] * f, freq)
  return cv[..., 0] if t.ndim == 0 else cv


def mean_frequency(freq_cm: Any, dos: Any) -> np.ndarray:
  """Mean phonon frequency ∫ ω g dω / ∫ g dω in cm^-1, float[..., l] -> float64[...].

  NaN for a DoS that integrates to 0.
  """
  freq = as_grid(freq_cm, "freq_cm")
  g = as_dos(dos, freq)
  num = _trapezoid(g * freq, freq)
  den = _trapezoid(g, freq)
  return np.divide(num, den, out=np.full(np.shape(num), np.nan), where=den != 0)


def band_gap(energies_ev: Any,
             dos: Any,
             threshold: Optional[Any] = None,
             rel_threshold: float = 0.01,
             onset_window_ev: float = 0.6) -> np.ndarray:
  """Band-gap estimate in eV: width of the low-DoS window at 0 eV.

  The energy reference (0 eV) is the highest occupied level: the valence-band maximum
  of an insulator or the Fermi level of a metal. A bin is "empty" when dos <= threshold.
  The gap window is the contiguous run of empty bins that contains the first empty bin
  at E >= 0, provided that bin lies within `onset_window_ev` of 0 (with a broadened DoS
  referenced to the VBM the valence edge spills over 0 eV, so the run starts a little
  above 0; if 0 eV itself lies in the gap, as with a mid-gap reference, the run extends
  below 0 too). Its edges are located by linear interpolation of the DoS at the
  threshold crossing, so the width is not quantised to the bin size. No empty bin within
  the window (DoS at E_F, a metal) gives 0. A run reaching the grid end is cut there
  (a lower bound).

  A smeared DoS narrows the window relative to the true gap (by roughly the smearing
  tail on each side at the threshold level). On the shipped eDoS sample (0.12 eV
  Gaussian smearing, 164 crystals) the defaults give gaps a median 0.49 eV below the
  label gaps (correlation 0.95 for label gaps of 0.5-3.9 eV) and 0 for all 4 metals;
  a higher `rel_threshold` reduces the bias but lets noise or in-gap tails count as a
  gap.

  Args:
    energies_ev: float[l] ascending bin energies in eV.
    dos: float[..., l] DoS on that grid.
    threshold: absolute threshold (scalar or float[...] per DoS), in DoS units. Default:
      `rel_threshold` x max(dos) of each DoS.
    rel_threshold: fraction of the DoS maximum used when `threshold` is None.
    onset_window_ev: the window must start at most this far above 0 eV.

  Returns:
    float64[...] gap in eV (>= 0).
  """
  e = as_grid(energies_ev, "energies_ev")
  d = as_dos(dos, e)
  if threshold is None:
    thr = rel_threshold * np.max(d, axis=-1)
  else:
    thr = np.broadcast_to(np.asarray(threshold, np.float64), d.shape[:-1])
  thr = np.asarray(thr)[..., None]  # [..., 1]
  l = e.shape[0]
  idx = np.arange(l)
  empty = d <= thr  # [..., l]

  # Start: the first empty bin with 0 <= E <= onset_window.
  in_window = (e >= 0.0) & (e <= onset_window_ev)
  cand = empty & in_window
  has_gap = np.any(cand, axis=-1)
  s = np.argmax(cand, axis=-1)[..., None]  # [..., 1]

  # Right edge: first non-empty bin after s (l if none).
  right_full = ~empty & (idx > s)
  has_right = np.any(right_full, axis=-1, keepdims=True)
  b = np.where(has_right, np.argmax(right_full, axis=-1)[..., None], l)
  # Left edge: last non-empty bin before s (-1 if none).
  left_full = ~empty & (idx < s)
  has_left = np.any(left_full, axis=-1, keepdims=True)
  a = np.where(has_left, l - 1 - np.argmax(left_full[..., ::-1], axis=-1)[..., None], -1)

  def take(arr, i):
    return np.take_along_axis(arr, np.clip(i, 0, l - 1), axis=-1)

  eb = np.broadcast_to(e, d.shape)
  # Left crossing between a (above) and a + 1 (empty); the grid start if no a.
  da, da1 = take(d, a), take(d, a + 1)
  ea, ea1 = take(eb, a), take(eb, a + 1)
  with np.errstate(divide="ignore", invalid="ignore"):
    fa = np.clip((da - thr) / (da - da1), 0.0, 1.0)
  left = np.where(has_left, ea + fa * (ea1 - ea), e[0])
  # Right crossing between b - 1 (empty) and b (above); the grid end if no b.
  db1, dbb = take(d, b - 1), take(d, b)
  eb1, ebb = take(eb, b - 1), take(eb, b)
  with np.errstate(divide="ignore", invalid="ignore"):
    fb = np.clip((thr - db1) / (dbb - db1), 0.0, 1.0)
  right = np.where(has_right, eb1 + fb * (ebb - eb1), e[-1])
  gap = (right - left)[..., 0]
  return np.where(has_gap, np.maximum(gap, 0.0), 0.0)


# ---------------------------------------------------------------- evaluation: derived-property errors

# Temperature of the heat capacity reported by evaluation (as Mat2Spec's Table 1: C_v(300 K)).
CV_TEMPERATURE_K = 300.0
# config.data.kind: the DoS kinds with derived properties.
KINDS = ("phonon", "electronic")


def rescale_to_modes(freq_cm: Any, dos: Any, n_atoms: Any) -> np.ndarray:
  """A phonon DoS of any normalisation rescaled to 3N modes per cell.

  g_3N = max(g, 0) * 3N / ∫ max(g, 0) dω, the integral by the trapezoid rule on the given
  grid (the rule `heat_capacity` and `mean_frequency` integrate with, so ∫ g_3N dω = 3N
  holds exactly for them). Negative values (a `standardized`/identity head can predict
  them) are set to 0 first: a DoS is non-negative. A row with no positive weight (or a
  non-finite value) gives a row of NaN.

  Args:
    freq_cm: float[l] ascending frequency grid in cm^-1.
    dos: float[..., l] DoS on that grid, any scale (e.g. max = 1 or sum = 1).
    n_atoms: N atoms per cell, scalar or float[...] broadcasting against dos[..., 0].

  Returns:
    float64[..., l] DoS in modes per cm^-1 per cell.
  """
  freq = as_grid(freq_cm, "freq_cm")
  g = np.maximum(as_dos(dos, freq), 0.0)
  n = np.asarray(n_atoms, np.float64)
  total = _trapezoid(g, freq)
  ok = (total > 0) & np.isfinite(total)
  factor = np.where(ok, 3.0 * n / np.where(ok, total, 1.0), np.nan)
  return g * np.asarray(factor)[..., None]


def phonon_properties(freq_cm: Any, dos: Any, n_atoms: Any,
                      temperature_K: float = CV_TEMPERATURE_K) -> dict[str, np.ndarray]:
  """Heat capacity and mean frequency of a phonon DoS of any normalisation.

  The DoS is first rescaled to 3N modes per cell (`rescale_to_modes`); then
  C_v per mole of atoms = C_v per cell / N = (R / N) ∫ g_3N(ω) f(hcω / k_B T) dω
  (`heat_capacity`, trapezoid rule, the ω = 0 bin at the classical limit f = 1), which is
  3R ∫ g f dω / ∫ g dω: N cancels, so the value depends only on the DoS's shape and lies
  in [0, 3R]; and the mean frequency ∫ ω g dω / ∫ g dω (scale-free anyway). Rows with no
  positive weight give NaN.

  Args:
    freq_cm: float[l] ascending grid in cm^-1.
    dos: float[..., l] DoS on that grid, any scale.
    n_atoms: atoms per cell, scalar or float[...].
    temperature_K: scalar temperature in K.

  Returns:
    {"cv_J_per_K_mol_atom": float64[...], "cv_J_per_K_mol_cell": float64[...] (= N times
    the former), "mean_freq_cm": float64[...]}.
  """
  freq = as_grid(freq_cm, "freq_cm")
  n = np.asarray(n_atoms, np.float64)
  if np.any(~(n > 0)):
    raise InputError("n_atoms", "numbers of atoms must be positive")
  g = rescale_to_modes(freq, dos, n)
  cv_cell = heat_capacity(freq, np.nan_to_num(g, nan=0.0), float(temperature_K))
  bad = np.isnan(g[..., 0])
  cv_cell = np.where(bad, np.nan, cv_cell)
  with np.errstate(invalid="ignore"):
    mean_freq = mean_frequency(freq, np.nan_to_num(g, nan=0.0))
  return {"cv_J_per_K_mol_atom": cv_cell / n, "cv_J_per_K_mol_cell": cv_cell,
          "mean_freq_cm": np.where(bad, np.nan, mean_freq)}


def _error_stats(true: np.ndarray, pred: np.ndarray, valid: np.ndarray) -> dict[str, Any]:
  t, p = true[valid], pred[valid]
  if t.size == 0:
    return {"mae": None, "mse": None, "mean_rel_error": None, "true_mean": None}
  err = p - t
  pos = t > 0
  rel = float(np.mean(np.abs(err[pos]) / t[pos])) if np.any(pos) else None
  return {"mae": float(np.mean(np.abs(err))), "mse": float(np.mean(err * err)),
          "mean_rel_error": rel, "true_mean": float(np.mean(t))}


def phonon_errors(freq_cm: Any, dos_true: Any, dos_pred: Any, n_atoms: Any,
                  temperature_K: float = CV_TEMPERATURE_K
                  ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """Errors of C_v(T) and of the mean frequency between a predicted and a true phonon DoS.

  Both DoS are rescaled to 3N modes per cell first (`phonon_properties`), so the labels'
  and predictions' normalisations (max = 1, sum = 1, any per-crystal factor) do not
  matter. Crystals where either DoS has no positive weight are left out of the summary
  (`n_excluded`). The relative error is |pred - true| / true averaged over the crystals
  (those with true > 0 for the mean frequency).

  Args:
    freq_cm: float[l] ascending grid in cm^-1.
    dos_true, dos_pred: float[n, l] true and predicted DoS, any scale.
    n_atoms: float[n] atoms per cell.
    temperature_K: temperature of C_v, K (the keys are named after it, e.g. `cv300_*`).

  Returns:
    (summary, per_crystal). summary (JSON-ready floats; None when no crystal is valid):
      kind="phonon", count, n_excluded, temperature_K,
      cv{T}_mae_J_per_K_mol_atom, cv{T}_mse_J2_per_K2_mol2_atom, cv{T}_mean_rel_error,
      cv{T}_true_mean_J_per_K_mol_atom,
      mean_freq_mae_cm, mean_freq_mse_cm2, mean_freq_mean_rel_error, mean_freq_true_mean_cm.
    per_crystal: float64[n] arrays cv{T}_true_J_per_K_mol_atom, cv{T}_pred_J_per_K_mol_atom,
      mean_freq_true_cm, mean_freq_pred_cm (NaN where the DoS has no positive weight).
  """
  n = np.asarray(n_atoms, np.float64)
  true = phonon_properties(freq_cm, dos_true, n, temperature_K)
  pred = phonon_properties(freq_cm, dos_pred, n, temperature_K)
  cv = f"cv{float(temperature_K):g}"
  valid = np.isfinite(true["cv_J_per_K_mol_atom"]) & np.isfinite(pred["cv_J_per_K_mol_atom"])
  c = _error_stats(true["cv_J_per_K_mol_atom"], pred["cv_J_per_K_mol_atom"], valid)
  w = _error_stats(true["mean_freq_cm"], pred["mean_freq_cm"], valid)
  summary = {
      "kind": "phonon", "count": int(valid.sum()), "n_excluded": int((~valid).sum()),
      "temperature_K": float(temperature_K),
      f"{cv}_mae_J_per_K_mol_atom": c["mae"], f"{cv}_mse_J2_per_K2_mol2_atom": c["mse"],
      f"{cv}_mean_rel_error": c["mean_rel_error"],
      f"{cv}_true_mean_J_per_K_mol_atom": c["true_mean"],
      "mean_freq_mae_cm": w["mae"], "mean_freq_mse_cm2": w["mse"],
      "mean_freq_mean_rel_error": w["mean_rel_error"], "mean_freq_true_mean_cm": w["true_mean"],
  }
  per_crystal = {
      f"{cv}_true_J_per_K_mol_atom": true["cv_J_per_K_mol_atom"],
      f"{cv}_pred_J_per_K_mol_atom": pred["cv_J_per_K_mol_atom"],
      "mean_freq_true_cm": true["mean_freq_cm"], "mean_freq_pred_cm": pred["mean_freq_cm"],
  }
  return summary, per_crystal


def band_gap_errors(energies_ev: Any, dos_true: Any, dos_pred: Any
                    ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """Error of the band gap estimated (`band_gap`, default relative threshold, so the DoS
  scale does not matter) from a predicted vs the true electronic DoS, float[n, l] each.

  Both gaps are estimates from the DoS (the labels carry no gap), so this measures how
  well the prediction reproduces the label DoS's gap window, not the DFT gap.

  Returns:
    (summary {kind="electronic", count, band_gap_mae_eV, band_gap_true_mean_eV},
     per_crystal {band_gap_true_eV, band_gap_pred_eV: float64[n]}).
  """
  true = band_gap(energies_ev, dos_true)
  pred = band_gap(energies_ev, dos_pred)
  n = int(true.shape[0]) if true.ndim else 1
  return ({"kind": "electronic", "count": n,
           "band_gap_mae_eV": float(np.mean(np.abs(pred - true))) if n else None,
           "band_gap_true_mean_eV": float(np.mean(true)) if n else None},
          {"band_gap_true_eV": true, "band_gap_pred_eV": pred})


def derived_property_errors(kind: str, grid: Any, dos_true: Any, dos_pred: Any,
                            n_atoms: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """`phonon_errors` at `CV_TEMPERATURE_K` for kind "phonon", `band_gap_errors` for
  "electronic": (JSON-ready summary, per-crystal float64[n] arrays)."""
  if kind == "phonon":
    return phonon_errors(grid, dos_true, dos_pred, n_atoms, CV_TEMPERATURE_K)
  return band_gap_errors(grid, dos_true, dos_pred)


def _fmt(v: Any, spec: str) -> str:
  return "n/a" if v is None else format(v, spec)


def _pct(v: Any) -> str:
  return "n/a" if v is None else f"{100 * v:.1f} %"


def physics_table(physics_dict: Optional[dict[str, Any]]) -> str:
  """One or two printable lines for a summary from `derived_property_errors` (as stored
  under eval_<split>.json[split]["physics"]); "" for None or an empty dict."""
  p = physics_dict or {}
  if not p:
    return ""
  if p.get("kind") == "electronic":
    return (f"band gap (estimated from the DoS): MAE {_fmt(p.get('band_gap_mae_eV'), '.3f')} eV"
            f" (true mean {_fmt(p.get('band_gap_true_mean_eV'), '.3f')} eV; "
            f"{p.get('count', 0)} crystals)")
  t = float(p.get("temperature_K", CV_TEMPERATURE_K))
  cv = f"cv{t:g}"
  excluded = f", {p['n_excluded']} without weight left out" if p.get("n_excluded") else ""
  rows = [
      (f"C_v({t:g} K)", f"{_fmt(p.get(f'{cv}_mae_J_per_K_mol_atom'), '.3f')} J/K/mol-atom",
       _fmt(p.get(f"{cv}_mse_J2_per_K2_mol2_atom"), ".4g"), _pct(p.get(f"{cv}_mean_rel_error")),
       f"true mean {_fmt(p.get(f'{cv}_true_mean_J_per_K_mol_atom'), '.2f')} J/K/mol-atom; "
       f"{p.get('count', 0)} crystals{excluded}"),
      ("mean frequency", f"{_fmt(p.get('mean_freq_mae_cm'), '.2f')} cm^-1",
       _fmt(p.get("mean_freq_mse_cm2"), ".4g"), _pct(p.get("mean_freq_mean_rel_error")),
       f"true mean {_fmt(p.get('mean_freq_true_mean_cm'), '.1f')} cm^-1; "
       "both DoS rescaled to 3N modes"),
  ]
  return "\n".join(f"{name:<16}MAE {mae:<22}MSE {mse:<10}mean rel. error {rel:<8}({note})"
                    for name, mae, mse, rel, note in rows)
