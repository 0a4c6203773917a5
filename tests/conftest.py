"""Session-scoped fixtures: a tiny config, a few featurised crystals and padded batches.

Everything is small (the model of configs/smoke.py: d_model 16, 2 heads, 2 encoder + 1
decoder layers; l_y 12, at most 6 atoms per crystal) so that the jitted model compiles
in seconds; all crystals share one padding budget (`tiny_budget`), so every batch built
with it reuses one compiled function.
"""
from __future__ import annotations

import os

from xtal2dos_jax.training.allocator import keep_freed_memory

keep_freed_memory()  # as the training binaries do first in main(), before numpy and jax

# XLA compiles the tests' programs with its cheap settings (no LLVM optimisation, the
# classic fusion emitters): compiling, not running, is what the suite's tiny models
# spend their time on, and these settings halve it. Set before JAX starts, and inherited
# by the binaries the tests run as subprocesses, so their programs share one compilation
# cache. The numerical tests hold results to tolerances; the binaries a user runs keep
# XLA's defaults.
TEST_XLA_FLAGS = ("--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true "
                  "--xla_cpu_use_fusion_emitters=false")
if TEST_XLA_FLAGS not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAGS}".strip()

import functools
from typing import Any, Callable, NamedTuple, Sequence

import ase
import ase.build
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import smoke
from xtal2dos_jax.input_pipeline import batching, labels
from xtal2dos_jax.input_pipeline.batching import assemble, Batch, Budget, LabelledGraphs
from xtal2dos_jax.input_pipeline.featurize import featurize_crystal
from xtal2dos_jax.input_pipeline.graph_cache import GraphSet
from xtal2dos_jax.models import create_model
from xtal2dos_jax.objectives import losses
from xtal2dos_jax.training import model_setup, train
from xtal2dos_jax.training.runtime import enable_compilation_cache


def pytest_configure(config):
  """Shares compiled XLA executables across tests, xdist workers and CI runs, and keeps
  featurisation caches out of the user's home."""
  import tempfile
  root = os.path.join(tempfile.gettempdir(), "xtal2dos_jax_tests")
  os.environ.setdefault("XDG_CACHE_HOME", os.path.join(root, "xdg"))
  # The binaries' default cache under that XDG_CACHE_HOME, so programs compiled here and
  # in the subprocess tests' binaries are compiled once; here every program is kept, also
  # the many that compile in under the binaries' 0.2 s threshold, since each test builds
  # its own jitted functions and would compile them again.
  enable_compilation_cache()
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def _triclinic() -> ase.Atoms:
  """A 3-atom triclinic cell with generic positions (no distance ties between species)."""
  cell = [[4.2, 0.3, 0.2], [0.6, 4.0, 0.3], [0.4, 0.5, 4.4]]
  scaled = [[0.0, 0.0, 0.0], [0.48, 0.31, 0.22], [0.21, 0.67, 0.59]]
  return ase.Atoms("MgAlO", scaled_positions=scaled, cell=cell, pbc=True)


@pytest.fixture(scope="session")
def tiny_config():
  """configs/smoke.py (the model sizes) with what the fixtures need: 12 DoS points (short
  decoder sequences); small graphs (6 Å cutoff, 8 neighbours, 0.4 Å Gaussian step), which
  keep the tiny crystals' edges few, the tests fast and the bf16 tolerance tight; and
  decoder dropout, so training-mode tests exercise dropout in the decoder as well."""
  config = smoke.get_config()
  config.data.l_y = 12
  config.data.radius = 6.0
  config.data.max_num_nbr = 8
  config.data.gaussian_step = 0.4
  config.model.decoder_dropout = 0.1
  return config


@pytest.fixture(scope="session")
def tiny_crystals() -> dict[str, ase.Atoms]:
  """name -> structure. `tri_perm` / `tri_super` / `nacl_super` are the same crystals as
  `tri` / `nacl` with permuted atoms / a 2x1x1 supercell."""
  nacl = ase.build.bulk("NaCl", "rocksalt", a=5.64)
  tri = _triclinic()
  return {
      "nacl": nacl,
      "si": ase.build.bulk("Si", "diamond", a=5.43),
      "tri": tri,
      "tri_perm": tri[[2, 0, 1]],
      "tri_super": tri.repeat((2, 1, 1)),
      "nacl_super": nacl.repeat((2, 1, 1)),
  }


