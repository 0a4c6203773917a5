"""Tests for the DOSTransformer's own encoder (models/dostransformer_encoder.py) and the
decoder's prompt-free output and joint loss (models/dostransformer.py).

The encoder's inputs and the whole encoder against independent float64 numpy versions
on the hand graph of test_equations.py; the model (tiny sizes, one padding budget) for
shapes and invariance to atom order, to padding and to the rest of the batch; the
prompt-free output against a numpy version of its stages and for independence of the
crystal system; the sown joint-loss term against the prompt-free decoder's loss; one
train step of `configs/ablations/dostransformer_own_encoder.py` at smoke size.
"""
from __future__ import annotations

import functools
import math
import os

import ase.data
import chex
import jax
import jax.numpy as jnp
import jraph
import numpy as np
import pytest

from xtal2dos_jax.core.errors import InputError
from xtal2dos_jax.input_pipeline import batching, labels
from xtal2dos_jax.input_pipeline.featurize import featurize_crystal
from xtal2dos_jax.input_pipeline.graph_cache import GraphSet
from xtal2dos_jax.models import create_model, DECODERS
from xtal2dos_jax.models.dostransformer import AUX_TERM, DOSTransformerDecoder
from xtal2dos_jax.models.dostransformer_encoder import (DOSTransformerGNN, edge_features,
                                                        mass_onehot_table, smooth_cutoff)
from xtal2dos_jax.models.transformer_decoder import AtomStates
from xtal2dos_jax.objectives import losses
from xtal2dos_jax.training import model_setup, train
from xtal2dos_jax.workflows import cli
from xtal2dos_jax.training.config_check import validate

from test_equations import (D_MODEL, DISTANCES, N_EDGE, N_NODE, NODES, RECEIVERS, REF_TOL,
                            SENDERS, as_numpy, attention_block_reference, dense, layer_norm,
                            leaky_relu, perturb, real_edges_reference)
from test_graph_network import block_reference, mlp_reference

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOL = dict(rtol=1e-4, atol=1e-5)
CUTOFF = 4.0


# --------------------------------------------------------------------------------------------
# numpy references


def cutoff_reference(x):
  """e3nn's smooth cutoff, element by element."""
  out = []
  for v in np.ravel(x):
    u = 2.0 * (v - 1.0)
    out.append(0.0 if u > 0 else 1.0 if u < -1 else (1.0 - math.cos(math.pi * u)) / 2.0)
  return np.reshape(out, np.shape(x))


def edge_features_reference(vectors, cutoff):
  """[1, sqrt(3) x/r, sqrt(3) y/r, sqrt(3) z/r] x cutoff(r / r_c); [1, 0, 0, 0] at r = 0."""
  out = []
  for v in np.asarray(vectors, np.float64):
    r = np.linalg.norm(v)
    sh = np.concatenate([[1.0], np.sqrt(3.0) * (v / r if r > 0 else np.zeros(3))])
    out.append(cutoff_reference(r / cutoff) * sh)
  return np.array(out)


def gnn_reference(p, nodes, vectors, senders, receivers, n_node, n_edge, num_layers, cutoff):
  """The encoder: flipped vectors, self edges on every node (masked on padding nodes),
  mass one-hots, both encoders, `num_layers` graph-network blocks."""
  num = len(nodes)
  x = np.zeros((num, 118))
  for i, z in enumerate(nodes):
    if z > 0:
      x[i, z - 1] = ase.data.atomic_masses[z]
  mask = real_edges_reference(nodes, senders, receivers, n_node, n_edge)
  senders = np.concatenate([senders, np.arange(num)])
  receivers = np.concatenate([receivers, np.arange(num)])
  mask = np.concatenate([mask, nodes > 0])
  vectors = np.concatenate([-np.asarray(vectors, np.float64), np.zeros((num, 3))])
  h = mlp_reference(p["node_encoder"], x)
  e = mlp_reference(p["edge_encoder"], edge_features_reference(vectors, cutoff))
  for i in range(num_layers):
    h, e = block_reference(p[f"block_{i}"], h, e, senders, receivers, mask)
  return h


def prompt_free_reference(p, context, atom_states, atom_index, atom_mask, num_layers,
                          num_heads):
  """The decoder's stages without a prompt token, crystal by crystal."""
  out = []
  for gi in range(context.shape[0]):
    atoms, mask = atom_states[atom_index[gi]], atom_mask[gi]
    x = p["energy_embedding"]["embedding"]
    for i in range(num_layers):
      x = attention_block_reference(p[f"energy_atom_{i}"], x, atoms, mask, num_heads)
    x = leaky_relu(dense(p["fuse_context"], np.concatenate(
        [x, np.broadcast_to(context[gi], (len(x), len(context[gi])))], axis=-1)))
    for i in range(num_layers):
      x = attention_block_reference(p[f"self_{i}"], x, None, None, num_heads)
    for i in range(num_layers):
      x = attention_block_reference(p[f"source_{i}"], x, atoms, mask, num_heads)
    out.append(dense(p["head"], layer_norm(p["final_norm"], x))[:, 0])
  return np.stack(out)


