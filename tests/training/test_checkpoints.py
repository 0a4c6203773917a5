"""Orbax checkpoints: which checkpoint evaluation restores, and how it says so."""
from __future__ import annotations

import logging

import flax.struct
import jax.numpy as jnp
import numpy as np
import pytest

from xtal2dos_jax.core.errors import InputError
from xtal2dos_jax.training import checkpoints as checkpoints_lib


@flax.struct.dataclass
class _State:
  step: jnp.ndarray
  params: dict
  opt_state: dict
  rng: jnp.ndarray
  ema_params: dict | None = None


def _state(value: float) -> _State:
  return _State(jnp.int32(0), {"w": jnp.full(3, value)}, {"m": jnp.zeros(3)},
                jnp.zeros(2, jnp.uint32))


def _saved_run(directory):
  """Checkpoints with epochs 1 (best, w = 1) and 2 (latest only, w = 2)."""
  ckpt = checkpoints_lib.Checkpoints(str(directory))
  for epoch, score in ((1, 0.5), (2, 0.9)):
    resume = checkpoints_lib.ResumeState(epoch=epoch, best_epoch=1)
    ckpt.save(_state(float(epoch)), resume)
    if epoch == 1:
      ckpt.save_best(_state(1.0), resume, score)
  return ckpt


def test_restore_best_names_the_best_checkpoint(tmp_path, caplog):
  ckpt = _saved_run(tmp_path / "checkpoints")
  with caplog.at_level(logging.WARNING):
    resume = ckpt.restore_best(_state(0.0))
  np.testing.assert_array_equal(resume.state.params["w"], np.ones(3))
  assert resume.epoch == 1
  assert ckpt.restored == checkpoints_lib.RestoredCheckpoint("best", 1, 1_000_000)
  assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
  ckpt.close()


def test_restore_best_without_best_warns_and_names_the_latest_epoch(tmp_path, caplog):
  """A workdir whose checkpoints/best is gone is evaluated on the latest checkpoint, and
  says so, naming its epoch, instead of passing it off as the best one."""
  import shutil
  _saved_run(tmp_path / "checkpoints").close()
  shutil.rmtree(tmp_path / "checkpoints" / "best")
  ckpt = checkpoints_lib.Checkpoints(str(tmp_path / "checkpoints"))
  with caplog.at_level(logging.WARNING):
    resume = ckpt.restore_best(_state(0.0))
  np.testing.assert_array_equal(resume.state.params["w"], np.full(3, 2.0))
  assert ckpt.restored == checkpoints_lib.RestoredCheckpoint("latest", 2, 2_000_000)
  messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
  assert messages == [f"no best checkpoint in {tmp_path / 'checkpoints' / 'best'}; "
                      "evaluating the latest, epoch 2"]
  ckpt.close()


def test_restore_best_of_an_empty_directory_is_one_line_error(tmp_path):
  ckpt = checkpoints_lib.Checkpoints(str(tmp_path / "checkpoints"))
  with pytest.raises(InputError, match="holds no checkpoint; train first"):
    ckpt.restore_best(_state(0.0))
  assert ckpt.restored is None
  ckpt.close()
