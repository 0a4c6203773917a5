"""Crash safety, determinism and the run-level bad-input battery (workdir, config,
checkpoints). Data-level bad inputs are tested beside their readers."""
import errno
import json
import os
import shutil
import subprocess
import sys

import pytest

from configs import smoke
from xtal2dos_jax.core import atomic_io
from xtal2dos_jax.core.errors import InputError
from xtal2dos_jax.evaluation import evaluate
from xtal2dos_jax.training import train
from xtal2dos_jax.training import checkpoints as checkpoints_lib
from xtal2dos_jax.training import workdir as workdir_lib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _config():
  config = smoke.get_config()
  config.data.limit = 40
  config.train.num_epochs = 2
  return config


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("reliability") / "run")
  train.train_and_evaluate(_config(), workdir)
  return workdir


def _epoch_records(workdir):
  out = []
  for line in open(os.path.join(workdir, "metrics.jsonl")):
    record = json.loads(line)
    for timing in ("train_seconds", "train_crystals_per_s", "rss_mb", "wall_time"):
      record.pop(timing, None)
    out.append(record)
  return out


@pytest.mark.slow
def test_same_seed_gives_bitwise_identical_metrics(run_dir, tmp_path):
  again = str(tmp_path / "again")
  train.train_and_evaluate(_config(), again)
  assert _epoch_records(again) == _epoch_records(run_dir)
  assert (json.load(open(os.path.join(again, "results.json")))["metrics"]
          == json.load(open(os.path.join(run_dir, "results.json")))["metrics"])


