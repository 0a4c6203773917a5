"""Tests for xtal2dos_jax.physics.dos_properties: closed forms (Einstein, Debye, Dulong-Petit),
band gap."""
import os

import chex
import numpy as np
import pytest
import scipy.integrate

from xtal2dos_jax.core import paths
from xtal2dos_jax.core.errors import InputError
from xtal2dos_jax.physics import dos_properties

R = dos_properties.R_GAS
C2 = dos_properties.HC_OVER_KB


def _einstein_dos(n_atoms, omega_e, sigma=0.1, step=0.01, top=800.0):
  freq = np.arange(0.0, top + step / 2, step)
  g = 3 * n_atoms * np.exp(-0.5 * ((freq - omega_e) / sigma) ** 2) / (sigma * np.sqrt(2 * np.pi))
  return freq, g


def _debye_dos(n_atoms, omega_d, n=20001):
  freq = np.linspace(0.0, omega_d, n)  # the grid ends at the cutoff: no discontinuity
  return freq, 9 * n_atoms * freq ** 2 / omega_d ** 3


def _debye_cv(n_atoms, theta, t):
  """9 N R (T/Θ)^3 ∫_0^{Θ/T} x^4 e^x / (e^x - 1)^2 dx by adaptive quadrature."""
  integrand = lambda x: x ** 4 * np.exp(-x) / (-np.expm1(-x)) ** 2 if x > 0 else 0.0
  val, _ = scipy.integrate.quad(integrand, 0.0, theta / t, epsabs=0, epsrel=1e-12, limit=200)
  return 9 * n_atoms * R * (t / theta) ** 3 * val


def test_constants():
  np.testing.assert_allclose(R, 8.314462618, rtol=1e-9)
  np.testing.assert_allclose(C2, 1.438776877, rtol=1e-9)


def test_einstein_function_limits_and_stability():
  x = np.array([0.0, 1e-9, 1e-5, 1e-3, 1.0, 10.0, 800.0, 1e5, -2.0])
  f = dos_properties.einstein_function(x)
  assert np.all(np.isfinite(f))
  assert f[0] == 1.0
  ref = np.array([xi ** 2 * np.exp(xi) / np.expm1(xi) ** 2 for xi in x[2:6]])
  np.testing.assert_allclose(f[2:6], ref, rtol=1e-10)
  assert f[7] == 0.0
  np.testing.assert_allclose(f[8], dos_properties.einstein_function(2.0), rtol=1e-15)


@pytest.mark.parametrize("temperature", [30.0, 150.0, 300.0, 1000.0])
def test_einstein_closed_form(temperature):
  n_atoms, omega_e = 2, 300.0
  freq, g = _einstein_dos(n_atoms, omega_e)
  x = C2 * omega_e / temperature
  ref = 3 * n_atoms * R * x ** 2 * np.exp(x) / np.expm1(x) ** 2
  got = dos_properties.heat_capacity(freq, g, temperature)
  # The Gaussian's width adds a relative error ~ (f''/f) sigma^2 / 2 ~ 1e-5 at 30 K.
  np.testing.assert_allclose(got, ref, rtol=3e-5)


def test_dulong_petit_high_temperature():
  freq, g = _einstein_dos(5, 400.0)
  got = dos_properties.heat_capacity(freq, g, [2e4, 1e6])
  np.testing.assert_allclose(got[0], 3 * 5 * R, rtol=2e-4)
  np.testing.assert_allclose(got[1], 3 * 5 * R, rtol=1e-7)
  assert got[0] < got[1] < 3 * 5 * R * (1 + 1e-12)


@pytest.mark.parametrize("t_over_theta", [0.01, 0.02, 0.2, 1.0, 3.0])
def test_debye_model(t_over_theta):
  n_atoms, omega_d = 3, 400.0
  theta = C2 * omega_d
  freq, g = _debye_dos(n_atoms, omega_d)
  t = t_over_theta * theta
  got = dos_properties.heat_capacity(freq, g, t)
  np.testing.assert_allclose(got, _debye_cv(n_atoms, theta, t), rtol=1e-5)


def test_debye_t3_law():
  n_atoms, omega_d = 1, 400.0
  theta = C2 * omega_d
  freq, g = _debye_dos(n_atoms, omega_d)
  temps = theta * np.array([0.005, 0.01, 0.02])
  got = dos_properties.heat_capacity(freq, g, temps)
  t3 = 12 * np.pi ** 4 / 5 * n_atoms * R * (temps / theta) ** 3
  np.testing.assert_allclose(got, t3, rtol=1e-4)
  # C_v / T^3 is constant at low T.
  np.testing.assert_allclose(got / temps ** 3, (got / temps ** 3)[0], rtol=1e-4)


