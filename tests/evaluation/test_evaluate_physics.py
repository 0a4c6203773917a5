"""C_v(300 K) and mean-frequency errors of evaluation against an independent numpy reference.

The reference below is written from the formulas, not from xtal2dos_jax.physics.dos_properties:
  g_3N = g * 3N / ∫ g dω,   C_v/N = (N_A k_B / N) ∫ g_3N E(x) dω,   E(x) = x² eˣ / (eˣ - 1)²,
  x = h c ω / (k_B T) (E(0) = 1),   <ω> = ∫ ω g dω / ∫ g dω,
integrals by the trapezoid rule written out as weights, constants CODATA 2018 (exact SI).
"""
import ast
import csv
import json
import os

import chex
import numpy as np
import pytest

from configs import smoke
from xtal2dos_jax.core.errors import InputError
from xtal2dos_jax.physics import dos_properties
from xtal2dos_jax.training.config_check import validate

# CODATA 2018 exact values, SI.
PLANCK = 6.62607015e-34        # J s
LIGHT = 299792458.0            # m/s
BOLTZMANN = 1.380649e-23       # J/K
AVOGADRO = 6.02214076e23       # 1/mol
GAS = AVOGADRO * BOLTZMANN     # J/(K mol)
DFPT_GRID = np.arange(51) * 20.0  # cm^-1, the benchmark's grid


def _trapezoid_weights(x):
  """w with sum(w * y) = trapezoid integral of y over the (possibly non-uniform) grid x."""
  w = np.zeros_like(x, dtype=np.float64)
  d = np.diff(x)
  w[:-1] += d / 2
  w[1:] += d / 2
  return w


def _einstein(x):
  out = np.ones_like(x, dtype=np.float64)
  pos = x > 0
  xp = x[pos]
  out[pos] = xp ** 2 * np.exp(xp) / (np.exp(xp) - 1.0) ** 2
  return out


def _reference(freq, dos, n_atoms, temperature=300.0):
  """(C_v in J/K/mol-atom, mean frequency in cm^-1) per row, float64[n] each."""
  freq = np.asarray(freq, np.float64)
  dos = np.maximum(np.asarray(dos, np.float64), 0.0)
  n = np.asarray(n_atoms, np.float64)
  w = _trapezoid_weights(freq)
  g = dos * (3.0 * n / (dos @ w))[:, None]
  x = PLANCK * (LIGHT * 100.0) * freq / (BOLTZMANN * temperature)  # c in cm/s: ω in cm^-1
  cv_cell = GAS * (g * _einstein(x)[None, :]) @ w
  mean = (g * freq[None, :]) @ w / (g @ w)
  return cv_cell / n, mean


def _random_dos(rng, n, l=51):
  """Smooth, positive, DoS-like rows (a few Gaussians), max-normalised like the labels."""
  centres = rng.uniform(50, 900, (n, 3, 1))
  widths = rng.uniform(15, 120, (n, 3, 1))
  amps = rng.uniform(0.2, 1.0, (n, 3, 1))
  grid = np.arange(l) * (1000.0 / (l - 1))
  dos = (amps * np.exp(-0.5 * ((grid - centres) / widths) ** 2)).sum(1)
  return dos / dos.max(1, keepdims=True)


# ---------------------------------------------------------------- hand-made DoS


def test_constants_agree_with_the_module():
  np.testing.assert_allclose(dos_properties.R_GAS, GAS, rtol=1e-15)
  np.testing.assert_allclose(dos_properties.HC_OVER_KB, PLANCK * LIGHT * 100 / BOLTZMANN, rtol=1e-15)
  np.testing.assert_allclose(3 * GAS, 24.943387854, rtol=1e-10)  # Dulong-Petit, J/K/mol-atom


