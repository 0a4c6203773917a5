"""Tests for xtal2dos_jax.physics.dos_properties.thermodynamics against closed forms (Einstein
solid, Debye model,
free-electron metal) and against phonopy's harmonic formulas re-derived here in eV units.
numpy only; every case is a few ms."""
import chex
import numpy as np
import pytest

from xtal2dos_jax.core.errors import InputError
from xtal2dos_jax.physics import thermodynamics as th

# CODATA 2018, written out here so the tests do not reuse the module's constants.
R = 6.02214076e23 * 1.380649e-23            # J/(K mol)
KB_EV = 8.617333262e-5                      # eV/K
CM_TO_EV = 1.239841984e-4                   # h c / e: eV per cm^-1
EV_TO_KJ_MOL = 96.48533212                  # phonopy's EvTokJmol: e N_A / 1000


def _trapezoid_weights(x):
  w = np.zeros_like(x)
  dx = np.diff(x)
  w[:-1] += dx / 2
  w[1:] += dx / 2
  return w


def _einstein(theta, t):
  """Per mole of modes: (C_v J/K, S J/K, F kJ, U kJ) of one harmonic mode of temperature θ."""
  x = theta / t
  n = 1.0 / np.expm1(x)
  return (R * x ** 2 * np.exp(x) * n ** 2, R * (x * n - np.log1p(-np.exp(-x))),
          R * (theta / 2 + t * np.log1p(-np.exp(-x))) / 1e3, R * theta * (0.5 + n) / 1e3)


def test_einstein_solid_is_exact_per_cell_and_per_atom_and_vectorised():
  # One occupied grid point: the trapezoid rule puts all 3N modes at ω_E exactly.
  freq = np.arange(0.0, 1001.0, 20.0)
  omega = np.array([[100.0, 300.0, 600.0], [40.0, 980.0, 200.0]])
  dos = (freq[None, None, :] == omega[..., None]) * 7.0      # any scale
  n_atoms = np.array([[1.0, 2.0, 5.0], [3.0, 1.0, 8.0]])
  t = np.array([0.0, 5.0, 77.0, 300.0, 1000.0])
  out = th.phonon_thermodynamics(freq, dos, n_atoms, t)
  theta = (th.HC_OVER_KB * omega)[..., None]
  modes = (3 * n_atoms)[..., None]
  cv, s, f, u = _einstein(theta, t[1:])
  for key, ref in [("cv_J_per_K_mol", cv), ("s_J_per_K_mol", s), ("f_kJ_per_mol", f),
                   ("u_kJ_per_mol", u)]:
    chex.assert_shape(out[key], (2, 3, 5))
    np.testing.assert_allclose(out[key][..., 1:], modes * ref, rtol=1e-9, atol=1e-12,
                               err_msg=key)
    np.testing.assert_allclose(out[key + "_atom"], out[key] / n_atoms[..., None], rtol=1e-12)
  zpe = 3 * n_atoms * R * th.HC_OVER_KB * omega / 2 / 1e3
  np.testing.assert_allclose(out["zpe_kJ_per_mol"], zpe, rtol=1e-12)
  np.testing.assert_allclose(out["zpe_kJ_per_mol_atom"], zpe / n_atoms, rtol=1e-12)
  # T = 0: no heat capacity or entropy; U = F = ZPE.
  np.testing.assert_array_equal(out["cv_J_per_K_mol"][..., 0], 0.0)
  np.testing.assert_array_equal(out["s_J_per_K_mol"][..., 0], 0.0)
  np.testing.assert_allclose(out["f_kJ_per_mol"][..., 0], zpe, rtol=1e-12)
  np.testing.assert_allclose(out["u_kJ_per_mol"][..., 0], zpe, rtol=1e-12)
  for key in ("mean_frequency_cm", "log_mean_frequency_cm"):
    np.testing.assert_allclose(out[key], omega, rtol=1e-12)
  # Second moment of a delta: <ω²> = ω_E², θ_D = θ_E sqrt(5/3).
  np.testing.assert_allclose(out["debye_temperature_moment_K"],
                             th.HC_OVER_KB * omega * np.sqrt(5 / 3), rtol=1e-12)
  # Classical limit of the entropy, S -> 3NR (1 + ln(T/θ)) for T >> θ.
  s_hot = th.entropy(freq, dos[0, 0] * 3 / 7 / 20, 1e5)
  np.testing.assert_allclose(s_hot, 3 * R * (1 + np.log(1e5 / (th.HC_OVER_KB * 100.0))),
                             rtol=1e-6)


