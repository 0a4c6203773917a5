"""experiments.compare: run names and dirs, the table built from run directories (seeds,
folds, ensembles, the test-chosen epoch column), and the binary end to end."""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from xtal2dos_jax.core.errors import InputError
from xtal2dos_jax.workflows import cli, compare_tables, comparison


REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_compare_config_helpers():
  assert comparison.run_names(["configs/phdos.py", "configs/ablations/mlp.py", "a/mlp.py",
                            "b/x.py", "b/x.py"]) == ["phdos", "ablations_mlp", "a_mlp",
                                                     "b_x", "b_x_2"]
  config = cli.load_config_file("configs/smoke.py", [
      "train.num_epochs=5", "model.causal=false", "data.split=(0.6, 0.2, 0.2)",
      "model.decoder=rnn", "train.learning_rate=3e-4"])
  assert config.train.num_epochs == 5 and config.model.causal is False
  assert tuple(config.data.split) == (0.6, 0.2, 0.2) and config.model.decoder == "rnn"
  assert config.train.learning_rate == 3e-4
  for bad, reason in (("train.num_epochs", "expected key=value"),
                      ("train.no_such_key=1", "no config key 'no_such_key'"),
                      ("nope.x=1", "no config key 'nope'"),
                      ("train.num_epochs=abc", "invalid literal for int")):
    with pytest.raises(InputError, match=rf"^--config_overrides={re.escape(bad)}: {reason}"):
      cli.load_config_file("configs/smoke.py", [bad])
  with pytest.raises(InputError, match=r"^--configs: cannot load the config file"):
    cli.load_config_file("configs/no_such_config.py")


def _fake_run(path, decoder, r2, seconds, test_ids, speed=True, seed=0, **model):
  os.makedirs(path)
  metrics = {scale: {"r2": r2, "mae": 0.01, "mse": 2e-4, "wd": 0.07, "wd_physical": 1.0,
                     "count": len(test_ids)} for scale in ("normalized", "original")}
  metrics["original"]["r2"] = r2 - 0.1
  validation = json.loads(json.dumps(metrics))
  validation["normalized"]["r2"] = r2 + 0.05
  with open(os.path.join(path, "results.json"), "w") as f:
    json.dump({"metrics": {"validation": validation, "test": metrics}, "best_epoch": 2,
               "epochs_run": 3, "num_params": 12345}, f)
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump({"seed": seed,
               "model": {"encoder": "unimp", "decoder": decoder, "causal": True, **model}}, f)
  with open(os.path.join(path, "splits.json"), "w") as f:
    json.dump({"train": ["a"], "validation": ["b"], "test": test_ids}, f)
  with open(os.path.join(path, "metrics.jsonl"), "w") as f:
    for epoch, s in enumerate(seconds, start=1):
      f.write(json.dumps({"epoch": epoch, "train_seconds": s}) + "\n")
  if speed:
    with open(os.path.join(path, compare_tables.INFERENCE_JSON), "w") as f:
      json.dump({"crystals": len(test_ids), "seconds": 0.5, "crystals_per_s": 250.0}, f)


