"""A run directory and an exported model written by xtal2dos_jax 0.1.0 still restore and
predict the numbers that version gave (tests/fixtures/legacy_0_1_0/README.md).

The fixtures were written once by that version's code and are never regenerated, so these
tests fail when a change renames a parameter key, a registry string, a run-dir file or
the way a saved config is read, however the code around them is arranged.
"""
import json
import os
import shutil

import ase
import ase.build
import chex
import numpy as np
import pytest

from xtal2dos_jax import Predictor
from xtal2dos_jax.evaluation import evaluate

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "legacy_0_1_0")
IDS = ["NaCl", "Si", "MgAlO"]
# float32 predictions recompiled by another XLA (or with other flags) move by ~1e-8 in
# absolute terms; a model restored with other weights moves them by ~1e-3.
TOL = dict(rtol=1e-5, atol=1e-7)


def _structures() -> list[ase.Atoms]:
  tri = ase.Atoms("MgAlO", scaled_positions=[[0, 0, 0], [0.48, 0.31, 0.22], [0.21, 0.67, 0.59]],
                  cell=[[4.2, 0.3, 0.2], [0.6, 4.0, 0.3], [0.4, 0.5, 4.4]], pbc=True)
  return [ase.build.bulk("NaCl", "rocksalt", a=5.64), ase.build.bulk("Si", "diamond", a=5.43),
          tri]


@pytest.fixture(scope="module")
def expected() -> dict:
  with open(os.path.join(FIXTURES, "expected.json")) as f:
    return json.load(f)


def _close(actual, want) -> None:
  chex.assert_trees_all_close(np.asarray(actual, np.float64), np.asarray(want, np.float64),
                              **TOL)


def test_old_run_dir_predicts_what_it_predicted(expected, tmp_path):
  run = shutil.copytree(os.path.join(FIXTURES, "run_smoke"), tmp_path / "run")
  pred = Predictor(str(run)).predict(_structures(), ids=IDS)
  want = expected["run_smoke"]
  chex.assert_shape(pred.dos_mean, (3, 51))
  _close(pred.dos_mean, want["dos_mean"])
  _close(pred.thermodynamics["cv300_J_per_K_mol"], want["cv300"])
  # the predictions differ between crystals, so a model restored with other weights (or
  # a uniform output) cannot pass
  assert np.abs(np.diff(np.asarray(want["dos_mean"]), axis=0)).max() > 1e-4


def test_old_exported_ensemble_predicts_what_it_predicted(expected):
  pred = Predictor.from_exported(os.path.join(FIXTURES, "exported_smoke_ens2")).predict(
      _structures(), ids=IDS)
  want = expected["exported_smoke_ens2"]
  assert pred.num_members == 2
  _close(pred.dos_mean, want["dos_mean"])
  _close(pred.dos_std, want["dos_std"])
  _close(pred.thermodynamics["cv300_J_per_K_mol"], want["cv300"])
  _close(pred.thermodynamics_std["cv300_J_per_K_mol"], want["cv300_std"])
  assert pred.flags == want["flags"]


def test_old_run_dir_evaluates_to_the_same_metrics(expected, tmp_path):
  run = shutil.copytree(os.path.join(FIXTURES, "run_smoke"), tmp_path / "run")
  out = evaluate.evaluate_run(str(run), "test")["test"]
  want = expected["evaluate_test"]
  for scale in ("normalized", "original"):
    for key, value in want[scale].items():
      _close(out[scale][key], value)
  _close(out["loss"], want["loss"])