def test_heat_capacity_shapes_zero_frequency_and_zero_temperature():
  freq = np.arange(0.0, 1001.0, 20.0)
  rng = np.random.default_rng(0)
  dos = rng.random((4, 3, 51)).astype(np.float32)
  dos[..., 0] = 1.0  # weight exactly at ω = 0 (classical limit, no NaN)
  out = dos_properties.heat_capacity(freq, dos, np.array([0.0, 10.0, 300.0]))
  chex.assert_shape(out, (4, 3, 3))
  chex.assert_type(out, np.float64)
  chex.assert_tree_all_finite(out)
  np.testing.assert_array_equal(out[..., 0], 0.0)
  scalar = dos_properties.heat_capacity(freq, dos, 300.0)
  chex.assert_shape(scalar, (4, 3))
  np.testing.assert_allclose(scalar, out[..., 2])
  # n_modes rescales each DoS to integrate to 3N first.
  scaled = dos_properties.heat_capacity(freq, 7.0 * dos, 300.0, n_modes=np.trapezoid(dos, freq))
  np.testing.assert_allclose(scaled, scalar, rtol=1e-7)


def test_heat_capacity_bad_inputs():
  freq = np.arange(0.0, 100.0, 20.0)
  with pytest.raises(InputError, match="temperature_K"):
    dos_properties.heat_capacity(freq, np.ones(5), -1.0)
  with pytest.raises(InputError, match="dos"):
    dos_properties.heat_capacity(freq, np.ones(6), 300.0)
  with pytest.raises(InputError, match="freq_cm"):
    dos_properties.heat_capacity(freq[::-1], np.ones(5), 300.0)


def test_mean_frequency():
  freq, g = _einstein_dos(2, 321.0)
  np.testing.assert_allclose(dos_properties.mean_frequency(freq, g), 321.0, rtol=1e-9)
  freq, g = _debye_dos(1, 400.0)
  np.testing.assert_allclose(dos_properties.mean_frequency(freq, g), 0.75 * 400.0, rtol=1e-6)
  batch = dos_properties.mean_frequency(freq, np.stack([g, 2 * g, np.zeros_like(g)]))
  chex.assert_shape(batch, (3,))
  np.testing.assert_allclose(batch[:2], 300.0, rtol=1e-6)
  assert np.isnan(batch[2])


# ---------------------------------------------------------------- band gap

E_GRID = np.linspace(-4.0, 4.0, 161)  # 0.05 eV steps, 0 and 1.5 eV on the grid


def _ramp_dos(e, gap, vbm=0.0, slope=10.0):
  """Linear band edges: slope*(vbm - E) below the VBM, slope*(E - vbm - gap) above the CBM."""
  return slope * (np.maximum(vbm - e, 0.0) + np.maximum(e - vbm - gap, 0.0))


def test_band_gap_exact_for_linear_edges():
  thr, slope = 0.2, 10.0
  got = dos_properties.band_gap(E_GRID, _ramp_dos(E_GRID, 1.5, slope=slope), threshold=thr)
  # Linear interpolation of a linear edge is exact: crossings at -thr/slope, 1.5 + thr/slope.
  np.testing.assert_allclose(got, 1.5 + 2 * thr / slope, rtol=1e-9)


def test_band_gap_reference_conventions_and_batch():
  e = E_GRID
  dos = np.stack([
      _ramp_dos(e, 1.5),               # VBM at 0
      _ramp_dos(e, 2.0, vbm=-1.0),     # 0 eV mid-gap (run extends below 0)
      np.ones_like(e),                 # metal: flat DoS through E_F
      _ramp_dos(e, 0.0),               # zero gap (semimetal touching at 0)
      _ramp_dos(e, 1.0, vbm=-3.5) + 10.0 * (e > -0.5) * (e < 0.5),  # metal, dip above E_F
      _ramp_dos(e, 10.0),              # gap beyond the grid: cut at the grid end
  ])
  got = dos_properties.band_gap(e, dos, threshold=1e-6)
  chex.assert_shape(got, (6,))
  chex.assert_type(got, np.float64)
  np.testing.assert_allclose(got[:2], [1.5, 2.0], atol=1e-6)
  assert got[2] == 0.0 and got[4] == 0.0
  assert got[3] < 0.05
  np.testing.assert_allclose(got[5], 4.0, atol=1e-6)
  # Per-row thresholds broadcast.
  per_row = dos_properties.band_gap(e, dos, threshold=np.full(6, 1e-6))
  np.testing.assert_array_equal(per_row, got)


