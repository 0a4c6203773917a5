"""One check of a config, at the entry of everything that builds from one.

`validate(config)` refuses every value no module could build from, with the one-line
`InputError` naming the key (and, for a misspelt choice, the nearest valid one). It runs
where a config enters the library: `train.train_and_evaluate`, `workdir.load_config`
(evaluate, predict, export, fine-tuning's source run, `Predictor`), and the compare and
sweep binaries for every variant before the first is trained. The modules behind them
trust the config: a registry is a plain lookup, a factory reads its keys.

The choices are the modules' own registries (`CHOICES`), so a new encoder, loss or
schedule is valid here as soon as it is registered. What depends on the data (a split
that would be empty, a batch smaller than the devices, a fold beyond the crystals) is
checked where the data is known.
"""
from __future__ import annotations

from typing import Any, Sequence

import ml_collections

from xtal2dos_jax import models
from xtal2dos_jax.core.errors import InputError, check_choice
from xtal2dos_jax.input_pipeline import featurize, labels
from xtal2dos_jax.input_pipeline.readers import loading
from xtal2dos_jax.models import dostransformer, precision, transformer_decoder, xtal2dos
from xtal2dos_jax.objectives import losses, metrics
from xtal2dos_jax.physics import dos_properties
from xtal2dos_jax.training import optimizers

# config key -> (valid values, the noun of the error message; None: from the key).
CHOICES: dict[str, tuple[Sequence[str], str | None]] = {
    "data.format": (loading.FORMATS, "format"),
    "data.kind": (dos_properties.KINDS, None),
    "data.scaling": (labels.SCALINGS, None),
    "model.encoder": (tuple(models.ENCODERS), None),
    "model.decoder": (tuple(models.DECODERS), None),
    "model.atom_features": (featurize.ATOM_FEATURES, "value"),
    "model.position_embedding": (transformer_decoder.POSITION_EMBEDDINGS, None),
    "model.composition_activation": (tuple(xtal2dos.COMPOSITION_ACTIVATIONS), None),
    "model.e3nn_variant": (models.E3NN_VARIANTS, "E3NN variant"),
    "model.dostransformer_prompt": (dostransformer.PROMPTS, None),
    "model.dtype": (tuple(precision.PRECISIONS), None),
    "train.optimizer": (optimizers.OPTIMIZERS, None),
    "train.schedule": (optimizers.SCHEDULES, None),
    "train.loss": (tuple(losses.LOSSES), None),
    "train.select_on": (tuple(metrics.VALIDATION_SCORES), "choice"),
    "train.freeze": (optimizers.FREEZE, None),
}


def _value(config: ml_collections.ConfigDict, key: str) -> Any:
  section, name = key.split(".")
  return config[section][name]


def _require(ok: bool, key: str, reason: str) -> None:
  if not ok:
    raise InputError(f"config.{key}", reason)


def _is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _check_model(m: ml_collections.ConfigDict) -> None:
  _require(_is_int(m.num_heads) and m.num_heads >= 1 and m.d_model % m.num_heads == 0,
           "model.num_heads", f"num_heads={m.num_heads} must be >= 1 and divide "
           f"d_model={m.d_model}")
  _require(_is_int(m.chunk_size) and m.chunk_size >= 1, "model.chunk_size",
           f"must be an integer >= 1, got {m.chunk_size!r}")
  _require(m.e3nn_lmax in (1, 2), "model.e3nn_lmax", f"{m.e3nn_lmax} must be 1 or 2")
  _require(m.e3nn_variant != "gate_points" or m.e3nn_num_basis >= 2, "model.e3nn_num_basis",
           f"{m.e3nn_num_basis}: the gate_points Gaussian basis needs at least 2 centres "
           "(0 and the radius)")
  if m.encoder == "e3nn":
    _check_irreps(m.e3nn_irreps)
  weight = float(m.dostransformer_prompt_free_weight)
  _require(weight >= 0.0, "model.dostransformer_prompt_free_weight", f"{weight} must be >= 0")
  _require(weight == 0.0 or m.dostransformer_prompt == "system",
           "model.dostransformer_prompt_free_weight",
           f"{weight} > 0 needs config.model.dostransformer_prompt='system' (with "
           f"'{m.dostransformer_prompt}' the returned output is the prompt-free one already)")


def _check_irreps(text: str) -> None:
  """The E3NN encoder's hidden irreps (e3nn-jax, ~1 s to import, only for that encoder)."""
  import e3nn_jax
  try:
    irreps = e3nn_jax.Irreps(text)
  except (ValueError, AssertionError) as e:
    raise InputError("config.model.e3nn_irreps", f"{text!r} is not an irreps string like "
                     f"32x0e+32x0o+32x1e+32x1o ({e})") from None
  _require(irreps.filter(keep=["0e"]).num_irreps > 0, "model.e3nn_irreps",
           f"{text!r} has no 0e channel (the element embedding and the read-out need one)")


def _check_data(d: ml_collections.ConfigDict) -> None:
  _require(_is_int(d.max_num_nbr) and d.max_num_nbr >= 0, "data.max_num_nbr",
           f"{d.max_num_nbr} must be >= 0 (0 = every neighbour within the radius)")
  _require(float(d.radius) > 0, "data.radius", f"{d.radius} must be > 0 (Angstrom)")
  _require(_is_int(d.l_y) and d.l_y >= 1, "data.l_y", f"{d.l_y} must be >= 1")
  try:
    fraction = float(d.train_fraction)
  except (TypeError, ValueError):
    raise InputError("config.data.train_fraction",
                     f"expected a number, got {d.train_fraction!r}") from None
  _require(0.0 < fraction <= 1.0, "data.train_fraction", f"must be in (0, 1], got {fraction}")


def _check_train(t: ml_collections.ConfigDict, scaling: str) -> None:
  _require(int(t.num_epochs) >= 1, "train.num_epochs",
           f"must be at least 1, got {t.num_epochs} (to evaluate a trained run use "
           "`python -m experiments.evaluate --workdir=...`)")
  _require(int(t.ensemble_size) >= 1, "train.ensemble_size",
           f"must be at least 1, got {t.ensemble_size}")
  _require(int(t.batch_size) >= 1, "train.batch_size", f"must be at least 1, got {t.batch_size}")
  if t.loss in losses.NEEDS_NORMALIZED_SUM and scaling != "normalized_sum":
    valid = [name for name in losses.LOSSES if name not in losses.NEEDS_NORMALIZED_SUM]
    raise InputError("config.train.loss",
                     f"loss {t.loss!r} needs config.data.scaling='normalized_sum', got "
                     f"{scaling!r}; with {scaling!r} use one of {', '.join(valid)}")


def validate(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` unchanged if every value can be built from, else the InputError of the
  first bad one: `config.<key>: <reason>` (choices: 'unknown <what> <value>; expected one
  of ...', with a did-you-mean for a near miss)."""
  for key, (valid, what) in CHOICES.items():
    check_choice(_value(config, key), valid, f"config.{key}", what=what)
  _check_model(config.model)
  _check_data(config.data)
  _check_train(config.train, config.data.scaling)
  return config