def test_compare_table_from_run_dirs(tmp_path):
  runs = {"phdos": str(tmp_path / "phdos"), "chunk": str(tmp_path / "chunk"),
          "mlp": str(tmp_path / "mlp")}
  _fake_run(runs["phdos"], "transformer", 0.7, [30.0, 2.0, 4.0, 3.0], ["x", "y"])
  _fake_run(runs["chunk"], "chunk_rnn_attn", 0.6, [10.0], ["y", "x"], chunk_size=8)
  results_path = os.path.join(runs["chunk"], "results.json")
  results = json.load(open(results_path))
  results["metrics"]["test"]["normalized"]["rmse"] = 0.02
  json.dump(results, open(results_path, "w"))
  _fake_run(runs["mlp"], "mlp", 0.5, [9.0, 1.0], ["x", "y"], speed=False)
  table = compare_tables.build_table(runs)
  assert table["same_split"]
  rows = {row["name"]: row for row in table["rows"]}
  assert list(rows) == ["phdos", "chunk", "mlp"]
  assert rows["phdos"]["train_seconds_per_epoch"] == 3.0    # median, first epoch excluded
  assert rows["chunk"]["train_seconds_per_epoch"] == 10.0   # the only epoch
  assert rows["phdos"]["r2"] == 0.7 and rows["phdos"]["r2_original"] == pytest.approx(0.6)
  assert rows["phdos"]["val_r2"] == pytest.approx(0.75) and rows["phdos"]["r2_std"] is None
  assert rows["phdos"]["num_params"] == 12345 and rows["phdos"]["test_count"] == 2
  assert rows["chunk"]["model"] == "unimp + chunk_rnn_attn (chunk 8)"
  assert rows["phdos"]["inference_crystals_per_s"] == 250.0
  assert np.isnan(rows["mlp"]["inference_crystals_per_s"])

  markdown = compare_tables.to_markdown(table)
  lines = markdown.splitlines()
  assert lines[0].startswith("| variant | model | val R^2 | R^2 | MAE | MSE | RMSE | WD "
                             "| R^2 (orig) | params")
  # RMSE: results.json's value, or sqrt(MSE) for a run saved before results.json held it.
  assert rows["phdos"]["rmse"] == pytest.approx(math.sqrt(2e-4))
  assert rows["chunk"]["rmse"] == 0.02 and "| 0.0002 | 0.02 | 0.0700 |" in lines[3]
  assert lines[2].startswith("| phdos | unimp + transformer | 0.7500 | 0.7000 |")
  assert "±" not in markdown and "seed" not in markdown
  assert "12,345" in lines[2] and "| 250.0 |" in lines[2] and "n/a" in lines[4]
  assert "warning" not in markdown

  json_path, md_path = compare_tables.write_table(table, str(tmp_path))
  saved = json.load(open(json_path))
  assert saved["rows"][2]["inference_crystals_per_s"] is None   # strict JSON, no NaN
  assert open(md_path).read().strip() == markdown

  _fake_run(str(tmp_path / "other"), "rnn", 0.4, [5.0], ["z", "y"])
  table = compare_tables.build_table({**runs, "other": str(tmp_path / "other")})
  assert not table["same_split"] and "warning" in compare_tables.to_markdown(table)


def test_model_label_from_plain_dict_configs(tmp_path):
  """Labels from a run's config.json: keys added since a run was saved take their
  `workdir._ADDED_KEYS` defaults; any other missing key names the file and the key."""
  label = lambda model: compare_tables._model_label({"model": model}, "run/config.json")
  assert label({"encoder": "unimp", "decoder": "transformer", "causal": False}) == (
      "unimp + transformer (unmasked)")
  assert label({"encoder": "unimp", "decoder": "mlp"}) == "unimp + mlp"
  # The E3NN rows: a run saved before e3nn_variant existed used "chen2021".
  assert label({"encoder": "e3nn", "decoder": "mlp"}) == "e3nn + mlp"
  assert label({"encoder": "e3nn", "decoder": "mlp", "e3nn_variant": "chen2021"}) == "e3nn + mlp"
  assert label({"encoder": "e3nn", "decoder": "mlp", "e3nn_variant": "gate_points"}) == (
      "e3nn (gate_points) + mlp")
  assert label({"encoder": "unimp", "decoder": "dostransformer"}) == "unimp + dostransformer"
  assert label({"encoder": "dostransformer_gnn", "decoder": "dostransformer",
                "dostransformer_prompt_free_weight": 1.0}) == (
      "dostransformer_gnn + dostransformer (+ prompt-free loss x1)")
  assert label({"encoder": "unimp", "decoder": "dostransformer",
                "dostransformer_prompt": "none"}) == "unimp + dostransformer (no prompt)"
  assert label({"encoder": "unimp", "decoder": "mlp", "atom_features": "cgcnn_mass"}) == (
      "unimp + mlp (cgcnn_mass atoms)")
  assert compare_tables._model_label({"model": {"encoder": "unimp", "decoder": "mlp"},
                               "train": {"ensemble_size": 5}}, "run/config.json") == (
      "unimp + mlp, ensemble of 5")
  for model, key in (({"decoder": "mlp"}, "model.encoder"),
                     ({"encoder": "unimp", "decoder": "transformer"}, "model.causal"),
                     ({"encoder": "unimp", "decoder": "chunk_rnn_attn"}, "model.chunk_size")):
    with pytest.raises(InputError, match=rf"^run/config.json: the run's config has no {key}$"):
      label(model)
  with pytest.raises(InputError, match="has no model.decoder"):
    compare_tables._model_label({}, "run/config.json")
  # The row names the run's own config.json.
  _fake_run(str(tmp_path / "a"), "mlp", 0.5, [1.0], ["x"])
  config_path = tmp_path / "a" / "config.json"
  json.dump({"seed": 0, "model": {"decoder": "mlp"}}, open(config_path, "w"))
  with pytest.raises(InputError, match=rf"^{re.escape(str(config_path))}: .* model.encoder$"):
    compare_tables.build_table({"a": str(tmp_path / "a")})


