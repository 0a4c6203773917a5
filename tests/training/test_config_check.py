"""`config_check.validate`: every config value a module builds from is checked once, at
the entry, with a one-line error naming the key."""
import json
import os

import pytest

from configs import edos, phdos, phdos_ensemble, smoke
from xtal2dos_jax import models
from xtal2dos_jax.core.errors import InputError
from xtal2dos_jax.inference import pretrained
from xtal2dos_jax.training import config_check
from xtal2dos_jax.training.workdir import load_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _with(key: str, value):
  config = smoke.get_config()
  section, name = key.split(".")
  config[section][name] = value
  return config


def test_every_shipped_config_and_model_is_valid():
  for module in (phdos, edos, phdos_ensemble, smoke):
    config = module.get_config()
    assert config_check.validate(config) is config
  for name in pretrained.available(pretrained.PACKAGE_DIR):
    load_config(os.path.join(pretrained.PACKAGE_DIR, name))   # validates


def test_every_config_under_configs_is_valid():
  """Each config file of configs/ (ablations and benchmarks included) passes."""
  import importlib
  for dirpath, _, files in os.walk(os.path.join(REPO, "configs")):
    for name in sorted(files):
      if name.endswith(".py") and name != "__init__.py":
        rel = os.path.relpath(os.path.join(dirpath, name), REPO)[:-3].replace(os.sep, ".")
        config_check.validate(importlib.import_module(rel).get_config())


@pytest.mark.parametrize("key", sorted(config_check.CHOICES))
def test_each_choice_is_refused_in_one_line_naming_the_key(key):
  with pytest.raises(InputError) as e:
    config_check.validate(_with(key, "no_such_value"))
  message = str(e.value)
  assert message.startswith(f"config.{key}: unknown ") and "\n" not in message
  assert "'no_such_value'; expected one of " in message
  valid = config_check.CHOICES[key][0]
  for value in valid:
    config = _with(key, value)
    if key == "train.loss" and value in ("kl", "wd"):
      config.data.scaling = "normalized_sum"
    if key == "data.scaling" and value != "normalized_sum":
      config.train.loss = "mae"
    config_check.validate(config)


def test_a_near_miss_gets_a_did_you_mean():
  with pytest.raises(InputError, match=r"^config.model.encoder: unknown encoder 'unimpp'; "
                     r"expected one of .*; did you mean 'unimp'\?$"):
    config_check.validate(_with("model.encoder", "unimpp"))
  with pytest.raises(InputError, match=r"did you mean 'cosine'\?$"):
    config_check.validate(_with("train.schedule", "cosin"))


def test_the_choices_are_the_registries():
  """A registered encoder or decoder is valid without a second list to keep in step."""
  assert set(config_check.CHOICES["model.encoder"][0]) == set(models.ENCODERS)
  assert set(config_check.CHOICES["model.decoder"][0]) == set(models.DECODERS)


@pytest.mark.parametrize("key, value, reason", [
    ("model.num_heads", 3, "num_heads=3 must be >= 1 and divide d_model=16"),
    ("model.num_heads", 0, "num_heads=0 must be >= 1"),
    ("model.chunk_size", 0, "must be an integer >= 1, got 0"),
    ("model.e3nn_lmax", 3, "3 must be 1 or 2"),
    ("model.e3nn_irreps", "32x0o", "has no 0e channel"),
    ("model.e3nn_irreps", "32xq", "is not an irreps string"),
    ("data.max_num_nbr", -1, "-1 must be >= 0"),
    ("data.radius", 0.0, "0.0 must be > 0"),
    ("data.train_fraction", 1.5, "must be in (0, 1], got 1.5"),
    ("train.num_epochs", 0, "must be at least 1, got 0"),
    ("train.ensemble_size", 0, "must be at least 1, got 0"),
    ("train.batch_size", 0, "must be at least 1, got 0"),
])
def test_values_no_module_can_build_from(key, value, reason):
  config = _with(key, value)
  if key.startswith("model.e3nn"):
    config.model.encoder = "e3nn"     # the E3NN keys are checked for that encoder
  with pytest.raises(InputError) as e:
    config_check.validate(config)
  assert str(e.value).startswith(f"config.{key}: ") and reason in str(e.value)


def test_a_saved_run_config_is_checked_when_loaded(tmp_path):
  config = smoke.get_config()
  config.model.decoder = "lstm"
  with open(tmp_path / "config.json", "w") as f:
    json.dump(json.loads(config.to_json()), f)
  with pytest.raises(InputError, match="^config.model.decoder: unknown decoder 'lstm'"):
    load_config(str(tmp_path))


def test_only_the_entry_points_check_choices():
  """The choice check (`check_choice`) runs in config_check for config values, and only
  where other inputs arrive (a saved label scaler, the --split and --dtype flags)."""
  users = set()
  for dirpath, _, files in os.walk(os.path.join(REPO, "xtal2dos_jax")):
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(dirpath, name)
        with open(path) as f:
          if "check_choice(" in f.read():
            users.add(os.path.relpath(path, REPO))
  assert users == {"xtal2dos_jax/core/errors.py", "xtal2dos_jax/training/config_check.py",
                   "xtal2dos_jax/input_pipeline/labels.py",
                   "xtal2dos_jax/evaluation/evaluate.py", "xtal2dos_jax/inference/export.py"}