def _debye_grid(n_atoms, omega_d, n=30001):
  freq = np.linspace(0.0, omega_d, n)  # the grid ends at the cutoff: no discontinuity
  return freq, 9 * n_atoms * freq ** 2 / omega_d ** 3


def _leggauss(f, a, b, n=200):
  x, w = np.polynomial.legendre.leggauss(n)
  y = 0.5 * (b - a) * x + 0.5 * (b + a)
  return 0.5 * (b - a) * np.sum(w * f(y))


@pytest.mark.parametrize("t_over_theta", [0.1, 0.5, 1.0, 3.0])
def test_debye_model_matches_the_debye_functions(t_over_theta):
  n_atoms, omega_d = 2.0, 300.0
  theta = th.HC_OVER_KB * omega_d
  t = t_over_theta * theta
  freq, g = _debye_grid(n_atoms, omega_d)
  y = theta / t
  cv = 9 * n_atoms * R / y ** 3 * _leggauss(lambda x: x ** 4 * np.exp(x) / np.expm1(x) ** 2, 0, y)
  d3 = 3 / y ** 3 * _leggauss(lambda x: x ** 3 / np.expm1(x), 0, y)  # Debye function D_3
  s = 3 * n_atoms * R * (4 / 3 * d3 - np.log1p(-np.exp(-y)))
  f = n_atoms * R * (9 / 8 * theta + 3 * t * np.log1p(-np.exp(-y)) - t * d3) / 1e3
  out = th.phonon_thermodynamics(freq, g, n_atoms, t)
  np.testing.assert_allclose(out["cv_J_per_K_mol"], cv, rtol=2e-6)
  np.testing.assert_allclose(out["s_J_per_K_mol"], s, rtol=2e-6)
  np.testing.assert_allclose(out["f_kJ_per_mol"], f, rtol=2e-6)
  np.testing.assert_allclose(out["zpe_kJ_per_mol"], 9 / 8 * n_atoms * R * theta / 1e3, rtol=1e-6)


def test_debye_limits_and_both_debye_temperatures():
  n_atoms, omega_d = 3.0, 300.0
  theta = th.HC_OVER_KB * omega_d
  freq, g = _debye_grid(n_atoms, omega_d)
  hot, cold = 20 * theta, theta / 100
  cv = th.phonon_thermodynamics(freq, g, n_atoms, np.array([cold, hot]))["cv_J_per_K_mol"]
  # Dulong-Petit, with its leading correction 1 - (θ/T)²/20 below 1e-4.
  np.testing.assert_allclose(cv[1], 3 * n_atoms * R, rtol=2e-4)
  # Debye T³ law.
  np.testing.assert_allclose(cv[0], 12 * np.pi ** 4 / 5 * n_atoms * R / 100 ** 3, rtol=1e-3)
  out = th.phonon_thermodynamics(freq, g / 123.0, n_atoms)   # scale-free
  np.testing.assert_allclose(out["debye_temperature_nu2_K"], theta, rtol=1e-4)
  np.testing.assert_allclose(out["debye_temperature_moment_K"], theta, rtol=1e-4)
  np.testing.assert_allclose(out["mean_frequency_cm"], 0.75 * omega_d, rtol=1e-4)
  # ω_log of a Debye DoS: ω_D e^{-1/3}.
  np.testing.assert_allclose(out["log_mean_frequency_cm"], omega_d * np.exp(-1 / 3), rtol=1e-4)


def test_low_frequency_fit_sees_only_the_acoustic_part():
  # A Debye acoustic part up to 150 cm^-1 (3 modes) plus an optic peak at 500 cm^-1: the
  # ν² fit recovers the acoustic Debye temperature of 3N = 6 modes in the T³ sense, the
  # second moment does not (it weighs the optic modes).
  n_atoms, omega_a = 2.0, 150.0
  freq = np.linspace(0.0, 600.0, 6001)
  g = np.where(freq <= omega_a, 9 * freq ** 2 / omega_a ** 3, 0.0)   # 3 modes
  g = g + 3.0 * (np.abs(freq - 500.0) < 0.05) / 0.1                  # 3 modes
  # g = 9 ω² / ω_a³ = 9N ω² / ω_D³  =>  ω_D = ω_a N^(1/3).
  expected = th.HC_OVER_KB * omega_a * n_atoms ** (1 / 3)
  got = th.debye_temperature_low_frequency(freq, g, n_atoms)
  np.testing.assert_allclose(got, expected, rtol=1e-3)
  np.testing.assert_allclose(th.debye_temperature_low_frequency(freq, g, n_atoms, fit_max_cm=60),
                             expected, rtol=1e-3)
  assert th.debye_temperature_second_moment(freq, g) > 1.5 * expected
  # No weight in the fit window: no estimate.
  gapped = np.where(freq > 300, 1.0, 0.0)
  assert np.isnan(th.debye_temperature_low_frequency(freq, gapped, 1.0, fit_max_cm=100))