def test_partially_written_checkpoint_is_never_loaded(run_dir, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(run_dir, workdir)
  latest = os.path.join(workdir, "checkpoints", "latest")
  steps = sorted(int(s) for s in os.listdir(latest) if s.isdigit())
  # What a SIGKILL during a save leaves: Orbax's temporary directory for a newer step.
  torn = os.path.join(latest, f"{steps[-1] + 1}.orbax-checkpoint-tmp-1234")
  shutil.copytree(os.path.join(latest, str(steps[-1])), torn)
  with open(os.path.join(torn, "state", "_METADATA"), "w") as f:
    f.write("{trunc")
  ckpt = checkpoints_lib.Checkpoints(os.path.join(workdir, "checkpoints"))
  assert ckpt.latest.latest_step() == steps[-1]
  ckpt.close()


def test_read_only_workdir_is_one_line_error(tmp_path, monkeypatch):
  real_open = open

  def read_only_open(path, mode="r", *a, **k):
    if "w" in mode or "a" in mode:
      raise OSError(errno.EROFS, "Read-only file system")
    return real_open(path, mode, *a, **k)

  monkeypatch.setattr("builtins.open", read_only_open)
  with pytest.raises(InputError, match=r"workdir is not writable \(Read-only file system\)"):
    train.train_and_evaluate(_config(), str(tmp_path / "ro"))


def test_full_disk_never_tears_a_saved_file(run_dir, tmp_path, monkeypatch):
  path = os.path.join(run_dir, "results.json")
  before = open(path).read()

  def no_space(*a, **k):
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(json, "dump", no_space)
  with pytest.raises(OSError, match="No space left"):
    atomic_io.write_json_atomic(path, {"metrics": {}})
  assert open(path).read() == before
  assert not [f for f in os.listdir(run_dir) if f.endswith(".tmp")]


def test_checkpoint_from_another_model_size_is_named(run_dir, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(run_dir, workdir)
  config = json.load(open(os.path.join(workdir, "config.json")))
  config["model"]["d_model"] = 32
  json.dump(config, open(os.path.join(workdir, "config.json"), "w"))
  with pytest.raises(InputError, match=r"checkpoints/best/\d+: checkpoint cannot be restored"):
    evaluate.evaluate_run(workdir)


def test_evaluate_without_best_checkpoint_says_it_uses_the_latest(run_dir, tmp_path, caplog):
  """A workdir whose checkpoints/best is gone is evaluated on the latest checkpoint with a
  warning naming its epoch, not silently as if it were the best one."""
  import logging
  from xtal2dos_jax.workflows import cli
  workdir = str(tmp_path / "run")
  shutil.copytree(run_dir, workdir)
  shutil.rmtree(os.path.join(workdir, "checkpoints", "best"))
  with caplog.at_level(logging.WARNING):
    out = evaluate.evaluate_run(workdir)
  best_dir = os.path.join(workdir, "checkpoints", "best")
  assert f"no best checkpoint in {best_dir}; evaluating the latest, epoch 2" in [
      r.getMessage() for r in caplog.records]
  assert out["best_epoch"] == 2
  assert out["checkpoint"] == {"kind": "latest", "epoch": 2, "step": 2000000}
  assert cli.checkpoint_used(out) == "latest, epoch 2"
  assert cli.checkpoint_used({"best_epoch": 1}) == "epoch 1"


def test_workdir_without_setup_or_eval_data_gets_them_once(run_dir, tmp_path, caplog,
                                                          monkeypatch):
  """A workdir trained before setup.json and eval_data/ were kept: the first evaluation
  reads the dataset once (one log line) and writes them; the next reads them alone.
  Both give the training run's metrics."""
  import logging
  import chex
  from xtal2dos_jax.input_pipeline import run_data
  workdir = str(tmp_path / "run")
  shutil.copytree(run_dir, workdir)
  os.remove(os.path.join(workdir, "setup.json"))
  shutil.rmtree(os.path.join(workdir, "eval_data"))
  with caplog.at_level(logging.INFO):
    first = evaluate.evaluate_run(workdir)
  assert [r.getMessage() for r in caplog.records if "setup.json" in r.getMessage()] == [
      f"{workdir} has no setup.json / eval_data (trained before they were kept): reading "
      "the dataset once to write them"]
  assert os.path.exists(os.path.join(workdir, "setup.json"))
  monkeypatch.setattr(run_data, "prepare_run_data",
                      lambda *a, **k: pytest.fail("read the dataset again"))
  second = evaluate.evaluate_run(workdir)
  trained = json.load(open(os.path.join(workdir, "results.json")))["metrics"]["test"]
  for out in (first, second):
    for scale in ("normalized", "original"):
      chex.assert_trees_all_close(out["test"][scale], trained[scale], rtol=1e-5)


def test_split_with_zero_crystals_is_named(tmp_path):
  config = _config()
  config.data.limit = 2
  with pytest.raises(InputError, match=r"split '(validation|test)' would be empty with n=2 crystals"):
    train.train_and_evaluate(config, str(tmp_path / "tiny"))


def test_unknown_model_name_is_named(tmp_path):
  config = _config()
  config.model.decoder = "lstm"
  with pytest.raises(InputError, match="config.model.decoder: unknown decoder 'lstm'"):
    train.train_and_evaluate(config, str(tmp_path / "typo"))


def test_corrected_config_after_a_failed_start_trains(tmp_path):
  """A start that failed before its first epoch leaves no run to protect: the corrected
  command in the same workdir trains; once an epoch is saved, a changed config is refused."""
  workdir = str(tmp_path / "w")
  config = _config()
  config.data.num_folds = 1000       # valid as a value; more folds than the data has crystals
  with pytest.raises(InputError, match=r"config.data.num_folds: needs 2..\d+ folds"):
    train.train_and_evaluate(config, workdir)
  assert os.path.exists(os.path.join(workdir, "config.json"))
  summary = train.train_and_evaluate(_config(), workdir)
  assert summary["epochs_run"] == 2
  assert json.load(open(os.path.join(workdir, "config.json")))["data"]["num_folds"] == 0
  with pytest.raises(InputError, match="different config"):
    train.train_and_evaluate(config, workdir)
  run = workdir_lib.Workdir(str(tmp_path / "killed"))      # killed after epoch 1
  run.prepare(_config())
  run.append_metrics({"epoch": 1})
  with pytest.raises(InputError, match="different config"):
    run.prepare(config)


@pytest.mark.slow
@pytest.mark.parametrize("binary, args, line", [
    ("train", ["--config=configs/smoke.py", "--config.train.num_epoch=3"],
     "error: --config.train.num_epoch: no config key 'num_epoch'. "
     'Did you mean "num_epochs" instead of "num_epoch"?'),
    # Without --config=, ml_collections applies overrides to the default config while
    # the flag is defined, at import.
    ("train", ["--config.trian.num_epochs=3"],
     "error: --config.trian.num_epochs: no config key 'trian'. "
     'Did you mean "train" instead of "trian"?'),
    ("train", ["--config=configs/smoke.py", "--config.train.num_epochs=abc"],
     "error: --config.train.num_epochs: invalid literal for int() with base 10: 'abc'"),
    ("train", ["--config=configs/missing.py"],
     "error: --config: cannot load the config file ([Errno 2] No such file or directory: "
     "'configs/missing.py')"),
    ("benchmark", ["--quick", "--config.model.d_modle=3"],
     "error: --config.model.d_modle: no config key 'd_modle'. "
     'Did you mean "d_model" instead of "d_modle"?'),
    ("evaluate", ["--workdr=runs/x"], "error: --workdr: unknown flag; did you mean --workdir?"),
    ("predict", ["--workdir=runs/x"], "error: --structures: is required"),
    ("compare", ["--configz=a.py"],
     "error: --configz: unknown flag; did you mean --config_overrides or --configs?"),
    ("compare", [], "error: --configs is required (comma-separated config files)"),
    ("compare", ["--configs=configs/smoke.py", "--seeds=0,x"],
     "error: --seeds: seeds must be integers, e.g. --seeds=0,1,2"),
    ("compare", ["--configs=configs/smoke.py", "--folds=1"],
     "error: --folds: use 0 (one split) or at least 2 folds"),
    ("compare", ["--configs=configs/smoke.py", "--config_overrides=train.num_epoch=3"],
     "error: --config_overrides=train.num_epoch=3: no config key 'num_epoch'. "
     'Did you mean "num_epochs" instead of "num_epoch"?'),
    ("compare", ["--configs=configs/smoke.py,configs/missing.py"],
     "error: --configs: cannot load the config file ([Errno 2] No such file or directory: "
     "'configs/missing.py')"),
])
def test_bad_command_line_is_one_line_exit_2(tmp_path, binary, args, line):
  """Every binary reports a bad command line (a config key typo included, with
  ml_collections' did-you-mean) as one line `error: ...` and exit status 2, before
  creating anything."""
  workdir = tmp_path / "w"
  extra = [] if binary == "compare" and not args else [f"--workdir={workdir}"]
  proc = subprocess.run([sys.executable, "-m", f"experiments.{binary}"] + args + extra,
                        cwd=REPO, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert proc.stderr.strip().splitlines() == [line]
  assert not os.path.exists(workdir)


@pytest.mark.slow
def test_cli_bad_workdir_is_one_line_exit_2(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "experiments.evaluate", f"--workdir={tmp_path}"],
                        cwd=REPO, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and "not a training workdir" in last


@pytest.mark.slow
@pytest.mark.parametrize("binary, args, env, name", [
    ("predict", ["--structures=x.cif", "--num_processes=2", "--process_id=0",
                 "--coordinator_address=localhost:1"], {}, "--num_processes"),
    ("evaluate", [], {"SLURM_NTASKS": "3"}, "SLURM_NTASKS"),
])
def test_evaluate_and_predict_refuse_multi_process_launches(tmp_path, binary, args, env, name):
  proc = subprocess.run([sys.executable, "-m", f"experiments.{binary}", f"--workdir={tmp_path}"]
                        + args, cwd=REPO, capture_output=True, text=True, timeout=120,
                        env=dict(os.environ, **env))
  assert proc.returncode == 2
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith(f"error: {name}: ") and "runs as one process" in last


# Runs experiments.train with a hold point: the process writes the file $MARKER and
# sleeps at the chosen point, where the test kills it with SIGKILL.
#   HOLD=step: in the 2nd training step after the epoch-1 checkpoint (mid-epoch 2);
#   HOLD=save: when Orbax commits (renames) the epoch-2 checkpoint of checkpoints/latest,
#              i.e. with the checkpoint's files written but not yet committed.
_HELD_TRAIN = """
import os, runpy, sys, time

marker, hold = os.environ["MARKER"], os.environ["HOLD"]


def held():
  open(marker, "w").close()
  time.sleep(3600)


if hold == "step":
  from xtal2dos_jax.training import train
  init = train.Trainer.__init__

  def trainer_init(self, *args, **kwargs):
    init(self, *args, **kwargs)
    step, after_checkpoint = self.p_train_step, []
    epoch1 = os.path.join(os.environ["WORKDIR"], "checkpoints", "latest", "1000000")

    def held_step(*a, **k):
      if os.path.isdir(epoch1):
        after_checkpoint.append(1)
        if len(after_checkpoint) == 2:
          held()
      return step(*a, **k)

    self.p_train_step = held_step

  train.Trainer.__init__ = trainer_init
elif hold == "save":
  rename = os.rename

  def held_rename(src, dst, *a, **k):
    if ("orbax-checkpoint-tmp" in str(src) and os.path.basename(str(dst)) == "2000000"
        and os.path.basename(os.path.dirname(str(dst))) == "latest"):
      held()
    return rename(src, dst, *a, **k)

  os.rename = held_rename
sys.argv = ["experiments.train"] + sys.argv[1:]
runpy.run_module("experiments.train", run_name="__main__", alter_sys=True)
"""


def _kill_at(tmp_path, hold: str, cmd_args, workdir):
  """Runs training until it reaches `hold` (see _HELD_TRAIN), then SIGKILLs it."""
  import time
  script = tmp_path / "held_train.py"
  script.write_text(_HELD_TRAIN)
  marker = tmp_path / f"held_{hold}"
  env = dict(os.environ, MARKER=str(marker), HOLD=hold, WORKDIR=str(workdir), PYTHONPATH=REPO)
  proc = subprocess.Popen([sys.executable, str(script), *cmd_args], cwd=REPO, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None and not marker.exists():
    time.sleep(0.05)
  if not marker.exists():
    proc.kill()
    raise AssertionError(f"training never reached the hold point {hold!r}: "
                         f"{proc.communicate()[1][-3000:]}")
  proc.kill()
  proc.wait()
  proc.stderr.close()


@pytest.mark.slow
@pytest.mark.long
def test_sigkill_mid_epoch_and_mid_save_resumes_to_the_same_result(tmp_path):
  """SIGKILL in the middle of epoch 2, and then (in the resumed run) while the epoch-2
  checkpoint is being committed; the run resumed after both ends exactly as a run that
  was never killed: the same metrics.jsonl (each epoch once) and the same results."""
  args = ["--config=configs/smoke.py", "--config.data.limit=40", "--config.train.num_epochs=3"]
  reference = tmp_path / "reference"
  done = subprocess.run([sys.executable, "-m", "experiments.train", *args,
                         f"--workdir={reference}"], cwd=REPO, capture_output=True, text=True,
                        timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]

  killed = tmp_path / "killed"
  cmd_args = [*args, f"--workdir={killed}"]
  latest = killed / "checkpoints" / "latest"
  _kill_at(tmp_path, "step", cmd_args, killed)
  assert sorted(p.name for p in latest.iterdir()) == ["1000000"]       # mid-epoch 2
  _kill_at(tmp_path, "save", cmd_args, killed)
  names = sorted(p.name for p in latest.iterdir())
  assert names[0] == "1000000" and len(names) == 2 and names[1].startswith(
      "2000000.orbax-checkpoint-tmp"), names                             # written, uncommitted
  done = subprocess.run([sys.executable, "-m", "experiments.train", *cmd_args], cwd=REPO,
                        capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  assert [r["epoch"] for r in _epoch_records(str(killed))] == [1, 2, 3]
  assert _epoch_records(str(killed)) == _epoch_records(str(reference))
  assert (json.load(open(killed / "results.json"))["metrics"]
          == json.load(open(reference / "results.json"))["metrics"])


def test_metrics_past_the_checkpoint_are_dropped_on_resume(tmp_path):
  run = workdir_lib.Workdir(str(tmp_path))
  for epoch in (1, 2, 3):
    run.append_metrics({"epoch": epoch})
  with open(run.file("metrics.jsonl"), "a") as f:
    f.write('{"epoch": 4, "val')  # torn by a kill mid-write
  run.truncate_metrics(2)
  assert [json.loads(l)["epoch"] for l in open(run.file("metrics.jsonl"))] == [1, 2]
