"""End-to-end training, resume, evaluate and predict on the smoke config."""
import json
import os
import shutil
import signal

import ase.io
import chex
import jax
import numpy as np
import pytest
from ase.build import bulk

from configs import smoke
from xtal2dos_jax.core.errors import InputError
from xtal2dos_jax.evaluation import evaluate
from xtal2dos_jax.inference import predictor
from xtal2dos_jax.input_pipeline import readers, run_data
from xtal2dos_jax.physics import thermodynamics
from xtal2dos_jax.training import optimizers, preemption, restore, train, train_steps
from xtal2dos_jax.training import checkpoints as checkpoints_lib
from xtal2dos_jax.training import workdir as workdir_lib
from xtal2dos_jax.training.config_check import validate


def _config(**train_overrides):
  config = smoke.get_config()
  config.data.limit = 60
  config.train.num_epochs = 2
  config.train.batch_size = 16
  for k, v in train_overrides.items():
    config.train[k] = v
  return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """One finished smoke run shared by the tests below: (workdir, summary, config).

  It trains on a copy of the dataset that is deleted right after training, so what
  the tests then do with the workdir (evaluate, predict, rerun) needs the workdir alone.
  """
  data = tmp_path_factory.mktemp("data") / "phdos_dfpt.csv"
  shutil.copy(readers.embedded_dfpt_path(), data)
  config = _config()
  config.data.path = str(data)
  workdir = str(tmp_path_factory.mktemp("run"))
  summary = train.train_and_evaluate(config, workdir)
  os.remove(data)
  return workdir, summary, config


def _final_params(workdir, config):
  """Parameters of the latest checkpoint of a run."""
  ckpt = checkpoints_lib.Checkpoints(workdir_lib.Workdir(workdir).checkpoint_dir)
  step = ckpt.latest.latest_step()
  restored = ckpt.latest.restore(step)
  ckpt.close()
  return restored["state"]["params"]


@pytest.mark.slow
def test_train_writes_run_files_and_metrics(trained):
  workdir, summary, _ = trained
  for name in ("config.json", "run.json", "splits.json", "label_scaler.json", "setup.json",
               "metrics.jsonl", "results.json", "eval_data/validation.npz",
               "eval_data/test_labels.npz"):
    assert os.path.exists(os.path.join(workdir, name)), name
  setup = json.load(open(os.path.join(workdir, "setup.json")))
  assert setup["l_y"] == len(setup["grid"]) == 51
  assert setup["grid"][:2] == [0.0, 20.0]
  assert set(setup["budget"]) == {"n_node", "n_edge", "n_graph", "max_atoms"}
  assert setup["budget"]["n_graph"] == 17                       # batch 16 on one device
  lines = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [l["epoch"] for l in lines] == [1, 2]
  assert all(np.isfinite(l["train_loss"]) and np.isfinite(l["val_loss"]) for l in lines)
  splits = json.load(open(os.path.join(workdir, "splits.json")))
  ids = splits["train"] + splits["validation"] + splits["test"]
  assert len(ids) == len(set(ids)) == 60
  for split in ("validation", "test"):
    for scale in ("normalized", "original"):
      m = summary["metrics"][split][scale]
      assert set(m) >= {"r2", "mae", "mse", "wd", "wd_physical", "count"}
      assert m["count"] == len(splits[split])
      assert np.isfinite([m["r2"], m["mae"], m["mse"], m["wd"]]).all()
  run = json.load(open(os.path.join(workdir, "run.json")))
  assert run["seed"] == 0 and "jax" in run["versions"]


@pytest.mark.slow
def test_finished_run_is_not_retrained(trained, monkeypatch):
  workdir, summary, config = trained
  monkeypatch.setattr(train.Trainer, "__init__", lambda *a, **k: pytest.fail("retrained"))
  again = train.train_and_evaluate(config, workdir)
  assert again["metrics"] == json.loads(json.dumps(summary["metrics"]))