def _phonopy_reference(freq_cm, dos, n_atoms, t):
  """phonopy's thermal_properties as a mode sum: frequencies in eV, weights = the 3N
  rescaled DoS times the trapezoid weights, modes at ω <= 0 dropped; per mole of cells."""
  w = dos * _trapezoid_weights(freq_cm)
  w = w * 3 * n_atoms / w.sum()
  keep = freq_cm > 0
  e, w = freq_cm[keep] * CM_TO_EV, w[keep]
  kt = KB_EV * t
  x = e / kt
  cv = np.sum(w * KB_EV * x ** 2 * np.exp(x) / np.expm1(x) ** 2) * EV_TO_KJ_MOL * 1e3
  s = np.sum(w * (e / (2 * t) / np.tanh(e / (2 * kt)) - KB_EV * np.log(2 * np.sinh(e / (2 * kt)))))
  f = np.sum(w * (kt * np.log(1 - np.exp(-x)) + e / 2))
  u = np.sum(w * e * (0.5 + 1 / np.expm1(x)))
  return cv, s * EV_TO_KJ_MOL * 1e3, f * EV_TO_KJ_MOL, u * EV_TO_KJ_MOL


def test_matches_phonopy_formulas_on_a_realistic_dos():
  freq = np.linspace(0.0, 1000.0, 51)  # the shipped DFPT grid
  bumps = [(120.0, 30.0, 1.0), (300.0, 40.0, 0.6), (520.0, 25.0, 0.8)]
  dos = sum(a * np.exp(-0.5 * ((freq - c) / s) ** 2) for c, s, a in bumps)
  dos[0] = 0.3  # weight at ω = 0: counted by the 3N rescaling, dropped from the sums
  t = np.array([10.0, 100.0, 300.0, 1000.0])
  out = th.phonon_thermodynamics(freq, dos, 4, t)
  for k, temp in enumerate(t):
    cv, s, f, u = _phonopy_reference(freq, dos, 4, temp)
    np.testing.assert_allclose(
        [out["cv_J_per_K_mol"][k], out["s_J_per_K_mol"][k], out["f_kJ_per_mol"][k],
         out["u_kJ_per_mol"][k]], [cv, s, f, u], rtol=1e-7, err_msg=f"T = {temp}")
  # Thermodynamic consistency: F = U - T S and S = -dF/dT.
  np.testing.assert_allclose(out["f_kJ_per_mol"],
                             out["u_kJ_per_mol"] - t * out["s_J_per_K_mol"] / 1e3, rtol=1e-10)
  g3n, dt = _rescaled(freq, dos, 4), 1e-3
  df = (th.free_energy(freq, g3n, t + dt) - th.free_energy(freq, g3n, t - dt)) / (2 * dt)
  np.testing.assert_allclose(-df * 1e3, out["s_J_per_K_mol"], rtol=1e-5)


def _rescaled(freq, dos, n_atoms):
  return dos * 3 * n_atoms / np.sum(dos * _trapezoid_weights(freq))


def test_nonpositive_frequencies_are_excluded_and_stay_finite():
  freq = np.arange(-100.0, 1001.0, 20.0)     # imaginary modes stored at ω < 0, and ω = 0
  dos = np.zeros_like(freq)
  dos[freq == 300.0] = 2.0
  dos[freq == -40.0] = 1.0
  dos[freq == 0.0] = 1.0
  frac = 2.0 / 4.0                            # the share of the 3N modes at 300 cm^-1
  t = np.array([0.0, 300.0])
  out = th.phonon_thermodynamics(freq, dos, 1, t)
  cv, s, f, u = _einstein(th.HC_OVER_KB * 300.0, 300.0)
  np.testing.assert_allclose(out["cv_J_per_K_mol"][1], 3 * frac * cv, rtol=1e-9)
  np.testing.assert_allclose(out["s_J_per_K_mol"][1], 3 * frac * s, rtol=1e-9)
  np.testing.assert_allclose(out["f_kJ_per_mol"][1], 3 * frac * f, rtol=1e-9)
  np.testing.assert_allclose(out["u_kJ_per_mol"][1], 3 * frac * u, rtol=1e-9)
  np.testing.assert_allclose(out["mean_frequency_cm"], 300.0, rtol=1e-12)
  assert all(np.all(np.isfinite(v)) for v in out.values())