@pytest.mark.parametrize("omega_e", [20.0, 300.0, 580.0, 980.0])
def test_einstein_solid_on_the_dfpt_grid(omega_e):
  """All weight in one interior bin: the trapezoid rule integrates it exactly, so
  C_v per mole of atoms is 3R E(hcω_E/k_BT) for any N and any peak height."""
  k = int(round(omega_e / 20.0))
  dos = np.zeros((3, 51))
  dos[:, k] = [1.0, 0.37, 250.0]
  n_atoms = np.array([1, 2, 7])
  x = PLANCK * LIGHT * 100 * omega_e / (BOLTZMANN * 300.0)
  expected = 3 * GAS * x ** 2 * np.exp(x) / np.expm1(x) ** 2
  got = dos_properties.phonon_properties(DFPT_GRID, dos, n_atoms)
  np.testing.assert_allclose(got["cv_J_per_K_mol_atom"], expected, rtol=1e-12)
  np.testing.assert_allclose(got["cv_J_per_K_mol_cell"], expected * n_atoms, rtol=1e-12)
  np.testing.assert_allclose(got["mean_freq_cm"], omega_e, rtol=1e-12)


def test_einstein_solid_broadened_peak_and_high_temperature_limit():
  freq = np.linspace(0.0, 1000.0, 20001)
  dos = np.exp(-0.5 * ((freq - 400.0) / 0.5) ** 2)[None, :]
  x = PLANCK * LIGHT * 100 * 400.0 / (BOLTZMANN * 300.0)
  einstein = 3 * GAS * x ** 2 * np.exp(x) / np.expm1(x) ** 2
  got = dos_properties.phonon_properties(freq, dos, [4], 300.0)["cv_J_per_K_mol_atom"]
  np.testing.assert_allclose(got, einstein, rtol=1e-5)  # peak width ~ sigma^2 f''/2f
  # High temperature: every mode carries k_B, C_v -> 3R = 24.94 J/K/mol-atom from below.
  hot = dos_properties.phonon_properties(DFPT_GRID, _random_dos(np.random.default_rng(1), 4),
                                  np.arange(1, 5), 1e6)["cv_J_per_K_mol_atom"]
  np.testing.assert_allclose(hot, 24.9434, rtol=1e-6)
  assert np.all(hot <= 3 * GAS * (1 + 1e-12))


def test_zero_frequency_bin_is_the_classical_limit():
  dos = np.zeros((2, 51))
  dos[0, 0] = 1.0                 # all weight at ω = 0: E(0) = 1 exactly, C_v = 3R
  dos[1] = 1.0                    # flat DoS including the ω = 0 bin
  got = dos_properties.phonon_properties(DFPT_GRID, dos, [3, 5])
  chex.assert_tree_all_finite(got["cv_J_per_K_mol_atom"])
  np.testing.assert_allclose(got["cv_J_per_K_mol_atom"][0], 3 * GAS, rtol=1e-14)
  assert got["mean_freq_cm"][0] == 0.0
  ref_cv, ref_mean = _reference(DFPT_GRID, dos, [3, 5])
  np.testing.assert_allclose(got["cv_J_per_K_mol_atom"], ref_cv, rtol=1e-12)
  np.testing.assert_allclose(got["mean_freq_cm"][1], 500.0, rtol=1e-12)