@pytest.fixture(scope="session")
def tiny_labelled(tiny_config, tiny_crystals) -> LabelledGraphs:
  """All tiny crystals featurised, with random labels normalised to sum 1."""
  d = tiny_config.data
  names = list(tiny_crystals)
  graphs = GraphSet.from_graphs(
      names, [featurize_crystal(a, d.radius, d.max_num_nbr, name=n)
              for n, a in tiny_crystals.items()])
  y = np.random.default_rng(0).dirichlet(np.ones(d.l_y), len(names)).astype(np.float32)
  return LabelledGraphs(graphs, y, np.ones(len(names), np.float32))


@pytest.fixture(scope="session")
def tiny_budget(tiny_labelled) -> Budget:
  """One budget that holds all tiny crystals at once (plus padding)."""
  g = tiny_labelled.graphs
  return Budget(n_node=int(g.n_node.sum()) + 8, n_edge=int(g.n_edge.sum()) + 16,
                n_graph=len(g) + 1, max_atoms=int(g.n_node.max()))


@pytest.fixture(scope="session")
def make_tiny_batch(tiny_labelled, tiny_budget) -> Callable[..., Batch]:
  """make_tiny_batch(names, budget=tiny_budget) -> Batch of those crystals, in order."""
  ids = tiny_labelled.graphs.ids

  def make(names: Sequence[str], budget: Budget | None = None) -> Batch:
    return assemble(tiny_labelled, np.array([ids.index(n) for n in names]),
                    budget or tiny_budget)
  return make


@pytest.fixture(scope="session")
def tiny_batch(make_tiny_batch) -> Batch:
  """NaCl, Si and the triclinic cell, then padding crystals."""
  return make_tiny_batch(["nacl", "si", "tri"])


@pytest.fixture(scope="session")
def decoder_inputs(tiny_config):
  """(context [3, 2d], atoms [3, 4, d], atom_mask [3, 4], y [3, l_y]); crystal 2 is padding."""
  d, l_y = tiny_config.model.d_model, tiny_config.data.l_y
  rng = np.random.default_rng(0)
  context = jnp.asarray(rng.normal(size=(3, 2 * d)), jnp.float32)
  atom_mask = jnp.array([[True, True, True, False], [True, False, False, False], [False] * 4])
  atoms = jnp.asarray(rng.normal(size=(3, 4, d)), jnp.float32) * atom_mask[..., None]
  y = jnp.asarray(rng.dirichlet(np.ones(l_y), 3), jnp.float32)
  return context, atoms, atom_mask, y


@pytest.fixture(scope="session")
def tiny_model(tiny_config):
  return create_model(tiny_config)


@pytest.fixture(scope="session")
def tiny_variables(tiny_model, tiny_batch):
  return tiny_model.init(jax.random.key(0), tiny_batch, train=False)


@pytest.fixture(scope="session")
def tiny_predict(tiny_model):
  """Jitted eval-mode forward pass: (variables, batch) -> float32[G, l_y]."""
  return jax.jit(functools.partial(tiny_model.apply, train=False))


@pytest.fixture(scope="session")
def tiny_train_step(tiny_model):
  """Jitted training-mode pass: (params, batch, dropout_key) -> ((loss, predictions), grads).

  loss = sum over real crystals of KL(y || prediction).
  """
  def loss_fn(params, batch, key):
    pred = tiny_model.apply({"params": params}, batch, train=True, rngs={"dropout": key})
    per_crystal = losses.kl_divergence(batch.y, pred)
    return jnp.sum(jnp.where(batch.graph_mask, per_crystal, 0.0)), pred

  return jax.jit(jax.value_and_grad(loss_fn, has_aux=True))