def test_compare_table_over_seeds(tmp_path):
  assert comparison.run_dirs("w", "mlp", []) == [os.path.join("w", "mlp")]
  dirs = comparison.run_dirs(str(tmp_path), "mlp", [0, 1, 2])
  assert dirs == [str(tmp_path / "mlp" / f"seed_{s}") for s in (0, 1, 2)]
  for seed, (r2, seconds) in enumerate([(0.5, 2.0), (0.6, 3.0), (0.7, 7.0)]):
    _fake_run(dirs[seed], "mlp", r2, [9.0, seconds], ["x", "y"], speed=seed == 1, seed=seed)
  one = str(tmp_path / "phdos")
  _fake_run(one, "transformer", 0.4, [9.0, 1.0], ["x", "y"])
  table = compare_tables.build_table({"mlp": dirs, "phdos": one})
  row = table["rows"][0]
  assert table["same_split"] and row["num_runs"] == 3 and row["seeds"] == [0, 1, 2]
  assert row["r2"] == pytest.approx(0.6) and row["r2_std"] == pytest.approx(0.1)
  assert row["val_r2"] == pytest.approx(0.65) and row["val_r2_std"] == pytest.approx(0.1)
  assert row["wd_std"] == pytest.approx(0.0) and row["train_seconds_per_epoch"] == 4.0
  assert row["inference_crystals_per_s"] == 250.0          # from the run that measured it
  assert [run["r2"] for run in row["runs"]] == pytest.approx([0.5, 0.6, 0.7])
  assert row["run_dir"] == str(tmp_path / "mlp")
  lines = compare_tables.to_markdown(table).splitlines()
  assert lines[2].startswith("| mlp | unimp + mlp | 0.6500 ± 0.1000 | 0.6000 ± 0.1000 |")
  assert lines[3].startswith("| phdos | unimp + transformer | 0.4500 | 0.4000 |")
  assert "trained 3 times (seeds 0, 1, 2)" in lines[-1]


def test_compare_reports_the_test_chosen_epoch_of_monitored_runs(tmp_path):
  """Runs trained with train.monitor_test get the column "R^2, epoch chosen on test": the
  test R^2 at the epoch of the lowest test loss (the public code's checkpoint), mean ±
  std over seeds; tables of unmonitored runs do not show the column."""
  dirs = comparison.run_dirs(str(tmp_path), "mlp", [0, 1])
  # (test loss, test R^2) per epoch; the lowest loss is epoch 2 for seed 0, 3 for seed 1.
  monitored = [[(0.5, 0.60), (0.3, 0.72), (0.4, 0.75)], [(0.5, 0.60), (0.4, 0.70), (0.2, 0.68)]]
  for seed, epochs in enumerate(monitored):
    _fake_run(dirs[seed], "mlp", 0.65, [1.0] * len(epochs), ["x", "y"], seed=seed)
    with open(os.path.join(dirs[seed], "metrics.jsonl"), "w") as f:
      for epoch, (loss, r2) in enumerate(epochs, start=1):
        f.write(json.dumps({"epoch": epoch, "train_seconds": 1.0, "test_monitor": {
            "loss": loss, "normalized": {"r2": r2}, "original": {"r2": r2}}}) + "\n")
  one = str(tmp_path / "phdos")
  _fake_run(one, "transformer", 0.4, [9.0, 1.0], ["x", "y"])
  table = compare_tables.build_table({"mlp": dirs, "phdos": one})
  row, plain = table["rows"]
  assert [r["r2_test_chosen"] for r in row["runs"]] == pytest.approx([0.72, 0.68])
  assert row["r2_test_chosen"] == pytest.approx(0.70)
  assert row["r2_test_chosen_std"] == pytest.approx(np.std([0.72, 0.68], ddof=1))
  assert np.isnan(plain["r2_test_chosen"])
  lines = compare_tables.to_markdown(table).splitlines()
  assert "| R^2, epoch chosen on test |" in lines[0]
  assert "| 0.7000 ± 0.0283 |" in lines[2] and "| 0.3000 | n/a |" in lines[3]
  assert "R^2, epoch chosen on test" not in compare_tables.to_markdown(
      compare_tables.build_table({"phdos": one}))