def test_workdir_with_other_config_is_refused(trained):
  workdir, _, config = trained
  config = config.copy_and_resolve_references()
  config.model.d_model = 32
  with pytest.raises(InputError, match=r"different config \(model.d_model: 16 -> 32"):
    train.train_and_evaluate(config, workdir)


def test_workdir_from_before_train_fraction_still_resumes(trained, tmp_path):
  """A run saved before `data.train_fraction` existed is the same config (fraction 1)."""
  workdir, summary, config = trained
  old = str(tmp_path / "old")
  shutil.copytree(workdir, old)
  path = os.path.join(old, "config.json")
  saved = json.load(open(path))
  del saved["data"]["train_fraction"]
  json.dump(saved, open(path, "w"))
  again = train.train_and_evaluate(config, old)
  assert again["metrics"] == json.loads(json.dumps(summary["metrics"]))
  config = config.copy_and_resolve_references()
  config.data.train_fraction = 0.5
  with pytest.raises(InputError, match=r"different config \(data.train_fraction: 1.0 -> 0.5"):
    train.train_and_evaluate(config, old)


def test_train_fraction_shrinks_only_the_train_split():
  full = run_data.prepare_run_data(_config())
  config = _config()
  config.data.train_fraction = 0.5
  half = run_data.prepare_run_data(config)
  n_train = len(full.splits["train"].graphs)
  assert len(half.splits["train"].graphs) == round(n_train / 2)
  assert set(half.splits["train"].graphs.ids) < set(full.splits["train"].graphs.ids)
  for split in ("validation", "test"):
    assert list(half.splits[split].graphs.ids) == list(full.splits[split].graphs.ids)


@pytest.mark.slow
def test_evaluate_from_workdir_only(trained):
  """The dataset the run trained on is gone (see `trained`): evaluation reads the
  workdir only, and gives the training run's final metrics."""
  workdir, summary, config = trained
  assert not os.path.exists(config.data.path)
  out = evaluate.evaluate_run(workdir, "test")
  # The same best checkpoint and test split as at the end of training.
  for scale in ("normalized", "original"):
    chex.assert_trees_all_close(out["test"][scale], summary["metrics"]["test"][scale],
                                rtol=1e-5)
  assert out["checkpoint"] == {"kind": "best", "epoch": summary["best_epoch"],
                               "step": summary["best_epoch"] * 1_000_000}
  assert json.load(open(os.path.join(workdir, "eval_test.json")))["checkpoint"] == out["checkpoint"]
  with np.load(os.path.join(workdir, "predictions_test.npz")) as z:
    assert list(z["ids"]) == json.load(open(os.path.join(workdir, "splits.json")))["test"]
    chex.assert_shape(z["y_pred"], (len(z["ids"]), 51))
    chex.assert_trees_all_close(z["y_pred"].sum(1), z["y_true"].sum(1), rtol=1e-4)
    y, p = z["y_true"].astype(np.float64), z["y_pred"].astype(np.float64)
  # The table's numbers from the saved predictions, computed here from the definitions
  # (sklearn's variance-weighted R^2; WD on the bin-index grid, x 0.0625).
  for scale, (t, q) in {"original": (y, p),
                        "normalized": (y / y.sum(1, keepdims=True),
                                       p / p.sum(1, keepdims=True))}.items():
    sst = ((t - t.mean(0)) ** 2).sum(0)
    varies = sst > 1e-12 * (t ** 2).sum(0)  # constant positions carry no weight (sklearn)
    r2 = 1.0 - ((t - q) ** 2).sum(0)[varies].sum() / sst[varies].sum()
    cdf_t = np.cumsum(t / t.sum(1, keepdims=True), 1)
    cdf_q = np.cumsum(q / q.sum(1, keepdims=True), 1)
    wd = np.abs(cdf_t - cdf_q).sum(1).mean() * 0.0625
    m = out["test"][scale]
    np.testing.assert_allclose([m["r2"], m["mae"], m["mse"], m["wd"]],
                               [r2, np.abs(t - q).mean(), ((t - q) ** 2).mean(), wd],
                               rtol=2e-4, err_msg=scale)
  assert os.path.getsize(os.path.join(workdir, "eval_test.png")) > 1000


