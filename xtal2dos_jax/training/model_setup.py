"""The train state, built from the config and a padding budget alone; fine-tuning.

`create_train_state` is the one set-up path of training, the benchmark, evaluate and
predict: model + optimizer + initial state from the config, initialised on an
all-padding batch of the budget's shapes (`batching.dummy_batch`), never on a sample of
the data. `abstract_train_state` is its shapes, the template checkpoints restore into.
`init_from_run` (`config.train.init_from`) replaces a fresh state's parameters by another
run's best weights, shapes checked. An ensemble's state is its members' states stacked
on a leading axis.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax.training import train_state

from xtal2dos_jax import models
from xtal2dos_jax.core.errors import InputError
from xtal2dos_jax.input_pipeline import batching
from xtal2dos_jax.training import optimizers
from xtal2dos_jax.training import checkpoints as checkpoints_lib
from xtal2dos_jax.training import workdir as workdir_lib


class TrainState(train_state.TrainState):
  """Parameters, optimizer state and step; the dropout stream derives from `rng`.

  `ema_params` is an exponential moving average of `params` (Polyak averaging,
  `config.train.ema_decay` > 0) or None; validation, checkpoint selection, evaluation
  and prediction use `eval_params`, the average when there is one.
  """
  rng: jax.Array
  ema_params: Any = None

  @property
  def eval_params(self):
    return self.params if self.ema_params is None else self.ema_params


def ensemble_size(config: ml_collections.ConfigDict) -> int:
  """Members of the run (`config.train.ensemble_size`); 1 is a single model, whose state
  has no member axis."""
  return int(config.train.ensemble_size)


def member_seeds(config: ml_collections.ConfigDict) -> list[int]:
  """Seed of each ensemble member: config.seed + k for member k, so member k starts,
  drops out and orders its data exactly as a single run with seed config.seed + k."""
  return [int(config.seed) + k for k in range(ensemble_size(config))]


def create_train_state(config: ml_collections.ConfigDict, budget: batching.Budget,
                       steps_per_epoch: int) -> TrainState:
  """Model, optimizer and initial train state from the config alone.

  The parameters are initialised (seed `config.seed`) on `batching.dummy_batch` of the
  padding `budget`: their shapes depend only on the config, so no data is needed.
  `steps_per_epoch` sizes the learning-rate schedule (`optimizers.create_learning_rate_fn`).
  Training, the benchmark, evaluation and prediction all build their state here;
  restore templates are its `jax.eval_shape` (`abstract_train_state`).

  An ensemble (`config.train.ensemble_size` = K > 1) is the K members' states (seeds
  `member_seeds`) stacked on a leading member axis of every array leaf (params [K, ...],
  optimizer state, step [K], rng [K, 2]); the train step maps over that axis.
  """
  seeds = member_seeds(config)
  model = models.create_model(config)
  tx = optimizers.create_optimizer(
      config.train, optimizers.create_learning_rate_fn(config, steps_per_epoch))
  batch = jax.tree.map(jnp.asarray, batching.dummy_batch(
      budget, config.data.l_y, edge_vectors=models.needs_edge_vectors(config)))

  def init(seed):
    """(params, dropout rng) of the member with this seed."""
    init_rng, dropout_rng = jax.random.split(jax.random.PRNGKey(seed))
    return model.init({"params": init_rng}, batch, train=False)["params"], dropout_rng

  def state(params, rng) -> TrainState:
    ema = jax.tree.map(jnp.copy, params) if config.train.ema_decay > 0 else None
    return TrainState.create(apply_fn=model.apply, params=params, tx=tx, rng=rng,
                             ema_params=ema)

  if len(seeds) == 1:
    return state(*jax.jit(init)(seeds[0]))
  # The members' initialisations as one vmapped program (one trace of the model, not K);
  # each member's parameters are those `init` gives for its seed alone.
  params, rngs = jax.jit(jax.vmap(init))(jnp.asarray(seeds, jnp.int32))
  members = [state(jax.tree.map(lambda x, k=k: x[k], params), rngs[k])
             for k in range(len(seeds))]
  treedef = jax.tree.structure(members[0])  # members differ only in array values
  return jax.tree.unflatten(treedef, [jnp.stack(xs) for xs in
                                      zip(*(jax.tree.leaves(m) for m in members))])

def _first_mismatch(source: Any, target: Any) -> str | None:
  """`<path> has shape <source shape> in the source run, <target shape> in this model`
  for the first parameter (in the target's order) whose shape differs or that the source
  lacks, else the first source parameter this model lacks; None when the trees match."""
  have = {jax.tree_util.keystr(p): np.shape(x)
          for p, x in jax.tree_util.tree_flatten_with_path(source)[0]}
  want = {jax.tree_util.keystr(p): np.shape(x)
          for p, x in jax.tree_util.tree_flatten_with_path(target)[0]}
  for path, shape in want.items():
    if have.get(path) != shape:
      return (f"{path} has shape {have.get(path, 'absent')} in the source run, "
              f"{shape} in this model")
  extra = next((path for path in have if path not in want), None)
  return None if extra is None else f"{extra} of the source run is absent from this model"


def init_from_run(state: TrainState, source_workdir: str) -> TrainState:
  """`state` with its parameters replaced by the best checkpoint of another run
  (fine-tuning, `config.train.init_from`): the evaluation parameters that run reports
  (its EMA ones when it kept an average), for the encoder, the crystal context and the
  decoder. The optimizer state starts afresh (as does the EMA, from the restored
  values); the step count, the dropout stream and the label scaler are this run's own,
  so the scaler is fitted on this run's data.

  An ensemble starts every member from a single-model source, or member k from member
  k of an ensemble source of the same size.

  Raises InputError naming `config.train.init_from` when the source is no training
  workdir holding a checkpoint, or (one line) the first parameter whose shape differs
  between the two models.
  """
  name = "config.train.init_from"
  source = workdir_lib.Workdir(source_workdir)
  try:
    source_config = workdir_lib.load_config(source_workdir)
    setup = source.load_setup()
  except InputError as e:
    raise InputError(name, f"{source_workdir}: {e.reason}") from None
  if setup is None:
    raise InputError(name, f"{source_workdir} has no setup.json (not a run of this version "
                     "that started training)")
  try:
    best, _ = checkpoints_lib.restore_best_of(
        source.checkpoint_dir, abstract_train_state(source_config, setup.budget))
  except InputError as e:
    raise InputError(name, f"{source_workdir}: {e.reason}") from None
  restored = best.state.eval_params
  k, source_k = ensemble_size_of_state(state), ensemble_size(source_config)
  if k > 1 and source_k == 1:  # every member starts from the single source model
    restored = jax.tree.map(lambda x: np.broadcast_to(x, (k,) + np.shape(x)), restored)
  mismatch = _first_mismatch(restored, state.params)
  if mismatch:
    raise InputError(name, f"{source_workdir} cannot initialise this model: {mismatch}")
  params = jax.tree.map(lambda x, like: jnp.asarray(x, like.dtype), restored, state.params)
  ema = None if state.ema_params is None else jax.tree.map(jnp.copy, params)
  return state.replace(params=params, opt_state=state.tx.init(params), ema_params=ema)


def ensemble_size_of_state(state: TrainState) -> int:
  """K of a stacked ensemble state (its step is int[K]), 1 for a single model."""
  return 1 if np.ndim(state.step) == 0 else int(np.shape(state.step)[0])


def abstract_train_state(config: ml_collections.ConfigDict,
                         budget: batching.Budget) -> TrainState:
  """Shapes and dtypes of `create_train_state` (jax.ShapeDtypeStruct leaves), without
  running the initialisation: the template a checkpoint is restored into."""
  return jax.eval_shape(lambda: create_train_state(config, budget, steps_per_epoch=1))
