"""experiments.sweep (grid parsing, cells, the table, resume) and the options of its study:
the exponential learning-rate decay and early stopping after a warm-up."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from configs import smoke
from xtal2dos_jax.core.errors import InputError
from xtal2dos_jax.training import optimizers, train
from xtal2dos_jax.workflows import comparison, sweeps
from xtal2dos_jax.training.config_check import validate

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_parse_grid_and_cells():
  grid = sweeps.parse_grid(" data.radius=2, 4,8 ; model.encoder_layers=3,4;")
  assert grid == [("data.radius", ["2", "4", "8"]), ("model.encoder_layers", ["3", "4"])]
  cells = sweeps.grid_cells(grid)
  assert len(cells) == 6
  assert cells[:3] == [{"data.radius": "2", "model.encoder_layers": "3"},
                       {"data.radius": "2", "model.encoder_layers": "4"},
                       {"data.radius": "4", "model.encoder_layers": "3"}]
  assert sweeps.cell_name(cells[1]) == "data.radius=2__model.encoder_layers=4"
  # Commas inside brackets belong to one value.
  assert sweeps.parse_grid("model.decoder=mlp;train.learning_rate=(1,2),3") == [
      ("model.decoder", ["mlp"]), ("train.learning_rate", ["(1,2)", "3"])]
  assert sweeps.cell_name({"a.b": "(1, 2)"}) == "a.b=_1__2_"
  # '' is the empty string (from scratch vs fine-tuned in one grid).
  grid = sweeps.parse_grid("train.init_from='',runs/pre")
  assert grid == [("train.init_from", ["", "runs/pre"])]
  assert [sweeps.cell_name(c) for c in sweeps.grid_cells(grid)] == [
      "train.init_from=", "train.init_from=runs_pre"]


@pytest.mark.parametrize("text, reason", [
    ("", "is empty"),
    ("data.radius", "expected key=v1,v2"),
    ("=2,4", "expected key=v1,v2"),
    ("data.radius=2,,4", "empty value"),
    ("data.radius=2;data.radius=4", "listed twice"),
    ("model.encoder_layers=3,3", "value 3 is listed twice"),
    ("seed=0,1", "share one split and training budget"),
    ("data.split_seed=0,1", "share one split"),
    ("train.num_epochs=5,10", "share one split"),
])
def test_bad_grid_is_refused(text, reason):
  with pytest.raises(InputError, match=reason) as e:
    sweeps.parse_grid(text)
  assert e.value.name == "--grid" and "\n" not in str(e.value)


def test_bad_grid_is_one_line_exit_2():
  result = subprocess.run(
      [sys.executable, "-m", "experiments.sweep", "--config=configs/smoke.py",
       "--grid=data.radius=2;model.encoder_layerz=3,4", "--workdir=/nonexistent/sweep"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [
      "error: --grid: model.encoder_layerz=3: no config key 'encoder_layerz'. Did you mean "
      "\"encoder_layers\" instead of \"encoder_layerz\"?"]


def _fake_run(path, val_r2, test_r2, best_epoch, seed):
  os.makedirs(path, exist_ok=True)
  split = {"normalized": {"r2": test_r2, "mae": 0.01, "mse": 1e-3, "wd": 0.1, "count": 7},
           "original": {"r2": test_r2 - 0.1}}
  val = {"normalized": {"r2": val_r2}, "original": {"r2": val_r2}}
  with open(os.path.join(path, "results.json"), "w") as f:
    json.dump({"metrics": {"validation": val, "test": split}, "best_epoch": best_epoch,
               "epochs_run": 9, "num_params": 100}, f)
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump({"seed": seed, "data": {}, "model": {"encoder": "unimp", "decoder": "transformer",
                                                   "causal": True}}, f)
  with open(os.path.join(path, "splits.json"), "w") as f:
    json.dump({"test": ["a", "b"]}, f)
  with open(os.path.join(path, "metrics.jsonl"), "w") as f:
    f.write("\n".join(json.dumps({"train_seconds": s}) for s in (9.0, 2.0, 4.0)) + "\n")


def test_sweep_table_chooses_on_validation_and_reports_test_once(tmp_path):
  grid = sweeps.parse_grid("data.radius=4,8")
  cells = []
  # radius 8: the better validation R^2 (mean 0.6) but the worse test R^2.
  for cell, vals, tests in zip(sweeps.grid_cells(grid), ((0.5, 0.5), (0.7, 0.5)),
                               ((0.9, 0.9), (0.3, 0.5))):
    dirs = comparison.run_dirs(str(tmp_path), sweeps.cell_name(cell), [0, 1])
    for seed, (d, v, t) in enumerate(zip(dirs, vals, tests)):
      _fake_run(d, v, t, best_epoch=4 + 2 * seed, seed=seed)
    cells.append((cell, dirs))
  table = sweeps.build_sweep_table(grid, cells)
  assert table["chosen"] == "data.radius=8" and table["same_split"]
  assert table["test"]["r2"] == pytest.approx(0.4)
  assert table["test"]["r2_std"] == pytest.approx(np.std([0.3, 0.5], ddof=1))
  for row in table["rows"]:
    assert "r2" not in row and all("r2" not in r for r in row["runs"])
    assert row["best_epoch"] == 5.0 and row["train_seconds_per_epoch"] == 3.0
  assert table["rows"][1]["val_r2"] == pytest.approx(0.6)
  markdown = sweeps.sweep_to_markdown(table)
  lines = markdown.splitlines()
  assert lines[0] == "| data.radius | val R^2 | best epoch | s/epoch | params | chosen |"
  assert lines[2] == "| 4 | 0.5000 ± 0.0000 | 5.0 ± 1.4 | 3.00 | 100 |  |"
  assert lines[3].startswith("| 8 | 0.6000 ± 0.1414 |") and lines[3].endswith("| yes |")
  assert "0.4000 ± 0.1414" in markdown and "0.9000" not in markdown
  assert table["test"]["rmse"] == pytest.approx(np.sqrt(1e-3))   # sqrt(MSE): no stored RMSE
  assert "| R^2 | MAE | MSE | RMSE | WD | R^2 (orig) |" in lines


@pytest.mark.slow
@pytest.mark.long
def test_sweep_end_to_end_and_rerun_trains_nothing(tmp_path):
  workdir = str(tmp_path / "sweep")
  cmd = [sys.executable, "-m", "experiments.sweep", "--config=configs/smoke.py",
         "--grid=model.decoder_dropout=0,0.1", "--seeds=0", f"--workdir={workdir}"]
  for override in ("train.num_epochs=1", "data.limit=40", "model.encoder_layers=1"):
    cmd.append(f"--config_overrides={override}")
  result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  table = json.load(open(os.path.join(workdir, "sweep.json")))
  names = ["model.decoder_dropout=0", "model.decoder_dropout=0.1"]
  assert [row["name"] for row in table["rows"]] == names and table["same_split"]
  assert table["chosen"] in names and table["test"]["name"] == table["chosen"]
  assert np.isfinite(table["test"]["r2"]) and table["test"]["test_count"] > 0
  assert os.path.exists(os.path.join(workdir, "sweep.md")) and "| yes |" in result.stdout
  for name, dropout in zip(names, (0.0, 0.1)):
    saved = json.load(open(os.path.join(workdir, name, "seed_0", "config.json")))
    assert saved["model"]["decoder_dropout"] == dropout and saved["train"]["num_epochs"] == 1

  def files():
    out = {}
    for root, _, names_ in os.walk(workdir):
      for n in names_:
        if n not in ("sweep.json", "sweep.md"):
          p = os.path.join(root, n)
          out[p] = os.stat(p).st_mtime_ns
    return out

  before = files()
  again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert again.returncode == 0, again.stderr[-3000:]
  assert files() == before                      # no run file written: nothing trained
  assert json.load(open(os.path.join(workdir, "sweep.json"))) == table


def _schedule_config(**train_values):
  config = smoke.get_config()
  config.train.update(train_values)
  return config


def test_exponential_schedule_matches_numpy():
  config = _schedule_config(schedule="exponential", learning_rate=1e-2, warmup_epochs=1,
                            decay_rate=0.5)
  steps_per_epoch = 10
  fn = optimizers.create_learning_rate_fn(config, steps_per_epoch)
  steps = np.arange(60)
  want = np.where(steps < 10, 1e-2 * steps / 10, 1e-2 * 0.5 ** ((steps - 10) / 10))
  got = np.array([float(fn(s)) for s in steps])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-9)
  # Without warmup, the decay starts at the peak at step 0.
  fn = optimizers.create_learning_rate_fn(
      _schedule_config(schedule="exponential", learning_rate=1e-3, warmup_epochs=0,
                       decay_rate=0.9), 4)
  np.testing.assert_allclose([float(fn(s)) for s in (0, 2, 4, 40)],
                             1e-3 * 0.9 ** (np.array([0, 2, 4, 40]) / 4), rtol=1e-5)
  with pytest.raises(InputError, match="unknown schedule 'exp'; expected one of cosine, "
                     "exponential, noam"):
    validate(_schedule_config(schedule="exp"))


def _epochs_until_stop(improved_at: set[int], patience: int, warmup: int, epochs: int = 50):
  """Epochs run by train_and_evaluate's loop with improvements at the given epochs."""
  bad, epoch = 0, 0
  while epoch < epochs and bad < patience:
    epoch += 1
    bad = train.count_bad_epochs(bad, epoch in improved_at, epoch, warmup)
  return epoch


def test_early_stopping_counts_after_the_warmup():
  # No improvement after epoch 1: patience 2 stops at epoch 3 ...
  assert _epochs_until_stop({1}, patience=2, warmup=0) == 3
  # ... and only counts from epoch 5 on with a 4-epoch warm-up.
  assert _epochs_until_stop({1}, patience=2, warmup=4) == 6
  # An improvement after the warm-up resets the count.
  assert _epochs_until_stop({1, 6}, patience=2, warmup=4) == 8
  assert train.count_bad_epochs(3, improved=False, epoch=5, warmup_epochs=0) == 4


def test_seeds_validator_shared_by_compare_and_sweep():
  from absl import flags
  assert comparison.check_seeds(["0", " 1", "-2"]) and comparison.check_seeds([])
  with pytest.raises(flags.ValidationError, match="must be integers"):
    comparison.check_seeds(["0", "x"])
  with pytest.raises(flags.ValidationError, match="listed twice"):
    comparison.check_seeds(["1", "+1"])