@pytest.mark.slow
def test_predict_reports_bad_files_and_finishes_the_rest(trained, tmp_path):
  workdir, _, config = trained
  assert not os.path.exists(config.data.path)  # the workdir and the structures only
  ase.io.write(tmp_path / "nacl.cif", bulk("NaCl", "rocksalt", a=5.64))
  ase.io.write(tmp_path / "si.vasp", bulk("Si"), format="vasp")
  (tmp_path / "broken.cif").write_text("data_x\n_cell_length_a 3\nloop_\n")
  lonely = ase.Atoms("Na", cell=[20, 20, 20], pbc=True)  # no neighbour within 8 A
  ase.io.write(tmp_path / "lonely.extxyz", lonely)
  out = predictor.predict_structures(workdir, str(tmp_path / "*"), str(tmp_path / "out"))
  assert sorted(os.path.basename(i) for i in out["ids"]) == ["nacl.cif", "si.vasp"]
  reasons = dict(out["skipped"])
  assert any("broken.cif" in k for k in reasons) and any("lonely" in k for k in reasons)
  assert "no neighbour" in next(v for k, v in reasons.items() if "lonely" in k)
  with np.load(tmp_path / "out" / "predictions.npz") as z:
    chex.assert_shape(z["dos_mean"], (2, 51))
    # Phonon DoS rescaled to 3N modes: sum * bin width = 3 * 2 atoms.
    chex.assert_trees_all_close(z["dos_mean"].sum(1) * 20.0, np.array([6.0, 6.0]), rtol=1e-4)
    assert np.all((z["cv300_J_per_K_mol"] > 0) & (z["cv300_J_per_K_mol"] < 6 * 8.3145))
    grid, dos, s300 = z["grid"], z["dos_mean"], z["s300_J_per_K_mol"]
    # The curves (0..1000 K) of the written DoS; the CSV's S(300 K) is theirs.
    expected = thermodynamics.phonon_thermodynamics(grid, dos, z["n_atoms"])
    chex.assert_shape(z["s_J_per_K_mol"], (2, 101))
    assert z["temperature_K"][30] == 300.0
    for key in ("cv_J_per_K_mol", "s_J_per_K_mol", "f_kJ_per_mol", "debye_temperature_nu2_K"):
      chex.assert_trees_all_close(z[key], expected[key], rtol=1e-6)
    chex.assert_trees_all_close(s300, z["s_J_per_K_mol"][:, 30], rtol=1e-12)
    assert np.all((s300 > 0) & np.isfinite(z["debye_temperature_moment_K"]))
  header = open(tmp_path / "out" / "predictions.csv").readline().strip().split(",")
  assert header[:16] == ["id", "formula", "n_atoms", "cv300_J_per_K_mol",
                         "cv300_J_per_K_mol_std", "s300_J_per_K_mol", "s300_J_per_K_mol_std",
                         "f300_kJ_per_mol", "f300_kJ_per_mol_std", "mean_frequency_cm",
                         "mean_frequency_cm_std", "debye_temperature_nu2_K",
                         "debye_temperature_nu2_K_std", "debye_temperature_moment_K",
                         "debye_temperature_moment_K_std", "flag"]
  with pytest.raises(InputError, match="already holds predictions.csv"):
    predictor.predict_structures(workdir, str(tmp_path / "*.cif"), str(tmp_path / "out"))


def test_evaluate_without_run_is_one_line_error(tmp_path):
  with pytest.raises(InputError, match="not a training workdir"):
    evaluate.evaluate_run(str(tmp_path))


@pytest.mark.slow
def test_corrupt_checkpoint_is_named(trained, tmp_path):
  import shutil
  workdir = str(tmp_path / "copy")
  shutil.copytree(trained[0], workdir)
  best = os.path.join(workdir, "checkpoints", "best")
  step_dir = os.path.join(best, os.listdir(best)[0])
  for root, _, files in os.walk(os.path.join(step_dir, "state")):
    for f in files:
      with open(os.path.join(root, f), "wb") as fh:
        fh.write(b"\0garbage")
  with pytest.raises(InputError, match="checkpoint cannot be restored"):
    evaluate.evaluate_run(workdir)