# --------------------------------------------------------------------------------------------
# Encoder equations


def test_inputs_match_numpy_reference():
  table = mass_onehot_table()
  chex.assert_shape(table, (119, 118))
  assert not table[0].any() and table[26, 25] == pytest.approx(ase.data.atomic_masses[26])
  assert np.count_nonzero(table) == 118
  x = np.linspace(0.0, 1.3, 27)
  np.testing.assert_allclose(smooth_cutoff(jnp.asarray(x)), cutoff_reference(x), atol=1e-6)
  vectors = np.random.default_rng(0).normal(size=(9, 3)) * 2.0
  vectors[0] = 0.0
  vectors[1] = [0.0, 0.0, 4.5]                  # beyond the cutoff: all zero
  got = edge_features(jnp.asarray(vectors, jnp.float32), CUTOFF)
  chex.assert_shape(got, (9, 4))
  np.testing.assert_allclose(got, edge_features_reference(vectors, CUTOFF), atol=1e-6)
  np.testing.assert_array_equal(np.asarray(got)[:2], [[1, 0, 0, 0], [0, 0, 0, 0]])


def _hand_vectors():
  """Edge vectors of the hand graph: its distances along random directions."""
  directions = np.random.default_rng(1).normal(size=(len(SENDERS), 3))
  directions /= np.linalg.norm(directions, axis=1, keepdims=True)
  return (directions * DISTANCES[:, None]).astype(np.float32)


def test_encoder_matches_numpy_reference():
  """Two layers on the hand graph (edges in and beyond the taper, parallel edges, a
  node with one incoming edge, padding) against the float64 reference."""
  vectors = _hand_vectors()
  graph = jraph.GraphsTuple(nodes=NODES, edges=vectors, senders=SENDERS, receivers=RECEIVERS,
                            n_node=N_NODE, n_edge=N_EDGE, globals=None)
  encoder = DOSTransformerGNN(d_model=D_MODEL, num_layers=2, cutoff=CUTOFF)
  params = perturb(encoder.init(jax.random.key(0), graph, train=False)["params"])
  chex.assert_shape(params["node_encoder"]["hidden"]["kernel"], (118, D_MODEL))
  chex.assert_shape(params["edge_encoder"]["hidden"]["kernel"], (4, D_MODEL))
  out = jax.jit(functools.partial(encoder.apply, {"params": params}, train=False))(graph)
  chex.assert_shape(out, (len(NODES), D_MODEL))
  chex.assert_tree_all_finite(out)
  p64 = as_numpy(params)
  args = (NODES, vectors, SENDERS, RECEIVERS, N_NODE, N_EDGE, 2, CUTOFF)
  expected = gnn_reference(p64, *args)
  real = NODES > 0
  chex.assert_trees_all_close(np.asarray(out)[real], expected[real], **REF_TOL)
  # The example tells the vector's sign apart (l = 1 harmonics are odd).
  flipped = gnn_reference(p64, NODES, -vectors, *args[2:])
  assert np.abs(flipped - expected)[real].max() > 1e-2


# --------------------------------------------------------------------------------------------
# The whole model


@pytest.fixture(scope="module")
def own_config(tiny_config):
  config = tiny_config.copy_and_resolve_references()
  config.model.encoder, config.model.decoder = "dostransformer_gnn", "dostransformer"
  config.model.decoder_dropout = 0.0
  return config


@pytest.fixture(scope="module")
def predict(own_config, tiny_batch):
  """(batch) -> (raw outputs float[G, l_y], node states float[N, d]), perturbed params."""
  model = create_model(own_config)
  params = perturb(jax.jit(functools.partial(model.init, train=False))(
      jax.random.key(0), tiny_batch)["params"])

  @jax.jit
  def apply(batch):
    out = model.apply({"params": params}, batch, train=False, raw=True)
    graph = batch.graph._replace(edges=batch.edge_vectors)
    states = model.encoder.apply({"params": params["encoder"]}, graph, train=False)
    return out, states
  return apply


def test_model_shapes(own_config, tiny_batch, predict):
  model = create_model(own_config)
  assert isinstance(model.encoder, DOSTransformerGNN) and model.encoder.uses_edge_vectors
  assert isinstance(model.decoder, DOSTransformerDecoder)
  out, states = predict(tiny_batch)
  chex.assert_shape(out, (tiny_batch.graph_mask.shape[0], own_config.data.l_y))
  chex.assert_shape(states, (tiny_batch.graph.nodes.shape[0], own_config.model.d_model))
  chex.assert_type(out, jnp.float32)
  chex.assert_tree_all_finite((out, states))                  # padding crystals included


