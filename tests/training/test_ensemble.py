"""Ensembles as one program (`config.train.ensemble_size`): K members vmapped in one
train step equal K single runs with the members' seeds; evaluation scores the members'
mean; predictions carry the member axis."""
import json
import os

import ase.build
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import smoke
from xtal2dos_jax import Predictor
from xtal2dos_jax.core.errors import InputError
from xtal2dos_jax.evaluation import evaluate
from xtal2dos_jax.inference import export, pretrained
from xtal2dos_jax.input_pipeline import batching
from xtal2dos_jax.physics import thermodynamics
from xtal2dos_jax.training import model_setup, restore, train
from xtal2dos_jax.training import checkpoints as checkpoints_lib
from xtal2dos_jax.training import workdir as workdir_lib
from xtal2dos_jax.training.config_check import validate


def _config(seed: int = 0, ensemble_size: int = 1):
  config = smoke.get_config()
  config.data.limit = 40
  config.train.num_epochs = 2
  config.train.patience = 100
  config.model.decoder_dropout = 0.1  # members must draw their own dropout masks
  config.seed = seed
  config.train.ensemble_size = ensemble_size
  return config


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, str]:
  """An ensemble of 2 (seed 0) and single runs with seeds 0 and 1, same data and budget."""
  root = tmp_path_factory.mktemp("ensemble")
  dirs = {"ensemble": str(root / "ensemble"), "seed0": str(root / "seed0"),
          "seed1": str(root / "seed1")}
  train.train_and_evaluate(_config(0, 2), dirs["ensemble"])
  train.train_and_evaluate(_config(0), dirs["seed0"])
  train.train_and_evaluate(_config(1), dirs["seed1"])
  return dirs


def _latest_params(workdir: str):
  config = workdir_lib.load_config(workdir)
  budget = workdir_lib.Workdir(workdir).load_setup().budget
  ckpt = checkpoints_lib.Checkpoints(workdir_lib.Workdir(workdir).checkpoint_dir)
  try:
    return ckpt.restore_latest(model_setup.abstract_train_state(config, budget)).state
  finally:
    ckpt.close()


def test_stacked_state_has_a_member_axis_and_member_seeds():
  budget = batching.Budget(n_node=64, n_edge=640, n_graph=5, max_atoms=16)
  single = [model_setup.create_train_state(_config(s), budget, 3) for s in (3, 4, 5)]
  stacked = model_setup.create_train_state(_config(3, 3), budget, 3)
  assert model_setup.ensemble_size_of_state(stacked) == 3
  assert model_setup.ensemble_size_of_state(single[0]) == 1
  for k, member in enumerate(single):
    chex.assert_trees_all_close(jax.tree.map(lambda x, k=k: x[k], stacked.params),
                                member.params)
    np.testing.assert_array_equal(stacked.rng[k], member.rng)
  with pytest.raises(InputError, match="config.train.ensemble_size: must be at least 1, got 0"):
    validate(_config(0, 0))


def test_ensemble_plan_pads_short_members_with_empty_groups():
  a = [[np.array([0, 1]), np.array([2])], [np.array([3]), np.zeros(0, np.int64)]]
  b = [[np.array([3, 2]), np.array([1, 0])]]
  plan = batching.ensemble_plan([a, b])
  assert len(plan) == 2 and len(plan[0]) == 2
  np.testing.assert_array_equal(plan[0][1][1], [1, 0])
  assert len(plan[1][0][1]) == 0 and len(plan[1][1][1]) == 0
  assert batching.step_crystals(plan[0]) == pytest.approx((3 + 4) / 2)


def test_vmapped_members_equal_separate_runs_with_their_seeds(runs):
  """The acceptance test: same init, dropout and data order per member, so after two
  epochs member k predicts what the single run with seed k predicts.

  Compared on the predictions, not weight by weight: directions the loss cannot see
  (attention key biases and the head bias under the softmax) get gradients of float
  noise, ~1e-8, which Adam's g / (|g| + eps) turns into updates of any sign; they change
  no output."""
  ensemble = _latest_params(runs["ensemble"])
  loaded, data = restore.restore_run_and_data(runs["ensemble"])
  part = data.splits["test"]
  members = loaded.trainer.predict(loaded.trainer.replicate(ensemble.params), part,
                                   data.budget)
  for k, name in enumerate(("seed0", "seed1")):
    single = _latest_params(runs[name])
    assert int(ensemble.step[k]) == int(single.step)
    own = loaded.trainer.predict(loaded.trainer.replicate(
        jax.tree.map(lambda x: jnp.stack([x, x]), single.params)), part, data.budget)
    chex.assert_trees_all_close(members[k], own[0], rtol=1e-4, atol=1e-6)
  assert not np.allclose(members[0], members[1], atol=1e-3)  # two different models