@pytest.mark.slow
def test_preempted_run_resumes_to_the_same_result(tmp_path, monkeypatch):
  """SIGTERM mid-epoch -> checkpoint + Preempted; rerun == uninterrupted run."""
  config = _config(num_epochs=2)
  straight = str(tmp_path / "straight")
  train.train_and_evaluate(config, straight)

  interrupted = str(tmp_path / "interrupted")
  original_init = train.Trainer.__init__

  def init_with_preemption(self, *args, **kwargs):
    original_init(self, *args, **kwargs)
    step_fn, calls = self.p_train_step, [0]

    def step(*a):
      calls[0] += 1
      if calls[0] == 5:  # epochs have 3 steps: stop in the middle of the second
        os.kill(os.getpid(), signal.SIGTERM)
      return step_fn(*a)
    self.p_train_step = step

  monkeypatch.setattr(train.Trainer, "__init__", init_with_preemption)
  # Preempted exactly once: the signal handler is only installed while training.
  with pytest.raises(preemption.Preempted, match="rerun to resume"):
    train.train_and_evaluate(config, interrupted)
  assert not os.path.exists(os.path.join(interrupted, "results.json"))
  monkeypatch.setattr(train.Trainer, "__init__", original_init)
  train.train_and_evaluate(config, interrupted)

  chex.assert_trees_all_close(_final_params(interrupted, config), _final_params(straight, config),
                              rtol=1e-6, atol=1e-7)
  a = [json.loads(l) for l in open(os.path.join(straight, "metrics.jsonl"))]
  b = [json.loads(l) for l in open(os.path.join(interrupted, "metrics.jsonl"))]
  assert [x["val_loss"] for x in a] == pytest.approx([x["val_loss"] for x in b], rel=1e-6)
  # The preempted epoch's training loss covers its steps before and after the stop.
  assert [x["train_loss"] for x in a] == pytest.approx([x["train_loss"] for x in b], rel=1e-6)