def test_output_invariant_to_atom_permutation(make_tiny_batch, predict):
  out, states = predict(make_tiny_batch(["tri"]))
  perm, perm_states = predict(make_tiny_batch(["tri_perm"]))
  np.testing.assert_allclose(np.asarray(perm)[0], np.asarray(out)[0], **TOL)
  # Node states follow their atoms: atom a of tri_perm is atom [2, 0, 1][a] of tri.
  np.testing.assert_allclose(np.asarray(perm_states)[:3], np.asarray(states)[[2, 0, 1]], **TOL)


def test_output_independent_of_padding_and_the_rest_of_the_batch(make_tiny_batch, predict):
  alone, _ = predict(make_tiny_batch(["tri"]))
  crowded, _ = predict(make_tiny_batch(["nacl", "si", "tri"]))
  np.testing.assert_allclose(np.asarray(crowded)[2], np.asarray(alone)[0], **TOL)
  batch = make_tiny_batch(["tri"])
  g, e_real = batch.graph, int(np.asarray(batch.graph.n_edge)[0])
  senders, vectors = np.array(g.senders), np.array(batch.edge_vectors)
  senders[e_real:], vectors[e_real:] = 0, 1.5                 # padding edges onto atom 0
  out, _ = predict(batch._replace(graph=g._replace(senders=senders), edge_vectors=vectors))
  np.testing.assert_allclose(np.asarray(out)[0], np.asarray(alone)[0], **TOL)
  # The real edge vectors do matter.
  vectors = np.array(batch.edge_vectors)
  vectors[:e_real] *= 0.9
  moved, _ = predict(batch._replace(edge_vectors=vectors))
  assert np.abs(np.asarray(moved)[0] - np.asarray(alone)[0]).max() > 1e-5


# --------------------------------------------------------------------------------------------
# The prompt-free output and the joint loss


@pytest.fixture(scope="module")
def prompt_inputs(decoder_inputs):
  """`decoder_inputs` with the atoms as AtomStates: (context, atoms, y)."""
  context, atoms, mask, y = decoder_inputs
  return context, AtomStates.from_dense(atoms, mask), y


def _decoder(tiny_config, **model):
  config = tiny_config.copy_and_resolve_references()
  config.model.decoder_dropout = 0.0
  config.model.decoder_layers = 2
  for key, value in model.items():
    config.model[key] = value
  return DECODERS["dostransformer"](config)


def test_prompt_free_output_ignores_the_crystal_system(tiny_config, prompt_inputs):
  """Prompt "none": no prompt table, the output is the numpy reference of the stages
  without a prompt token, the same for every crystal system."""
  decoder = _decoder(tiny_config, dostransformer_prompt="none")
  context, atoms, _ = prompt_inputs
  systems = jnp.array([6, 4, 0])
  params = perturb(decoder.init(jax.random.key(0), context, atoms, None, train=False,
                                crystal_system=systems)["params"])
  assert "crystal_system_prompt" not in params
  apply = jax.jit(lambda cs: decoder.apply({"params": params}, context, atoms, None,
                                           train=False, crystal_system=cs))
  out = apply(systems)
  chex.assert_shape(out, (3, tiny_config.data.l_y))
  for other in ([0, 0, 0], [1, 2, 3], [5, 6, 6]):
    np.testing.assert_array_equal(apply(jnp.array(other)), out)
  expected = prompt_free_reference(as_numpy(params), np.asarray(context, np.float64),
                                   np.asarray(atoms.states, np.float64),
                                   np.asarray(atoms.index), np.asarray(atoms.mask), 2,
                                   tiny_config.model.num_heads)
  chex.assert_trees_all_close(out, expected, **REF_TOL)
  # The prompted output of the same weights (plus a prompt table) does depend on it.
  prompted = _decoder(tiny_config)
  table = perturb({"embedding": jnp.zeros((7, tiny_config.model.d_model))}, seed=1, scale=1.0)
  both = dict(params, crystal_system_prompt=table)
  a = prompted.apply({"params": both}, context, atoms, None, train=False,
                     crystal_system=jnp.array([6, 4, 0]))
  b = prompted.apply({"params": both}, context, atoms, None, train=False,
                     crystal_system=jnp.array([0, 0, 0]))
  assert np.abs(np.asarray(a - b))[:2].max() > 1e-4