def test_results_do_not_depend_on_the_label_scale():
  """max-normalised, sum-normalised and physical (3N-mode) labels give the same numbers."""
  rng = np.random.default_rng(0)
  n_atoms = rng.integers(2, 41, 16)
  shape = _random_dos(rng, 16)
  physical = shape * (3 * n_atoms / (shape @ _trapezoid_weights(DFPT_GRID)))[:, None]
  variants = [shape, shape / shape.sum(1, keepdims=True), physical,
              physical / physical.max(1, keepdims=True)]
  outs = [dos_properties.phonon_properties(DFPT_GRID, v, n_atoms) for v in variants]
  for o in outs[1:]:
    for key in o:
      np.testing.assert_allclose(o[key], outs[0][key], rtol=1e-12)
  g = dos_properties.rescale_to_modes(DFPT_GRID, variants[1], n_atoms)
  np.testing.assert_allclose(g @ _trapezoid_weights(DFPT_GRID), 3 * n_atoms, rtol=1e-12)
  np.testing.assert_allclose(g, physical, rtol=1e-12)
  # N cancels in C_v per mole of atoms (it is 3R <E>_g); per cell it scales with N.
  other_n = dos_properties.phonon_properties(DFPT_GRID, shape, n_atoms + 3)
  np.testing.assert_allclose(other_n["cv_J_per_K_mol_atom"], outs[0]["cv_J_per_K_mol_atom"],
                             rtol=1e-12)
  np.testing.assert_allclose(other_n["cv_J_per_K_mol_cell"],
                             outs[0]["cv_J_per_K_mol_atom"] * (n_atoms + 3), rtol=1e-12)


def test_phonon_errors_match_the_independent_reference():
  rng = np.random.default_rng(2)
  n = 40
  n_atoms = rng.integers(2, 41, n)
  true = _random_dos(rng, n)
  pred = np.clip(true + 0.15 * rng.standard_normal(true.shape), 0, None) * rng.uniform(0.1, 9, (n, 1))
  pred[:5] -= 0.05                # some negative values, as a standardized head can give
  summary, per = dos_properties.phonon_errors(DFPT_GRID, true, pred, n_atoms)
  cv_t, w_t = _reference(DFPT_GRID, true, n_atoms)
  cv_p, w_p = _reference(DFPT_GRID, pred, n_atoms)   # negatives clipped to 0 in the reference
  np.testing.assert_allclose(per["cv300_true_J_per_K_mol_atom"], cv_t, rtol=1e-12)
  np.testing.assert_allclose(per["cv300_pred_J_per_K_mol_atom"], cv_p, rtol=1e-12)
  np.testing.assert_allclose(per["mean_freq_true_cm"], w_t, rtol=1e-12)
  np.testing.assert_allclose(per["mean_freq_pred_cm"], w_p, rtol=1e-12)
  assert summary["kind"] == "phonon" and summary["count"] == n and summary["n_excluded"] == 0
  assert summary["temperature_K"] == 300.0
  np.testing.assert_allclose(summary["cv300_mae_J_per_K_mol_atom"], np.mean(np.abs(cv_p - cv_t)),
                             rtol=1e-12)
  np.testing.assert_allclose(summary["cv300_mse_J2_per_K2_mol2_atom"], np.mean((cv_p - cv_t) ** 2),
                             rtol=1e-12)
  np.testing.assert_allclose(summary["cv300_mean_rel_error"], np.mean(np.abs(cv_p - cv_t) / cv_t),
                             rtol=1e-12)
  np.testing.assert_allclose(summary["cv300_true_mean_J_per_K_mol_atom"], cv_t.mean(), rtol=1e-12)
  np.testing.assert_allclose(summary["mean_freq_mae_cm"], np.mean(np.abs(w_p - w_t)), rtol=1e-12)
  np.testing.assert_allclose(summary["mean_freq_mse_cm2"], np.mean((w_p - w_t) ** 2), rtol=1e-12)
  np.testing.assert_allclose(summary["mean_freq_mean_rel_error"],
                             np.mean(np.abs(w_p - w_t) / w_t), rtol=1e-12)
  # A perfect prediction at another scale has zero error.
  perfect, _ = dos_properties.phonon_errors(DFPT_GRID, true, 17.0 * true, n_atoms)
  assert perfect["cv300_mae_J_per_K_mol_atom"] < 1e-12 and perfect["mean_freq_mae_cm"] < 1e-9
  json.dumps(summary, allow_nan=False)