class TrainStepResult(NamedTuple):
  """What `train_one_step` leaves behind: the Trainer, the state after the step, the
  one-device stacked batch it took (leading axis 1), and per parameter the largest
  |change| of the step (a tree like the params of float scalars)."""
  trainer: train.Trainer
  state: Any
  batch: Batch
  moved: Any


@pytest.fixture(scope="session")
def train_one_step(tiny_crystals) -> Callable[..., TrainStepResult]:
  """train_one_step(config, names=("tri", "nacl", "si")) -> TrainStepResult.

  Builds the model of `config` the way the train binary does (a Trainer on one device, a
  TrainState for a budget that holds exactly those tiny crystals, featurised with the
  config's radius and neighbour count, random labels scaled by the config's scaling),
  takes one p_train_step and asserts its loss is finite. Sets
  `config.train.warmup_epochs = 0` first, so the learning rate at step 0 is non-zero and
  the step can move parameters (`moved`). One compile per call.
  """
  def run(config, names: Sequence[str] = ("tri", "nacl", "si")) -> TrainStepResult:
    config.train.warmup_epochs = 0
    d = config.data
    names = list(names)
    graphs = GraphSet.from_graphs(
        names, [featurize_crystal(tiny_crystals[n], d.radius, d.max_num_nbr) for n in names])
    y = np.random.default_rng(1).random((len(names), d.l_y)).astype(np.float32)
    scaler = labels.LabelScaler.fit(d.scaling, y)
    ys, scale = scaler.transform(y)
    data = LabelledGraphs(graphs, np.asarray(ys, np.float32), np.asarray(scale, np.float32))
    budget = batching.make_budget(graphs.n_node, graphs.n_edge, len(names))
    trainer = train.Trainer(config, scaler, devices=jax.local_devices()[:1])
    state = trainer.replicate(model_setup.create_train_state(config, budget, steps_per_epoch=1))
    batch = batching.stack([assemble(data, np.arange(len(names)), budget,
                                     edge_vectors=trainer.edge_vectors)])
    before = jax.tree.map(np.asarray, state.params)
    state, out = trainer.p_train_step(state, batch)
    assert bool(out["finite"][0]) and np.isfinite(float(out["loss_sum"][0]))
    moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(b) - a).max()), before,
                         state.params)
    return TrainStepResult(trainer, state, batch, moved)
  return run


@pytest.fixture(scope="session")
def check_locality(make_tiny_batch) -> Callable[..., None]:
  """check_locality(predict, tol): asserts what every distance-graph encoder owes the
  batching, for `predict`: (Batch of the tiny crystals) -> (outputs float[G, l_y], node
  states float[N, d]) (a jitted forward pass; all batches share `tiny_budget`):

  - permuting the atoms of `tri` (`tri_perm`) leaves its output alone, and the node
    states follow their atoms (atom a of tri_perm is atom [2, 0, 1][a] of tri);
  - other crystals in the batch leave a crystal's output alone;
  - padding edges rewired onto a real atom (senders and receivers 0, distance 1.5 Å)
    change nothing.
  """
  def check(predict, tol: dict) -> None:
    out, states = predict(make_tiny_batch(["tri"]))
    perm, perm_states = predict(make_tiny_batch(["tri_perm"]))
    np.testing.assert_allclose(np.asarray(perm)[0], np.asarray(out)[0], **tol)
    np.testing.assert_allclose(np.asarray(perm_states)[:3], np.asarray(states)[[2, 0, 1]],
                               **tol)
    crowded, _ = predict(make_tiny_batch(["nacl", "si", "tri"]))
    np.testing.assert_allclose(np.asarray(crowded)[2], np.asarray(out)[0], **tol)
    batch = make_tiny_batch(["tri"])
    g = batch.graph
    e_real = int(np.asarray(g.n_edge)[0])
    rewired = g._replace(senders=np.array(g.senders), receivers=np.array(g.receivers),
                         edges=np.array(g.edges))
    rewired.senders[e_real:], rewired.receivers[e_real:], rewired.edges[e_real:] = 0, 0, 1.5
    again, _ = predict(batch._replace(graph=rewired))
    np.testing.assert_allclose(np.asarray(again)[0], np.asarray(out)[0], **tol)
  return check