def test_joint_loss_term_is_the_prompt_free_loss(tiny_config, prompt_inputs):
  """With weight w, training sows w * KL(y || softmax(prompt-free raw)) per crystal and
  returns the prompted output unchanged; evaluation sows nothing."""
  weight = 0.7
  decoder = _decoder(tiny_config, dostransformer_prompt_free_weight=weight)
  context, atoms, y = prompt_inputs
  systems = jnp.array([6, 4, 0])
  params = perturb(decoder.init(jax.random.key(0), context, atoms, None, train=False,
                                crystal_system=systems)["params"])
  out, sown = decoder.apply({"params": params}, context, atoms, y, train=True,
                            crystal_system=systems, mutable=["aux_loss"])
  term = sown["aux_loss"][AUX_TERM][0]
  chex.assert_shape(term, (3,))
  free = _decoder(tiny_config, dostransformer_prompt="none").apply(
      {"params": {k: v for k, v in params.items() if k != "crystal_system_prompt"}},
      context, atoms, None, train=False)
  expected = weight * losses.kl_divergence(y, jax.nn.softmax(free, axis=-1))
  chex.assert_trees_all_close(term, expected, **REF_TOL)
  plain = _decoder(tiny_config).apply({"params": params}, context, atoms, None, train=False,
                                      crystal_system=systems)
  chex.assert_trees_all_close(out, plain, **REF_TOL)
  _, none_sown = decoder.apply({"params": params}, context, atoms, None, train=False,
                               crystal_system=systems, mutable=["aux_loss"])
  assert not none_sown


def test_config_check_refuses_bad_prompt_keys(tiny_config):
  def config(**model):
    c = tiny_config.copy_and_resolve_references()
    c.model.update(model)
    return c
  with pytest.raises(InputError, match="dostransformer_prompt: unknown dostransformer "
                     "prompt 'lattice'"):
    validate(config(dostransformer_prompt="lattice"))
  with pytest.raises(InputError, match="needs config.model.dostransformer_prompt='system'"):
    validate(config(dostransformer_prompt="none", dostransformer_prompt_free_weight=1.0))
  with pytest.raises(InputError, match="must be >= 0"):
    validate(config(dostransformer_prompt_free_weight=-1.0))


# --------------------------------------------------------------------------------------------
# The config


def test_own_encoder_config_takes_a_train_step(tiny_crystals):
  """The config's model (the original's layer counts, joint loss) and one train step of it
  at smoke size, through `train.Trainer` (so the sown term joins the loss)."""
  config = cli.load_config_file(os.path.join(REPO, "configs", "ablations",
                                                "dostransformer_own_encoder.py"))
  full = create_model(config)
  assert isinstance(full.encoder, DOSTransformerGNN) and full.encoder.num_layers == 3
  assert full.encoder.cutoff == config.data.radius == 5.0 and config.data.max_num_nbr == 0
  assert (full.decoder.num_layers, full.decoder.num_heads, full.decoder.ff_dim) == (2, 1, 512)
  assert full.decoder.prompt == "system" and full.decoder.prompt_free_weight == 1.0

  m = config.model
  m.d_model, m.encoder_layers, m.decoder_layers, m.ff_dim = 8, 1, 1, 16
  config.data.l_y, config.data.radius = 12, 4.0
  config.train.warmup_epochs = 0   # a non-zero learning rate at step 0
  names = ["tri", "nacl", "si"]
  graphs = GraphSet.from_graphs(names, [featurize_crystal(tiny_crystals[n], config.data.radius,
                                                          config.data.max_num_nbr)
                                        for n in names])
  y = np.random.default_rng(1).random((3, config.data.l_y)).astype(np.float32)
  scaler = labels.LabelScaler.fit(config.data.scaling, y)
  ys, scale = scaler.transform(y)
  data = batching.LabelledGraphs(graphs, np.asarray(ys, np.float32),
                                 np.asarray(scale, np.float32),
                                 np.array([0, 6, 6], np.int32))
  budget = batching.make_budget(graphs.n_node, graphs.n_edge, 3)
  trainer = train.Trainer(config, scaler, devices=jax.local_devices()[:1])
  state = trainer.replicate(model_setup.create_train_state(config, budget, steps_per_epoch=1))
  batch = batching.stack([batching.assemble(data, np.arange(3), budget)])
  before = jax.tree.map(np.asarray, state.params)
  state, out = trainer.p_train_step(state, batch)
  assert bool(out["finite"][0]) and np.isfinite(float(out["loss_sum"][0]))
  moved = jax.tree.map(lambda a, b: np.abs(np.asarray(b) - a).max(), before, state.params)
  assert min(jax.tree.leaves(moved["encoder"])) > 0        # every encoder weight trained
  assert max(jax.tree.leaves(moved["decoder"]["crystal_system_prompt"])) > 0