def test_phonon_errors_leave_out_crystals_without_weight():
  rng = np.random.default_rng(3)
  true = _random_dos(rng, 5)
  pred = true.copy()
  pred[1] = 0.0
  pred[3] = -1.0                  # all negative: nothing left after clipping
  pred[4] *= 1.1
  summary, per = dos_properties.phonon_errors(DFPT_GRID, true, pred, np.full(5, 4))
  assert summary["count"] == 3 and summary["n_excluded"] == 2
  assert np.isnan(per["cv300_pred_J_per_K_mol_atom"][[1, 3]]).all()
  assert np.isfinite(per["cv300_true_J_per_K_mol_atom"]).all()
  assert summary["cv300_mae_J_per_K_mol_atom"] < 1e-12
  table = dos_properties.physics_table(summary)
  assert "2 without weight left out" in table
  none, _ = dos_properties.phonon_errors(DFPT_GRID, true[:2], np.zeros((2, 51)), [2, 2])
  assert none["count"] == 0 and none["cv300_mae_J_per_K_mol_atom"] is None
  json.dumps(none, allow_nan=False)
  assert "n/a" in dos_properties.physics_table(none)


def test_physics_table_lines():
  rng = np.random.default_rng(4)
  true = _random_dos(rng, 8)
  summary, _ = dos_properties.phonon_errors(DFPT_GRID, true, true[::-1], np.arange(2, 10))
  lines = dos_properties.physics_table(summary).splitlines()
  assert len(lines) == 2
  assert lines[0].startswith("C_v(300 K)") and "J/K/mol-atom" in lines[0]
  assert f"{summary['cv300_mae_J_per_K_mol_atom']:.3f}" in lines[0] and "8 crystals" in lines[0]
  assert lines[1].startswith("mean frequency") and "cm^-1" in lines[1]
  assert f"{summary['mean_freq_mae_cm']:.2f}" in lines[1]
  assert dos_properties.physics_table(None) == "" and dos_properties.physics_table({}) == ""


def test_band_gap_errors_on_hand_made_gaps():
  e = np.linspace(-3.96875, 3.96875, 128)   # the eDoS grid: bin centres, 0 eV not on it
  ramp = lambda gap: 5.0 * (np.maximum(-e, 0) + np.maximum(e - gap, 0))
  true = np.stack([ramp(g) for g in (0.7, 1.3, 2.2)])
  pred = np.stack([ramp(g) for g in (0.5, 1.3, 2.9)]) * 3.0   # scale must not matter
  summary, per = dos_properties.band_gap_errors(e, true, pred)
  assert summary["kind"] == "electronic" and summary["count"] == 3
  np.testing.assert_allclose(per["band_gap_true_eV"], dos_properties.band_gap(e, true), rtol=1e-12)
  np.testing.assert_allclose(per["band_gap_pred_eV"], dos_properties.band_gap(e, pred / 3.0), rtol=1e-12)
  np.testing.assert_allclose(summary["band_gap_mae_eV"],
                             np.mean(np.abs(per["band_gap_pred_eV"] - per["band_gap_true_eV"])),
                             rtol=1e-12)
  # The estimates follow the gaps to within the threshold offset and a bin (0.0625 eV).
  np.testing.assert_allclose(per["band_gap_true_eV"], [0.7, 1.3, 2.2], atol=0.0625 + 0.08)
  np.testing.assert_allclose(per["band_gap_pred_eV"] - per["band_gap_true_eV"],
                             [-0.2, 0.0, 0.7], atol=0.0625)
  assert "band gap" in dos_properties.physics_table(summary)
  config = smoke.get_config()
  config.data.kind = "magnetic"
  with pytest.raises(InputError, match="config.data.kind: unknown kind 'magnetic'"):
    validate(config)


# ---------------------------------------------------------------- a real tiny trained run


def _read_dfpt_csv(path):
  """id -> (atoms per cell, 51-point DoS) straight from the shipped CSV."""
  csv.field_size_limit(1 << 30)
  out = {}
  with open(path, newline="") as f:
    for row in csv.DictReader(f):
      s = ast.literal_eval(row["structure"])
      freq = np.asarray(ast.literal_eval(row["phfreq"]), np.float64)
      np.testing.assert_allclose(freq, DFPT_GRID, atol=1e-6)
      out[row["mp_id"]] = (len(s["numbers"]), np.asarray(ast.literal_eval(row["phdos"])))
  return out