@pytest.mark.slow
def test_edos_config_trains_evaluates_and_predicts_band_gaps(tmp_path):
  from configs import edos
  config = edos.get_config()
  config.model.d_model, config.model.num_heads, config.model.ff_dim = 16, 2, 32
  config.model.encoder_layers, config.model.decoder_layers = 1, 1
  config.train.num_epochs, config.train.batch_size, config.train.progress = 1, 32, False
  config.data.limit = 60
  workdir = str(tmp_path / "edos")
  summary = train.train_and_evaluate(config, workdir)
  assert summary["metrics"]["test"]["normalized"]["count"] == 6
  out = evaluate.evaluate_run(workdir)
  with np.load(os.path.join(workdir, "predictions_test.npz")) as z:
    chex.assert_shape(z["y_pred"], (6, 128))
    assert z["grid"][0] == pytest.approx(-3.96875) and z["grid"][-1] == pytest.approx(3.96875)
  assert np.isfinite(out["test"]["original"]["mae"])
  ase.io.write(tmp_path / "si.cif", bulk("Si"))
  pred = predictor.predict_structures(workdir, str(tmp_path / "si.cif"), str(tmp_path / "p"))
  # The reported gap is the one of the DoS it wrote (band_gap itself is tested against
  # exact windows in test_physics.py).
  from xtal2dos_jax.physics import dos_properties
  with np.load(tmp_path / "p" / "predictions.npz") as z:
    chex.assert_shape(z["dos_mean"], (1, 128))
    expected = dos_properties.band_gap(z["grid"], z["dos_mean"])
  np.testing.assert_allclose(pred["band_gap_eV"], expected)
  csv_gap = float(open(tmp_path / "p" / "predictions.csv").read().splitlines()[1].split(",")[3])
  np.testing.assert_allclose(csv_gap, expected[0], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_checkpoint_selection_on_validation_r2(tmp_path):
  """select_on=r2 keeps the epoch of the best validation R^2; with train.monitor_test each
  epoch's line also holds the test split's scores, which equal what the final evaluation
  of that epoch's checkpoint reports, and which the selection does not read."""
  config = _config(num_epochs=4, select_on="r2", monitor_test=True)
  summary = train.train_and_evaluate(config, str(tmp_path / "r2"))
  lines = [json.loads(l) for l in open(tmp_path / "r2" / "metrics.jsonl")]
  r2 = [l["val"]["normalized"]["r2"] for l in lines]
  assert summary["best_epoch"] == 1 + int(np.argmax(r2))
  # The restored best checkpoint is that epoch's: same validation R^2.
  assert summary["metrics"]["validation"]["normalized"]["r2"] == pytest.approx(max(r2), rel=1e-5)
  monitored = lines[summary["best_epoch"] - 1]["test_monitor"]
  for scale in ("normalized", "original"):
    for key in ("r2", "mae", "wd"):
      assert monitored[scale][key] == pytest.approx(
          summary["metrics"]["test"][scale][key], rel=1e-5)
  test_r2 = [l["test_monitor"]["normalized"]["r2"] for l in lines]
  assert len(set(np.round(test_r2, 6))) == len(lines), "one test score per epoch"


def test_unknown_selection_metric_is_named(tmp_path):
  with pytest.raises(InputError, match="config.train.select_on: unknown choice 'mae'"):
    train.train_and_evaluate(_config(select_on="mae"), str(tmp_path / "x"))
  assert not os.path.exists(tmp_path / "x")


def test_update_ema_warms_up_then_uses_the_decay():
  ema, params = {"w": np.zeros(3, np.float32)}, {"w": np.ones(3, np.float32)}
  # Step 0: d = min(0.99, 1/10) = 0.1, so the average is mostly the new weights.
  chex.assert_trees_all_close(train_steps.update_ema(ema, params, 0.0, 0.99), {"w": np.full(3, 0.9)})
  # Late in training the configured decay applies.
  chex.assert_trees_all_close(train_steps.update_ema(ema, params, 1e6, 0.99), {"w": np.full(3, 0.01)},
                              rtol=1e-5)


@pytest.mark.slow
def test_ema_weights_are_checkpointed_and_used_for_evaluation(tmp_path):
  workdir = str(tmp_path / "ema")
  summary = train.train_and_evaluate(_config(num_epochs=2, ema_decay=0.9), workdir)
  ckpt = checkpoints_lib.Checkpoints(workdir_lib.Workdir(workdir).checkpoint_dir)
  saved = ckpt.best.restore(ckpt.best.best_step())["state"]
  ckpt.close()
  diffs = jax.tree.leaves(jax.tree.map(lambda a, b: np.abs(a - b).max(), saved["ema_params"],
                                       saved["params"]))
  assert max(diffs) > 0  # the average is not the last weights
  loaded, _ = restore.restore_run_and_data(workdir)
  chex.assert_trees_all_close(jax.tree.map(lambda x: np.asarray(x[0]), loaded.params),
                              saved["ema_params"])
  out = evaluate.evaluate_run(workdir)
  assert out["test"]["normalized"]["r2"] == pytest.approx(
      summary["metrics"]["test"]["normalized"]["r2"], rel=1e-5)


@pytest.mark.slow
def test_smoke_run_beats_predicting_the_training_mean(tmp_path):
  """A few epochs on 120 crystals already explain part of the variance across crystals:
  validation R^2 > 0 (0 is predicting the mean DoS)."""
  config = smoke.get_config()
  config.train.num_epochs = 6
  config.train.learning_rate = 3e-3
  summary = train.train_and_evaluate(config, str(tmp_path / "learn"))
  assert summary["metrics"]["validation"]["normalized"]["r2"] > 0.0


@pytest.mark.slow
def test_diverging_run_stops_and_saves_nothing_non_finite(tmp_path):
  workdir = tmp_path / "nan"
  with pytest.raises(train.Diverged) as e:
    train.train_and_evaluate(_config(learning_rate=1e6), str(workdir))
  assert str(e.value).startswith("training: non-finite loss or gradient at epoch ")
  assert "lower config.train.learning_rate (now 1e+06)" in str(e.value)
  assert not (workdir / "results.json").exists()
  lines = [json.loads(l) for l in open(workdir / "metrics.jsonl")] if (
      workdir / "metrics.jsonl").exists() else []
  assert all(np.isfinite(l["train_loss"]) and np.isfinite(l["val_loss"]) for l in lines)
  best = workdir / "checkpoints" / "best"
  if best.exists() and os.listdir(best):  # a best checkpoint, if any, holds finite weights
    ckpt = checkpoints_lib.Checkpoints(workdir_lib.Workdir(str(workdir)).checkpoint_dir)
    saved = ckpt.best.restore(ckpt.best.best_step())["state"]["params"]
    ckpt.close()
    chex.assert_tree_all_finite(saved)


def test_first_non_finite_step_is_named():
  outs = [{"finite": np.array([True])}, {"finite": np.array([True])},
          {"finite": np.array([False])}, {"finite": np.array([False])}]
  assert train._first_non_finite(outs) == 2
  assert train._first_non_finite(outs, upto=2) is None


@pytest.mark.parametrize("scaling", ["standardized", "normalized_max"])
@pytest.mark.parametrize("loss", ["kl", "wd"])
def test_loss_that_cannot_train_on_the_scaling_is_refused(tmp_path, scaling, loss):
  config = _config(loss=loss)
  config.data.scaling = scaling
  with pytest.raises(InputError, match=f"config.train.loss: loss '{loss}' needs "
                     f"config.data.scaling='normalized_sum', got '{scaling}'"):
    train.train_and_evaluate(config, str(tmp_path / "x"))
  assert not (tmp_path / "x").exists()


def test_zero_epochs_is_refused(tmp_path):
  with pytest.raises(InputError, match="config.train.num_epochs: must be at least 1, got 0"):
    train.train_and_evaluate(_config(num_epochs=0), str(tmp_path / "x"))
  assert not (tmp_path / "x").exists()


def test_noam_schedule_matches_the_formula():
  config = _config(schedule="noam", learning_rate=1.0, warmup_steps=300,
                   noam_decay_epochs=10, noam_decay_rate=4.0)
  config.model.d_model = 512
  fn = optimizers.create_learning_rate_fn(config, steps_per_epoch=100)
  steps = np.array([0, 1, 150, 300, 301, 999, 1000, 5000])
  s = np.maximum(steps, 1).astype(np.float64)
  ref = 512 ** -0.5 * np.minimum(s ** -0.5, s * 300 ** -1.5)
  ref = np.where(s >= 1000, ref / 4.0 ** (s / 1000), ref)
  np.testing.assert_allclose([float(fn(k)) for k in steps], ref, rtol=1e-5)
  assert float(fn(300)) == pytest.approx(1 / np.sqrt(512 * 300), rel=1e-5)  # the peak
  config = smoke.get_config()
  config.train.schedule = "step"
  with pytest.raises(InputError, match="config.train.schedule: unknown schedule 'step'"):
    validate(config)


def test_crystal_system_warnings_name_the_crystals(monkeypatch, caplog):
  """The dostransformer's crystal systems: spglib's warnings name crystals by id."""
  import logging
  from xtal2dos_jax.input_pipeline import symmetry
  config = _config()
  config.model.decoder = "dostransformer"
  monkeypatch.setattr(symmetry, "find_space_group", lambda *a, **k: None)  # spglib fails
  with caplog.at_level(logging.WARNING):
    rd = run_data.prepare_run_data(config)
  first = sorted(i for part in rd.split_ids.values() for i in part)  # any usable id
  warning = next(r.getMessage() for r in caplog.records if "crystal systems" in r.getMessage())
  assert "#0" not in warning and any(i in warning for i in first)
  assert not rd.splits["test"].crystal_system.any()  # triclinic prompt where spglib failed
