"""Thermodynamics derived from a (predicted or true) DoS. Host-side numpy post-processing.

Phonons, in the harmonic approximation with phonopy's formulas (phonopy's
`thermal_properties`): from a phonon DoS g(ω) on a frequency grid in cm^-1, rescaled to 3N
modes per cell, the heat capacity C_v(T), vibrational entropy S(T), Helmholtz free energy
F(T) (zero-point energy included), internal energy U(T) and the zero-point energy; the mean
and logarithmic-average frequencies; two Debye temperatures (low-frequency ν² fit, second
moment). Electrons: the DoS at the Fermi level / valence-band maximum, the electronic
heat-capacity coefficient γ of a metal, and the band gap (`dos_properties.band_gap`).

Conventions (all functions):
- dos float[..., l] on a shared ascending grid float[l]; results float64[...] or, over
  temperatures float[n_T], float64[..., n_T]. Integrals use the trapezoid rule on the
  given grid, as in `physics`.
- Modes at frequency ω <= 0 (the ω = 0 grid point, imaginary modes stored at negative
  frequencies) are excluded, as phonopy drops them: they carry no energy, entropy or heat
  capacity (a zero-frequency mode's entropy diverges). The 3N rescaling counts them, so a
  DoS with weight at ω <= 0 describes fewer than 3N real modes.
- "per cell" is per mole of cells (phonopy's unit), "per atom" per mole of atoms (per
  cell / N). Heat capacity and entropy in J/K/mol, energies in kJ/mol, frequencies in
  cm^-1, temperatures in K.

With x = θ/T and θ = h c ω / k_B the mode temperature (θ = 1.4388 K per cm^-1), one mode
per mole contributes (R = N_A k_B):
  C_v = R x² eˣ / (eˣ - 1)²,   S = R [x / (eˣ - 1) - ln(1 - e⁻ˣ)],
  U = R θ [1/2 + 1 / (eˣ - 1)],   F = R [θ/2 + T ln(1 - e⁻ˣ)] = U - T S,   ZPE = R θ / 2.
At T = 0: C_v = S = 0 and U = F = ZPE.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from xtal2dos_jax.core.errors import InputError
from xtal2dos_jax.physics import dos_properties

R_GAS = dos_properties.R_GAS              # J/(K mol)
HC_OVER_KB = dos_properties.HC_OVER_KB    # cm K: θ[K] = HC_OVER_KB * ω[cm^-1]
# Boltzmann constant in eV/K (CODATA 2018 exact: k_B / e).
K_B_EV = 1.380649e-23 / 1.602176634e-19
# γ per state/eV at E_F: (π²/3) k_B[J/K] k_B[eV/K] N_A, in mJ/(mol K²) per (states/eV/cell).
GAMMA_MJ_PER_MOL_K2_PER_STATE_EV = (np.pi ** 2 / 3.0) * R_GAS * K_B_EV * 1e3  # 2.357...
# Default temperatures of the curves the predictor reports (0, 10, ..., 1000 K).
DEFAULT_TEMPERATURES_K = np.linspace(0.0, 1000.0, 101)


def _temperatures(temperature_K: Any) -> np.ndarray:
  t = np.asarray(temperature_K, np.float64)
  if t.ndim > 1:
    raise InputError("temperature_K", f"expected a scalar or 1-d array, got shape {t.shape}")
  if np.any(~np.isfinite(t)) or np.any(t < 0):
    raise InputError("temperature_K", "temperatures must be finite and >= 0 K")
  return t


def _positive_modes(freq: np.ndarray, g: np.ndarray) -> np.ndarray:
  """g with the ω <= 0 grid points set to 0 (the excluded modes)."""
  return np.where(freq > 0, g, 0.0)


def _integrate_over_modes(freq: np.ndarray, g: np.ndarray, t: np.ndarray, per_mode) -> np.ndarray:
  """∫ g(ω) per_mode(θ, T) dω over ω > 0 for each T: float[..., l] -> float64[..., n_T]
  (squeezed for a scalar T). per_mode(theta [n_T, l], T [n_T, 1]) is evaluated for T > 0
  and ω > 0 only; its value elsewhere is taken as 0 (the caller adds T = 0 limits)."""
  t1 = np.atleast_1d(t)
  theta = HC_OVER_KB * freq                                   # [l]
  ok = (theta[None, :] > 0) & (t1[:, None] > 0)               # [n_T, l]
  tt = np.where(t1 > 0, t1, 1.0)[:, None]
  th = np.where(theta > 0, theta, 1.0)[None, :]
  with np.errstate(over="ignore", under="ignore"):
    val = np.where(ok, per_mode(th, tt), 0.0)                 # [n_T, l]
  out = np.trapezoid(_positive_modes(freq, g)[..., None, :] * val, freq, axis=-1)
  return out[..., 0] if t.ndim == 0 else out


def _bose(x: np.ndarray) -> np.ndarray:
  """1 / (eˣ - 1) for x > 0, without overflow (0 for x -> ∞)."""
  e = np.exp(-x)
  return e / (-np.expm1(-x))


def zero_point_energy(freq_cm: Any, dos: Any) -> np.ndarray:
  """Zero-point energy per cell, kJ/mol: ZPE = R ∫_{ω>0} g(ω) θ(ω)/2 dω / 1000.

  Args:
    freq_cm: float[l] ascending grid, cm^-1.
    dos: float[..., l] DoS in modes per cm^-1 per cell (∫ g dω = 3N).

  Returns:
    float64[...].
  """
  freq = dos_properties.as_grid(freq_cm, "freq_cm")
  g = _positive_modes(freq, dos_properties.as_dos(dos, freq))
  return R_GAS * np.trapezoid(g * (0.5 * HC_OVER_KB * freq), freq, axis=-1) / 1e3


def entropy(freq_cm: Any, dos: Any, temperature_K: Any) -> np.ndarray:
  """Vibrational entropy per cell, J/K/mol: S = R ∫_{ω>0} g [x/(eˣ-1) - ln(1-e⁻ˣ)] dω,
  x = θ(ω)/T (phonopy's ħω coth(ħω/2k_BT)/2T - k_B ln(2 sinh(ħω/2k_BT)), rewritten so it
  neither overflows nor cancels). 0 at T = 0.

  Args:
    freq_cm: float[l] ascending grid, cm^-1.
    dos: float[..., l] DoS in modes per cm^-1 per cell.
    temperature_K: scalar or float[n_T], K (>= 0).

  Returns:
    float64[...] for a scalar temperature, else float64[..., n_T].
  """
  freq = dos_properties.as_grid(freq_cm, "freq_cm")
  g, t = dos_properties.as_dos(dos, freq), _temperatures(temperature_K)

  def per_mode(theta, tt):
    x = theta / tt
    return x * _bose(x) - np.log1p(-np.exp(-x))
  return R_GAS * _integrate_over_modes(freq, g, t, per_mode)


def internal_energy(freq_cm: Any, dos: Any, temperature_K: Any) -> np.ndarray:
  """Vibrational internal energy per cell, kJ/mol, zero-point energy included:
  U = R ∫_{ω>0} g θ [1/2 + 1/(eˣ-1)] dω / 1000, x = θ(ω)/T. U(0) = ZPE.

  Shapes as `entropy`.
  """
  freq = dos_properties.as_grid(freq_cm, "freq_cm")
  g, t = dos_properties.as_dos(dos, freq), _temperatures(temperature_K)
  thermal = _integrate_over_modes(freq, g, t, lambda theta, tt: theta * _bose(theta / tt))
  zpe = zero_point_energy(freq, g)
  return (zpe[..., None] if t.ndim else zpe) + R_GAS * thermal / 1e3


def free_energy(freq_cm: Any, dos: Any, temperature_K: Any) -> np.ndarray:
  """Helmholtz free energy per cell, kJ/mol, zero-point energy included:
  F = R ∫_{ω>0} g [θ/2 + T ln(1 - e⁻ˣ)] dω / 1000 = U - T S, x = θ(ω)/T. F(0) = ZPE.

  Shapes as `entropy`.
  """
  freq = dos_properties.as_grid(freq_cm, "freq_cm")
  g, t = dos_properties.as_dos(dos, freq), _temperatures(temperature_K)
  thermal = _integrate_over_modes(freq, g, t,
                                  lambda theta, tt: tt * np.log1p(-np.exp(-theta / tt)))
  zpe = zero_point_energy(freq, g)
  return (zpe[..., None] if t.ndim else zpe) + R_GAS * thermal / 1e3


def _mean_over_positive_modes(freq: np.ndarray, dos: Any, f: np.ndarray) -> np.ndarray:
  """<f> = ∫_{ω>0} f g dω / ∫_{ω>0} g dω over float[l] `f` on the grid; NaN where the DoS
  has no weight at ω > 0."""
  g = _positive_modes(freq, dos_properties.as_dos(dos, freq))
  num = np.trapezoid(g * f, freq, axis=-1)
  den = np.trapezoid(g, freq, axis=-1)
  ok = den > 0
  return np.where(ok, num / np.where(ok, den, 1.0), np.nan)


def log_mean_frequency(freq_cm: Any, dos: Any) -> np.ndarray:
  """Logarithmic-average frequency, cm^-1: ω_log = exp(∫_{ω>0} g ln ω dω / ∫_{ω>0} g dω)
  (the ω_log of the Allen-Dynes formula, here with the phonon DoS as weight). NaN for a DoS
  with no weight at ω > 0. Scale-free: any normalisation of g gives the same value.

  Args:
    freq_cm: float[l] ascending grid, cm^-1.
    dos: float[..., l] DoS, any scale.

  Returns:
    float64[...].
  """
  freq = dos_properties.as_grid(freq_cm, "freq_cm")
  return np.exp(_mean_over_positive_modes(freq, dos, np.log(np.where(freq > 0, freq, 1.0))))


def debye_temperature_second_moment(freq_cm: Any, dos: Any) -> np.ndarray:
  """Debye temperature from the second moment of the DoS, K:
  θ_D = (h c / k_B) sqrt(5/3 <ω²>),  <ω²> = ∫_{ω>0} ω² g dω / ∫_{ω>0} g dω  (ω in cm^-1),
  the Debye model's <ω²> = 3/5 ω_D² solved for ω_D (Barron's θ_D(2), the Debye temperature
  that fixes the leading high-temperature correction to C_v = 3NR). Scale-free; NaN for a
  DoS with no weight at ω > 0.

  Args:
    freq_cm: float[l] ascending grid, cm^-1.
    dos: float[..., l] DoS, any scale.

  Returns:
    float64[...].
  """
  freq = dos_properties.as_grid(freq_cm, "freq_cm")
  return HC_OVER_KB * np.sqrt(5.0 / 3.0 * _mean_over_positive_modes(freq, dos, freq ** 2))


def debye_temperature_low_frequency(freq_cm: Any, dos: Any, n_atoms: Any,
                                    fit_max_cm: Optional[float] = None,
                                    fit_modes: float = 0.375) -> np.ndarray:
  """Debye temperature from the low-frequency ν² part of the DoS, K.

  The Debye model with 3N modes per cell is g(ω) = 9N ω² / ω_D³ for ω <= ω_D. A
  least-squares fit of g = a ω² through the origin over the grid points 0 < ω <= ω_fit,
  a = Σ g ω² / Σ ω⁴, gives ω_D = (9N / a)^(1/3) and θ_D = (h c / k_B) ω_D (ω in cm^-1, g in
  modes per cm^-1 per cell). This is the Debye temperature of the T³ law
  C_v = (12π⁴/5) N R (T/θ_D)³ at T << θ_D (set by the acoustic sound velocities).

  The window: up to `fit_max_cm` when given; else up to the lowest grid frequency where
  the cumulative mode count ∫_0^ω g reaches `fit_modes` modes per cell (default 3/8, an
  eighth of the 3 acoustic modes: ω_D / 2 for a one-atom Debye solid). At least the first
  two positive grid points are used, so on a coarse grid the window can be wider than
  asked. NaN where the fit gives a <= 0 (no low-frequency weight) or the DoS has no weight.

  Args:
    freq_cm: float[l] ascending grid, cm^-1.
    dos: float[..., l] DoS, any scale (rescaled to 3N modes here,
      `dos_properties.rescale_to_modes`).
    n_atoms: N atoms per cell, scalar or float[...].
    fit_max_cm: upper end of the fit window, cm^-1 (None: from `fit_modes`).
    fit_modes: modes per cell below the window's upper end when `fit_max_cm` is None.

  Returns:
    float64[...].
  """
  freq = dos_properties.as_grid(freq_cm, "freq_cm")
  n = np.asarray(n_atoms, np.float64)
  # NaN rows: no weight
  g = dos_properties.rescale_to_modes(freq, dos_properties.as_dos(dos, freq), n)
  positive = freq > 0
  first_two = positive & (np.cumsum(positive) <= 2)              # [l]
  if fit_max_cm is not None:
    window = np.broadcast_to(positive & (freq <= fit_max_cm), g.shape)
  else:
    # Cumulative modes at each grid point (trapezoid from the grid start), counting ω > 0.
    gp = _positive_modes(freq, g)
    seg = 0.5 * (gp[..., 1:] + gp[..., :-1]) * np.diff(freq)
    cum = np.concatenate([np.zeros(gp.shape[:-1] + (1,)), np.cumsum(seg, axis=-1)], axis=-1)
    reached = cum >= fit_modes
    # Index of the first grid point where the count is reached (the last point if never).
    stop = np.where(np.any(reached, axis=-1), np.argmax(reached, axis=-1), freq.size - 1)
    window = positive & (np.arange(freq.size) <= stop[..., None])
  window = window | first_two
  w2 = np.where(window, freq ** 2, 0.0)
  a = np.sum(np.nan_to_num(g) * w2, axis=-1) / np.sum(w2 * w2, axis=-1)
  ok = (a > 0) & np.isfinite(g[..., 0])
  omega_d = np.cbrt(9.0 * n * np.ones_like(a) / np.where(ok, a, 1.0))
  return np.where(ok, HC_OVER_KB * omega_d, np.nan)


def phonon_thermodynamics(freq_cm: Any, dos: Any, n_atoms: Any,
                          temperature_K: Any = DEFAULT_TEMPERATURES_K
                          ) -> dict[str, np.ndarray]:
  """Everything above for a phonon DoS of any normalisation, rescaled to 3N modes first.

  The DoS is rescaled with `dos_properties.rescale_to_modes` (negative values set to 0, then
  ∫ g dω = 3N over the whole grid by the trapezoid rule); modes at ω <= 0 are then
  excluded (module docstring). A row with no positive weight gives NaN everywhere.

  Args:
    freq_cm: float[l] ascending grid, cm^-1.
    dos: float[..., l] DoS on that grid, any scale.
    n_atoms: N atoms per cell, scalar or float[...] (> 0).
    temperature_K: scalar or float[n_T], K (default 0, 10, ..., 1000 K).

  Returns:
    temperature_K: float64[n_T] (or scalar);
    per cell (mole of cells) and per atom (mole of atoms, the `_atom` keys), float64[..., n_T]:
      cv_J_per_K_mol(_atom), s_J_per_K_mol(_atom), f_kJ_per_mol(_atom), u_kJ_per_mol(_atom);
    float64[...]: zpe_kJ_per_mol(_atom), mean_frequency_cm (`dos_properties.mean_frequency` over
      ω > 0), log_mean_frequency_cm, debye_temperature_nu2_K
      (`debye_temperature_low_frequency`), debye_temperature_moment_K
      (`debye_temperature_second_moment`).
  """
  freq = dos_properties.as_grid(freq_cm, "freq_cm")
  t = _temperatures(temperature_K)
  n = np.asarray(n_atoms, np.float64)
  if np.any(~(n > 0)):
    raise InputError("n_atoms", "numbers of atoms must be positive")
  g = dos_properties.rescale_to_modes(freq, dos_properties.as_dos(dos, freq), n)
  bad = np.isnan(g[..., 0])
  g0 = _positive_modes(freq, np.nan_to_num(g, nan=0.0))
  bad_t = bad[..., None] if t.ndim else bad
  n_t = n[..., None] if t.ndim else n
  per_cell = {
      "cv_J_per_K_mol": dos_properties.heat_capacity(freq, g0, t),
      "s_J_per_K_mol": entropy(freq, g0, t),
      "f_kJ_per_mol": free_energy(freq, g0, t),
      "u_kJ_per_mol": internal_energy(freq, g0, t),
  }
  out: dict[str, np.ndarray] = {"temperature_K": t}
  for key, v in per_cell.items():
    v = np.where(bad_t, np.nan, v)
    out[key], out[key + "_atom"] = v, v / n_t
  zpe = np.where(bad, np.nan, zero_point_energy(freq, g0))
  out["zpe_kJ_per_mol"], out["zpe_kJ_per_mol_atom"] = zpe, zpe / n
  with np.errstate(invalid="ignore"):
    out["mean_frequency_cm"] = np.where(bad, np.nan, dos_properties.mean_frequency(freq, g0))
  out["log_mean_frequency_cm"] = np.where(bad, np.nan, log_mean_frequency(freq, g0))
  out["debye_temperature_nu2_K"] = debye_temperature_low_frequency(freq, dos, n)
  out["debye_temperature_moment_K"] = np.where(bad, np.nan,
                                               debye_temperature_second_moment(freq, g0))
  return out


# ---------------------------------------------------------------- electrons

def dos_at_fermi_level(energies_ev: Any, dos: Any, fermi_level_ev: Any = 0.0) -> np.ndarray:
  """The DoS at E_F by linear interpolation between grid points, in the DoS's units
  (states per eV per cell for an absolute DoS).

  The reference is E_F for a metal and the valence-band maximum for an insulator; the
  default 0 eV is the grid's own reference (the Mat2Spec layout's). A broadened DoS gives
  the broadened value, so an insulator referenced to its VBM reads the tail of its
  valence edge, not 0: use `band_gap` to tell metals from insulators.

  Args:
    energies_ev: float[l] ascending grid, eV.
    dos: float[..., l] DoS.
    fermi_level_ev: scalar or float[...] per DoS, eV; must lie on the grid.

  Returns:
    float64[...].
  """
  e = dos_properties.as_grid(energies_ev, "energies_ev")
  d = dos_properties.as_dos(dos, e)
  ef = np.broadcast_to(np.asarray(fermi_level_ev, np.float64), d.shape[:-1])
  if np.any(ef < e[0]) or np.any(ef > e[-1]):
    raise InputError("fermi_level_ev", f"must lie on the grid [{e[0]:g}, {e[-1]:g}] eV")
  i = np.clip(np.searchsorted(e, ef, side="right") - 1, 0, e.size - 2)[..., None]
  lo = np.take_along_axis(d, i, axis=-1)[..., 0]
  hi = np.take_along_axis(d, i + 1, axis=-1)[..., 0]
  frac = (ef - e[i[..., 0]]) / (e[i[..., 0] + 1] - e[i[..., 0]])
  return lo + frac * (hi - lo)


def electronic_heat_capacity_coefficient(dos_at_ef: Any) -> np.ndarray:
  """Sommerfeld coefficient γ = (π²/3) k_B² g(E_F) of C_el = γ T, in mJ/(mol K²) per mole
  of cells, for g(E_F) in states per eV per cell (both spins): γ = 2.3572 g(E_F)."""
  return GAMMA_MJ_PER_MOL_K2_PER_STATE_EV * np.asarray(dos_at_ef, np.float64)


def electronic_properties(energies_ev: Any, dos: Any, fermi_level_ev: Any = 0.0,
                          **band_gap_kwargs: Any) -> dict[str, np.ndarray]:
  """Band gap, DoS at E_F and γ of an electronic DoS.

  The gap is `dos_properties.band_gap` on the grid shifted so E_F (or the VBM) is at 0 eV
  (`band_gap_kwargs` are passed on). γ (`electronic_heat_capacity_coefficient`) is given
  for metals only, i.e. where the gap is 0; an insulator's is 0 (no electronic C_v ∝ T).
  γ is absolute only when the DoS is, in states per eV per cell.

  Args:
    energies_ev: float[l] ascending grid, eV.
    dos: float[..., l] DoS.
    fermi_level_ev: scalar or float[...], eV.

  Returns:
    {"band_gap_eV", "dos_at_fermi_level", "gamma_mJ_per_mol_K2"}: float64[...] each.
  """
  e = dos_properties.as_grid(energies_ev, "energies_ev")
  d = dos_properties.as_dos(dos, e)
  ef = np.asarray(fermi_level_ev, np.float64)
  if ef.ndim == 0:
    gap = dos_properties.band_gap(e - ef, d, **band_gap_kwargs)
  else:
    efb = np.broadcast_to(ef, d.shape[:-1]).reshape(-1)
    rows = d.reshape(-1, e.size)
    gap = np.array([dos_properties.band_gap(e - efb[k], rows[k], **band_gap_kwargs)
                    for k in range(rows.shape[0])]).reshape(d.shape[:-1])
  g_ef = dos_at_fermi_level(e, d, ef)
  gamma = np.where(gap > 0, 0.0, electronic_heat_capacity_coefficient(g_ef))
  return {"band_gap_eV": gap, "dos_at_fermi_level": g_ef, "gamma_mJ_per_mol_K2": gamma}