def test_band_gap_broadened_dos_on_edos_grid():
  """A Gaussian-smeared DoS on the shipped 128-bin grid (bin centres, 0 not on the grid)."""
  e = np.linspace(-3.96875, 3.96875, 128)
  fine = np.linspace(-8, 8, 16001)
  sharp = np.sqrt(np.maximum(-fine, 0)) + np.sqrt(np.maximum(fine - 2.0, 0))
  sigma = 0.05
  kernel = np.exp(-0.5 * ((e[:, None] - fine[None, :]) / sigma) ** 2)
  dos = (kernel * sharp).sum(1) * (fine[1] - fine[0]) / (sigma * np.sqrt(2 * np.pi))
  got = dos_properties.band_gap(e, dos)
  assert 2.0 - 0.4 < got <= 2.0
  assert dos_properties.band_gap(e, dos, rel_threshold=1e-4) < got


def test_band_gap_on_shipped_edos_sample():
  root = os.path.join(paths.DATA_DIR, "edos_mat2spec", "label_edos")
  e = np.load(os.path.join(root, "energies_ev.npy"))
  dos = np.load(os.path.join(root, "total_dos_128.npy"))
  ids = np.loadtxt(os.path.join(root, "mpids.csv"), dtype=str, skiprows=1)
  table = np.loadtxt(os.path.join(root, "gaps_ev.csv"), dtype=str, delimiter=",", skiprows=1)
  gap_of = {k: float(v) for k, v in table}
  true = np.array([gap_of[i] for i in ids])
  est = dos_properties.band_gap(e, dos)
  assert np.all(est[true < 0.05] == 0.0)  # metals
  in_range = (true > 0.5) & (true < 3.9)
  assert np.corrcoef(est[in_range], true[in_range])[0, 1] > 0.9
  # Smearing narrows the window: measured median -0.49 eV with the defaults.
  assert -0.8 < np.median(est[in_range] - true[in_range]) < 0.0


# ---------------------------------------------------------------- shipped phonon data

def test_cv300_from_51_point_dos_matches_shipped_labels():
  ase_db = pytest.importorskip("ase.db")
  path = os.path.join(paths.DATA_DIR, "phdos", "phdos.db")
  with ase_db.connect(path) as db:
    freq = np.asarray(db.metadata["freq_cm"])
    rows = list(db.select())
  dos = np.stack([r.data["dos"] for r in rows])
  cv300 = np.array([r.cv300 for r in rows])
  rel = np.abs(dos_properties.heat_capacity(freq, dos, 300.0) - cv300) / cv300
  # Measured: mean 0.65 %, median 0.24 %, max 8.8 % (softest crystals, coarse 20 cm^-1 grid).
  assert np.mean(rel) < 0.01
  assert np.median(rel) < 0.005
  assert np.max(rel) < 0.12


def test_band_gap_default_threshold_gives_exact_widths_scale_free():
  """Known gap windows on the shipped 128-bin eDoS grid (bin centres, 0 eV off the grid),
  gaps off the bin grid, the default relative threshold, per-row scales: the estimate is
  the exact window width, so an off-by-one edge, a width counted in whole bins, a
  threshold taken from the batch instead of each row, or a constant answer all fail."""
  e = np.linspace(-3.96875, 3.96875, 128)
  gaps = np.array([0.33, 1.0, 1.77, 2.61])
  scales = np.array([1.0, 1e-3, 250.0, 7.0])
  # Linear edges of slope 4/eV: the DoS max is 4 x 3.96875 (the valence end), so the
  # threshold 0.05 x max crosses each edge 0.05 x 3.96875 = 0.198 eV (> 3 bins) outside it,
  # where linear interpolation is exact.
  dos = scales[:, None] * _ramp_dos(e[None, :], gaps[:, None], slope=4.0)
  got = dos_properties.band_gap(e, dos, rel_threshold=0.05)
  np.testing.assert_allclose(got, gaps + 2 * 0.05 * 3.96875, rtol=1e-9)
  np.testing.assert_allclose(dos_properties.band_gap(e, dos[::-1], rel_threshold=0.05), got[::-1],
                             rtol=1e-12)
  # Unscaled copies give the same gaps (the threshold is relative to each row's max).
  np.testing.assert_allclose(dos_properties.band_gap(e, dos / scales[:, None], rel_threshold=0.05), got,
                             rtol=1e-9)
  # Closing the gap (a metal) gives 0, not a width.
  metal = dos[1] + scales[1] * 10.0 * (np.abs(e) < 1.5)
  assert dos_properties.band_gap(e, metal, rel_threshold=0.05) == 0.0