def test_no_weight_gives_nan_and_bad_inputs_are_named():
  freq = np.linspace(0.0, 1000.0, 51)
  dos = np.stack([np.exp(-0.5 * ((freq - 300) / 50) ** 2), np.zeros(51)])
  out = th.phonon_thermodynamics(freq, dos, np.array([2.0, 3.0]), 300.0)
  for key, v in out.items():
    if key != "temperature_K":
      assert np.isfinite(v[0]) and np.isnan(v[1]), key
  with pytest.raises(InputError, match="temperature_K"):
    th.phonon_thermodynamics(freq, dos, 2, -1.0)
  with pytest.raises(InputError, match="n_atoms"):
    th.phonon_thermodynamics(freq, dos, 0, 300.0)
  with pytest.raises(InputError, match="grid length"):
    th.entropy(freq[:-1], dos, 300.0)


def test_electronic_gamma_free_electron_and_constant_dos():
  # Constant g(E_F): γ = (π²/3) k_B² g, in mJ/(mol K²) per mole of cells.
  e = np.linspace(-4.0, 4.0, 801)
  g_const = np.full((2, e.size), 1.7)
  gamma = th.electronic_properties(e, g_const)["gamma_mJ_per_mol_K2"]
  np.testing.assert_allclose(gamma, np.pi ** 2 / 3 * R * KB_EV * 1.7 * 1e3, rtol=1e-9)
  np.testing.assert_allclose(th.electronic_heat_capacity_coefficient(1.0), 2.3571, rtol=1e-4)
  # Free-electron sodium: one electron per cell filling g ∝ sqrt(E - E_0) up to
  # E_F - E_0 = 3.24 eV (Kittel). γ = π² R k_B Z / (2 E_F) = 1.094 mJ/(mol K²) (Kittel's
  # free-electron value, Table 6.3).
  ef = 3.24
  e = np.linspace(-5.0, 5.0, 10001)
  g = np.where(e > -ef, 1.5 / ef * np.sqrt(np.clip(e + ef, 0, None) / ef), 0.0)
  props = th.electronic_properties(e, g)
  np.testing.assert_allclose(props["dos_at_fermi_level"], 1.5 / ef, rtol=1e-9)
  np.testing.assert_allclose(props["gamma_mJ_per_mol_K2"], np.pi ** 2 * R * KB_EV / (2 * ef) * 1e3,
                             rtol=1e-6)
  np.testing.assert_allclose(props["gamma_mJ_per_mol_K2"], 1.094, rtol=5e-3)
  assert props["band_gap_eV"] == 0.0


def test_electronic_reference_shift_and_insulators():
  e = np.linspace(-4.0, 4.0, 801)
  # An insulator: valence band below 0, conduction band above 1.5 eV; a metal: constant.
  ins = np.where((e < 0.0) | (e > 1.5), 2.0, 0.0)
  met = np.full_like(e, 0.8)
  props = th.electronic_properties(e, np.stack([ins, met]))
  np.testing.assert_allclose(props["band_gap_eV"], [1.5, 0.0], atol=0.02)
  np.testing.assert_allclose(props["gamma_mJ_per_mol_K2"],
                             [0.0, th.electronic_heat_capacity_coefficient(0.8)])
  # E_F per crystal = shifting the grid: a DoS whose window starts at 1 eV, read at E_F = 1.
  shifted = np.where((e < 1.0) | (e > 2.5), 2.0, 0.0)
  per_row = th.electronic_properties(e, np.stack([shifted, ins]), np.array([1.0, 0.0]))
  np.testing.assert_allclose(per_row["band_gap_eV"], [1.5, 1.5], atol=0.02)
  # Linear interpolation between grid points.
  ramp = e * 2.0 + 10.0
  np.testing.assert_allclose(th.dos_at_fermi_level(e, ramp, 0.123), 10.246, rtol=1e-12)
  with pytest.raises(InputError, match="fermi_level_ev"):
    th.dos_at_fermi_level(e, ramp, 9.0)