@pytest.fixture(scope="module")
def dfpt_run(tmp_path_factory):
  from xtal2dos_jax.input_pipeline import readers
  from xtal2dos_jax.training import train
  config = smoke.get_config()
  config.data.format = "phonondos_csv"
  config.data.path = readers.embedded_dfpt_path()
  config.data.l_y, config.data.grid_start, config.data.grid_stop = 51, 0.0, 1000.0
  config.data.kind = "phonon"
  config.data.limit = 40
  config.train.num_epochs = 1
  workdir = str(tmp_path_factory.mktemp("dfpt_run"))
  train.train_and_evaluate(config, workdir)
  return workdir, config.data.path


@pytest.mark.slow
@pytest.mark.parametrize("split", ["train", "test"])
def test_evaluate_reports_physics_of_a_trained_run(dfpt_run, split):
  from xtal2dos_jax.evaluation import evaluate
  workdir, csv_path = dfpt_run
  out = evaluate.evaluate_run(workdir, split)
  summary = out[split]["physics"]
  with open(os.path.join(workdir, f"eval_{split}.json")) as f:
    assert json.load(f)[split]["physics"] == summary
  with np.load(os.path.join(workdir, f"predictions_{split}.npz")) as z:
    z = dict(z)
  raw = _read_dfpt_csv(csv_path)
  ids = [str(i) for i in z["ids"]]
  n_atoms = np.array([raw[i][0] for i in ids])
  true = np.stack([raw[i][1] for i in ids])
  np.testing.assert_array_equal(z["n_atoms"], n_atoms)     # N from the featurised cell
  np.testing.assert_allclose(z["y_true"], true, rtol=1e-6, atol=1e-7)
  cv_t, w_t = _reference(DFPT_GRID, true, n_atoms)
  cv_p, w_p = _reference(DFPT_GRID, z["y_pred"], n_atoms)
  np.testing.assert_allclose(z["cv300_true_J_per_K_mol_atom"], cv_t, rtol=1e-6)
  np.testing.assert_allclose(z["cv300_pred_J_per_K_mol_atom"], cv_p, rtol=1e-9)
  np.testing.assert_allclose(z["mean_freq_true_cm"], w_t, rtol=1e-6)
  np.testing.assert_allclose(z["mean_freq_pred_cm"], w_p, rtol=1e-9)
  assert summary["count"] == len(ids) and summary["n_excluded"] == 0
  np.testing.assert_allclose(summary["cv300_mae_J_per_K_mol_atom"], np.mean(np.abs(cv_p - cv_t)),
                             rtol=1e-5)
  np.testing.assert_allclose(summary["mean_freq_mae_cm"], np.mean(np.abs(w_p - w_t)), rtol=1e-5)
  np.testing.assert_allclose(summary["cv300_mean_rel_error"],
                             np.mean(np.abs(cv_p - cv_t) / cv_t), rtol=1e-5)
  # The true values are physical: 0 < C_v < 3R per mole of atoms, mean ω inside the grid.
  assert np.all((cv_t > 0) & (cv_t < 3 * GAS)) and np.all((w_t > 0) & (w_t < 1000))
  # The normalised prediction gives the same numbers (the 3N rescaling removes the scale).
  again, _ = dos_properties.phonon_errors(DFPT_GRID, true, z["y_pred"] / z["y_pred"].sum(1, keepdims=True),
                                   n_atoms)
  np.testing.assert_allclose(again["cv300_mae_J_per_K_mol_atom"],
                             summary["cv300_mae_J_per_K_mol_atom"], rtol=1e-5)
  assert dos_properties.physics_table(summary).count("\n") == 1