def test_evaluation_scores_the_members_mean(runs):
  loaded, data = restore.restore_run_and_data(runs["ensemble"])
  part = data.splits["test"]
  members = restore.predict_members(loaded, part, data.budget)
  chex.assert_shape(members, (2, len(part.graphs), data.grid.shape[0]))
  out = evaluate.evaluate_run(runs["ensemble"], "test")
  saved = np.load(os.path.join(runs["ensemble"], "predictions_test.npz"))
  _, mean_original = data.scaler.metric_predictions(members.mean(0), part.y_scale)
  chex.assert_trees_all_close(saved["y_pred"], np.asarray(mean_original), rtol=1e-5,
                              atol=1e-7)
  _, per_member = data.scaler.metric_predictions(members, part.y_scale[None])
  chex.assert_trees_all_close(saved["y_std"], np.asarray(per_member).std(0), rtol=1e-4,
                              atol=1e-7)
  chex.assert_shape(saved["y_members"], members.shape)
  # R^2 of the mean prediction on the normalised scale, recomputed in numpy
  y = part.y
  pred, _ = data.scaler.metric_predictions(members.mean(0), part.y_scale)
  sst = ((y - y.mean(0)) ** 2).sum(0)
  keep = sst > 1e-6 * (y ** 2).sum(0)   # scikit-learn skips constant positions
  r2 = 1 - ((y - pred) ** 2).sum(0)[keep].sum() / sst[keep].sum()
  assert out["test"]["normalized"]["r2"] == pytest.approx(float(r2), rel=1e-4, abs=1e-5)
  with open(os.path.join(runs["ensemble"], "results.json")) as f:
    results = json.load(f)
  assert results["metrics"]["test"]["normalized"]["r2"] == pytest.approx(
      out["test"]["normalized"]["r2"], rel=1e-5, abs=1e-6)
  calibration = out["test"]["calibration"]
  for key in ("coverage_1sigma", "coverage_2sigma", "spread_error_correlation",
              "recalibration_factor"):
    assert np.isfinite(calibration[key])
  err = np.abs(saved["y_true"] - saved["y_pred"])
  inside = (err <= saved["y_std"]).mean()
  assert calibration["coverage_1sigma"] == pytest.approx(float(inside), abs=1e-6)


def test_single_model_fine_tunes_every_member(runs):
  state = model_setup.create_train_state(
      _config(5, 2), workdir_lib.Workdir(runs["seed0"]).load_setup().budget, 3)
  tuned = model_setup.init_from_run(state, runs["seed0"])
  source = restore.restore_run_and_data(runs["seed0"])[0]
  one = jax.tree.map(lambda x: np.asarray(x[0]), source.params)
  for k in range(2):
    chex.assert_trees_all_close(jax.tree.map(lambda x, k=k: x[k], tuned.params), one)


def test_exported_ensemble_carries_its_validation_spread(runs, tmp_path):
  """Export fits the high-spread threshold and the std factors on the validation split;
  a prediction's stds are the members' std times those factors."""
  path = export.export_run(runs["ensemble"], str(tmp_path / "ens"))
  model = pretrained.load_exported(path)
  data = restore.load_eval_data(runs["ensemble"])
  val = data.splits["validation"]
  members = model.predict_members(val, data.budget)
  n = val.graphs.n_node.astype(np.float64)
  to_modes = (3.0 * n / float(model.grid[1] - model.grid[0]))[:, None]
  true, phys = val.y * to_modes, members * to_modes[None]
  spread = phys.std(0).sum(1) / phys.mean(0).sum(1)
  assert model.spread_threshold == pytest.approx(np.quantile(spread, 0.95), rel=1e-5)
  m, s = phys.mean(0), phys.std(0)
  keep = s > 0
  assert model.std_scale["dos"] == pytest.approx(
      np.quantile(np.abs(true - m)[keep] / s[keep], 0.6827), rel=1e-4)
  assert "cv300_J_per_K_mol" in model.std_scale
  assert "validation split" in open(os.path.join(path, "model_card.md")).read()
  structures = [ase.build.bulk("NaCl", "rocksalt", a=5.64), ase.build.bulk("Si", "diamond", a=5.43)]
  pred = Predictor.from_exported(path).predict(structures)
  assert pred.std_scale == model.std_scale
  chex.assert_trees_all_close(pred.dos_std, pred.dos_members.std(0) * model.std_scale["dos"],
                              rtol=1e-5)
  cv = np.stack([thermodynamics.phonon_thermodynamics(pred.grid, x, pred.n_atoms, 300.0)
                 ["cv_J_per_K_mol"] for x in pred.dos_members])
  chex.assert_trees_all_close(pred.thermodynamics_std["cv300_J_per_K_mol"],
                              cv.std(0) * model.std_scale["cv300_J_per_K_mol"], rtol=1e-5)


def test_recalibration_factor_restores_one_sigma_coverage():
  """Errors drawn with 3x the predicted spread: the factor is ~3, and ignores values
  whose spread is 0; the coverage is counted as in numpy."""
  from xtal2dos_jax.evaluation import calibration
  rng = np.random.default_rng(0)
  std = rng.uniform(0.5, 2.0, 20000)
  err = 3.0 * std * rng.standard_normal(20000)
  std_with_zero = np.concatenate([std, np.zeros(5)])
  err_with_zero = np.concatenate([err, np.ones(5)])
  factor = calibration.recalibration_factor(err_with_zero, np.zeros(20005), std_with_zero)
  assert factor == pytest.approx(3.0, rel=0.03)
  assert calibration.coverage(err, 0.0, factor * std, 1) == pytest.approx(0.6827, abs=1e-3)
  assert calibration.coverage(err, 0.0, std, 1) == pytest.approx(np.mean(np.abs(err) <= std))
  report = calibration.calibration_report(err[:, None], np.zeros((20000, 1)), std[:, None],
                                          factor)
  assert report["coverage_2sigma_recalibrated"] == pytest.approx(0.9545, abs=0.01)
  assert report["spread_error_correlation"] > 0.2   # bigger spread, bigger error