@pytest.mark.slow
@pytest.mark.long
def test_compare_end_to_end(tmp_path):
  workdir = str(tmp_path / "compare")
  cmd = [sys.executable, "-m", "experiments.compare",
         "--configs=configs/smoke.py,configs/ablations/mlp.py", f"--workdir={workdir}",
         "--inference_repeats=1", "--seeds=3,4", "--ensemble"]
  for override in ("train.num_epochs=1", "data.limit=40", "model.d_model=16",
                   "model.num_heads=2", "model.encoder_layers=1", "model.ff_dim=32",
                   "model.decoder_layers=1", "train.progress=False"):
    cmd.append(f"--config_overrides={override}")
  result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  table = json.load(open(os.path.join(workdir, "compare.json")))
  assert [row["name"] for row in table["rows"]] == [
      "smoke", "mlp", "smoke (mean of 2)", "mlp (mean of 2)"] and table["same_split"]
  for single, ensemble in zip(table["rows"][:2], table["rows"][2:]):
    # The squared error of a mean prediction is at most the members' mean (convexity),
    # so the averaged seeds score at least their mean R^2 / at most their mean MSE.
    members = single["runs"]
    assert ensemble["mse"] <= np.mean([r["mse"] for r in members]) + 1e-12
    assert ensemble["r2"] >= np.mean([r["r2"] for r in members]) - 1e-9
    assert ensemble["r2"] != pytest.approx(members[0]["r2"], abs=1e-7)
  for row in table["rows"][:2]:
    assert row["num_params"] > 0 and row["inference_crystals_per_s"] > 0
    assert row["seeds"] == [3, 4] and row["r2_std"] is not None
    for seed in (3, 4):
      saved = json.load(open(os.path.join(workdir, row["name"], f"seed_{seed}", "config.json")))
      assert saved["seed"] == seed
  assert "| smoke |" in result.stdout and "±" in result.stdout


def test_compare_over_cross_validation_folds(tmp_path):
  from configs import phdos, phdos_chgnet
  assert comparison.run_grid([0, 1], 2) == [(0, 0), (1, 0), (0, 1), (1, 1)]
  dirs = comparison.run_dirs(str(tmp_path), "mlp", [], 3)
  assert dirs == [str(tmp_path / "mlp" / f"fold_{k}") for k in range(3)]
  other = comparison.run_dirs(str(tmp_path), "phdos", [], 3)
  for k in range(3):
    for run_dir, decoder in ((dirs[k], "mlp"), (other[k], "transformer")):
      _fake_run(run_dir, decoder, 0.5 + 0.1 * k, [9.0, 2.0], [f"t{k}"])
      config = json.load(open(os.path.join(run_dir, "config.json")))
      config["data"] = {"num_folds": 3, "fold": k}
      json.dump(config, open(os.path.join(run_dir, "config.json"), "w"))
  table = compare_tables.build_table({"mlp": dirs, "phdos": other},
                              published=compare_tables.published_rows(phdos.get_config()))
  row = table["rows"][0]
  assert table["same_split"] and row["folds"] == [0, 1, 2] and row["num_runs"] == 3
  assert row["r2"] == pytest.approx(0.6) and row["r2_std"] == pytest.approx(0.1)
  markdown = compare_tables.to_markdown(table)
  assert "trained 3 times (folds 0, 1, 2)" in markdown
  assert "| Xtal2DoS | published |  | 0.7340 | 0.00663 | 0.000193 |  | 0.0631 |" in markdown
  # Folds of one variant against one split of the other are not the same test crystals.
  single = str(tmp_path / "single")
  _fake_run(single, "mlp", 0.5, [9.0], ["t0"])
  assert not compare_tables.build_table({"mlp": dirs, "single": single})["same_split"]
  assert compare_tables.published_rows(phdos_chgnet.get_config()) == ()
