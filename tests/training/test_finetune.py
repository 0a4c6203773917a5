"""Fine-tuning: `config.train.init_from` (another run's best weights, shapes checked) and
`config.train.freeze` (no updates to the encoder)."""
import os
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import smoke
from xtal2dos_jax.core.errors import InputError
from xtal2dos_jax.training import model_setup, optimizers, restore, train
from xtal2dos_jax.training import workdir as workdir_lib
from xtal2dos_jax.training.config_check import validate


def _config(**train_values):
  config = smoke.get_config()
  config.data.limit = 40
  config.train.num_epochs = 1
  config.train.update(train_values)
  return config


@pytest.fixture(scope="module")
def source_run(tmp_path_factory) -> str:
  workdir = str(tmp_path_factory.mktemp("finetune") / "source")
  train.train_and_evaluate(_config(), workdir)
  return workdir


def _fresh_state(config, source_run):
  budget = workdir_lib.Workdir(source_run).load_setup().budget
  return model_setup.create_train_state(config, budget, steps_per_epoch=3)


def test_init_from_gives_the_source_runs_best_params(source_run):
  best = jax.tree.map(lambda x: np.asarray(x[0]),
                      restore.restore_run_and_data(source_run)[0].params)
  state = _fresh_state(_config(seed=5), source_run)
  with pytest.raises(AssertionError):  # a fresh initialisation differs
    chex.assert_trees_all_equal(state.params, best)
  state = model_setup.init_from_run(state, source_run)
  chex.assert_trees_all_equal(state.params, best)
  assert int(state.step) == 0
  # The optimizer state starts afresh (Adam moments zero).
  assert all(float(jnp.abs(x).max()) == 0.0 for x in jax.tree.leaves(state.opt_state)
             if jnp.issubdtype(x.dtype, jnp.floating))


def test_mismatched_shapes_are_one_line_naming_the_parameter(source_run):
  config = _config()
  config.model.ff_dim = 48
  with pytest.raises(InputError) as e:
    model_setup.init_from_run(_fresh_state(config, source_run), source_run)
  message = str(e.value)
  assert e.value.name == "config.train.init_from" and "\n" not in message
  assert re.search(r": \['(decoder|encoder)'\]\S* has shape \((16, )?32,?\) in the source "
                   r"run, \((16, )?48,?\) in this model", message), message
  with pytest.raises(InputError, match="config.train.init_from: .* is not a directory"):
    train.check_init_from(_config(init_from=source_run + "_missing"))


def test_freeze_keeps_the_encoder_after_a_step():
  params = {"encoder": {"w": jnp.ones((3, 2)), "b": jnp.ones(2)},
            "context": {"w": jnp.ones((2, 2))}, "decoder": {"w": jnp.ones((2, 4))}}
  grads = jax.tree.map(lambda x: jnp.full_like(x, 0.5), params)
  config = _config(freeze="encoder", optimizer="adamw")
  tx = optimizers.create_optimizer(config.train, optax.constant_schedule(1e-2))
  updates, _ = tx.update(grads, tx.init(params), params)
  moved = optax.apply_updates(params, updates)
  chex.assert_trees_all_equal(moved["encoder"], params["encoder"])
  for name in ("context", "decoder"):
    assert float(jnp.abs(moved[name]["w"] - params[name]["w"]).min()) > 1e-3
  with pytest.raises(InputError, match="config.train.freeze: unknown freeze 'decoder'"):
    validate(_config(freeze="decoder"))


def test_finetune_run_frozen_encoder_and_resume_does_not_reinitialise(source_run, tmp_path,
                                                                     monkeypatch):
  workdir = str(tmp_path / "finetune")
  config = _config(init_from=source_run, freeze="encoder", seed=1)
  train.train_and_evaluate(config, workdir)
  source = restore.restore_run_and_data(source_run)[0].params
  tuned = restore.restore_run_and_data(workdir)[0].params
  chex.assert_trees_all_equal(tuned["encoder"], source["encoder"])   # frozen for an epoch
  with pytest.raises(AssertionError):
    chex.assert_trees_all_equal(tuned["decoder"], source["decoder"])
  # A run resuming from its own checkpoint continues from it, not from the source again.
  os.remove(os.path.join(workdir, "results.json"))

  def refuse(*args, **kwargs):
    raise AssertionError("init_from re-applied on resume")

  monkeypatch.setattr(model_setup, "init_from_run", refuse)
  train.train_and_evaluate(config, workdir)
  assert os.path.exists(os.path.join(workdir, "results.json"))
