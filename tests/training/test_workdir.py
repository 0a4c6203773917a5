"""Workdir files: modes under the umask, and where a rerun resumes."""
from __future__ import annotations

import json
import os
import stat

import pytest

from configs import smoke
from xtal2dos_jax.core import atomic_io
from xtal2dos_jax.training import workdir as workdir_lib


@pytest.fixture
def umask():
  """Sets the process umask for one test and restores it afterwards."""
  saved = os.umask(0o022)
  os.umask(saved)
  yield os.umask
  os.umask(saved)


def _mode(path) -> int:
  return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_respect_the_umask(tmp_path, umask, mask, expected):
  """Temp-file-and-rename writes get the mode a plain open() would (0o666 & ~umask),
  not mkstemp's 0600, so collaborators can read a shared run's files."""
  umask(mask)
  assert atomic_io.current_umask() == mask
  path = tmp_path / "results.json"
  atomic_io.write_json_atomic(str(path), {"metrics": {"mae": 1.0}})
  assert _mode(path) == expected
  assert json.load(open(path)) == {"metrics": {"mae": 1.0}}
  atomic_io.write_text_atomic(str(tmp_path / "notes.txt"), "x")
  assert _mode(tmp_path / "notes.txt") == expected
  with open(tmp_path / "plain.txt", "w") as f:
    f.write("x")
  assert _mode(tmp_path / "plain.txt") == expected            # the same as open()


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o077, 0o600)])
def test_workdir_files_respect_the_umask(tmp_path, umask, mask, expected):
  umask(mask)
  run = workdir_lib.Workdir(str(tmp_path / "run"))
  run.prepare(smoke.get_config())
  for epoch in (1, 2, 3):
    run.append_metrics({"epoch": epoch})
  run.truncate_metrics(2)                                    # rewritten via a temp file
  run.save_results({"metrics": {}})
  for name in ("config.json", "run.json", "metrics.jsonl", "results.json"):
    assert _mode(run.file(name)) == expected, name
  assert [json.loads(l)["epoch"] for l in open(run.file("metrics.jsonl"))] == [1, 2]
  assert not [f for f in os.listdir(run.path) if f.endswith(".tmp")]


def test_current_umask_without_proc(monkeypatch, umask):
  """Where /proc/self/status is unreadable the umask is read by swapping it briefly."""
  umask(0o027)
  real_open = open

  def no_proc(path, *a, **k):
    if str(path).startswith("/proc/"):
      raise OSError("no /proc")
    return real_open(path, *a, **k)

  monkeypatch.setattr("builtins.open", no_proc)
  assert atomic_io.current_umask() == 0o027
  assert os.umask(0o027) == 0o027                           # left unchanged


def test_last_checkpoint_reads_committed_step_names(tmp_path):
  """Where a rerun resumes, from the step directory names alone (safe on any thread);
  Orbax's temporary directories of unfinished saves do not count."""
  checkpoints = tmp_path / "checkpoints"
  assert workdir_lib.last_checkpoint(str(checkpoints)) is None
  latest = checkpoints / "latest"
  os.makedirs(latest / "2000000")
  os.makedirs(latest / "3000007.orbax-checkpoint-tmp-12")
  assert workdir_lib.last_checkpoint(str(checkpoints)) == (2, 0)
  os.makedirs(latest / "2000005")
  os.makedirs(latest / "1000000")
  assert workdir_lib.last_checkpoint(str(checkpoints)) == (2, 5)
