"""Tests for the ablation / baseline models, crystal systems and experiments.compare."""
from __future__ import annotations

import functools
import json
import math
import os
import re
import subprocess
import sys
from typing import ClassVar

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from xtal2dos_jax.core.errors import InputError
from xtal2dos_jax.input_pipeline.labels import apply_output_activation
from xtal2dos_jax.models import AtomStates, create_model, DECODERS, ENCODERS, SequenceDecoder
from xtal2dos_jax.models.dostransformer import DOSTransformerDecoder
from xtal2dos_jax.models.gat import GATEncoder
from xtal2dos_jax.models.gatgnn import GATGNNHead
from xtal2dos_jax.models.mlp_decoder import MLPDecoder
from xtal2dos_jax.models.rnn_decoders import (ChunkRNNAttentionDecoder, ChunkRNNDecoder,
                                              RNNAttentionDecoder, RNNDecoder)
from xtal2dos_jax.models.xtal2dos import Xtal2DoS
from xtal2dos_jax.objectives import losses

from xtal2dos_jax.training.config_check import validate
from xtal2dos_jax.workflows import cli, compare_tables, comparison

from test_equations import REF_TOL, as_numpy, dostransformer_reference, mlp_reference, perturb

TOL = dict(rtol=1e-4, atol=1e-6)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

NEW_DECODERS = ("rnn", "rnn_attn", "chunk_rnn", "chunk_rnn_attn", "mlp", "dostransformer",
                "gatgnn_head", "mat2spec")
AUTOREGRESSIVE = ("rnn", "rnn_attn", "chunk_rnn", "chunk_rnn_attn")
CHUNK = 5   # does not divide the tiny l_y = 12: 3 chunks, the last padded by 3



def _config(tiny_config, **model):
  config = tiny_config.copy_and_resolve_references()
  config.model.chunk_size = CHUNK
  for key, value in model.items():
    config.model[key] = value
  return config


def _real(batch, out):
  return np.asarray(out)[np.asarray(batch.graph_mask)]


@pytest.fixture(scope="module")
def decoder_inputs(tiny_config):
  """(context [3, 2d], atoms [3, 4, d], atom_mask [3, 4], y [3, l_y]); crystal 2 is padding."""
  d, l_y = tiny_config.model.d_model, tiny_config.data.l_y
  rng = np.random.default_rng(0)
  context = jnp.asarray(rng.normal(size=(3, 2 * d)), jnp.float32)
  atom_mask = jnp.array([[True, True, True, False], [True, False, False, False], [False] * 4])
  atoms = jnp.asarray(rng.normal(size=(3, 4, d)), jnp.float32) * atom_mask[..., None]
  y = jnp.asarray(rng.dirichlet(np.ones(l_y), 3), jnp.float32)
  return context, atoms, atom_mask, y


def _init_apply(decoder, context, atoms, atom_mask):
  variables = jax.jit(functools.partial(decoder.init, train=False))(
      jax.random.key(0), context, AtomStates.from_dense(atoms, atom_mask), None)
  apply = jax.jit(lambda c, a, m, y: decoder.apply(variables, c, AtomStates.from_dense(a, m), y,
                                                   train=False))
  return variables, apply


# --------------------------------------------------------------------------------------------
# Decoders on their own


def _decoder_loss(decoder, context, atoms, atom_mask, y, params, key):
  """KL(y || softmax(raw)) summed over the real crystals (0 and 1), training mode."""
  raw = decoder.apply({"params": params}, context, AtomStates.from_dense(atoms, atom_mask), y,
                      train=True, rngs={"dropout": key})
  return jnp.sum(losses.kl_divergence(y, jax.nn.softmax(raw, axis=-1))[:2])


@pytest.mark.parametrize("name", NEW_DECODERS)
def test_decoder_contract_and_training(tiny_config, decoder_inputs, name):
  """Shapes, finite outputs (padding crystal too), padding atoms without influence (other
  values, a wider atom budget), and 20 Adam steps lower the loss. (No dropout: it triples
  the compile time; see `test_rnn_dropout_only_in_training`.)"""
  config = _config(tiny_config, decoder_dropout=0.0)
  decoder = DECODERS[name](config)
  context, atoms, atom_mask, y = decoder_inputs
  variables, apply = _init_apply(decoder, context, atoms, atom_mask)
  l_y = config.data.l_y
  for teacher in ((None, y) if name in AUTOREGRESSIVE else (None,)):
    out = apply(context, atoms, atom_mask, teacher)
    chex.assert_shape(out, (3, l_y))
    chex.assert_type(out, jnp.float32)
    chex.assert_tree_all_finite(out)
    junk = jnp.where(atom_mask[..., None], atoms, 1e3)
    np.testing.assert_allclose(apply(context, junk, atom_mask, teacher), out, **TOL)
    np.testing.assert_array_equal(apply(context, atoms, atom_mask, teacher), out)
  wider = jnp.concatenate([atoms, jnp.full((3, 3, atoms.shape[-1]), -5.0)], axis=1)
  wider_mask = jnp.concatenate([atom_mask, jnp.zeros((3, 3), bool)], axis=1)
  np.testing.assert_allclose(apply(context, wider, wider_mask, None),
                             apply(context, atoms, atom_mask, None), **TOL)

  opt = optax.adam(1e-2)
  loss_fn = functools.partial(_decoder_loss, decoder, context, atoms, atom_mask, y)

  @jax.jit
  def step(params, opt_state, key):
    loss, grads = jax.value_and_grad(loss_fn)(params, key)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, grads

  params = variables["params"]
  opt_state = opt.init(params)
  history = []
  for i in range(20):
    params, opt_state, loss, grads = step(params, opt_state, jax.random.key(0))
    history.append(float(loss))
    if i == 0:
      chex.assert_tree_all_finite(grads)
  assert np.isfinite(history).all() and history[-1] < 0.7 * history[0], history


def test_rnn_dropout_only_in_training(tiny_config, decoder_inputs):
  """Dropout inside the scanned step: active in training (fresh masks per key), off at
  inference."""
  decoder = DECODERS["chunk_rnn_attn"](_config(tiny_config, decoder_dropout=0.3))
  context, atoms, atom_mask, y = decoder_inputs
  variables, apply = _init_apply(decoder, context, atoms, atom_mask)
  atom_states = AtomStates.from_dense(atoms, atom_mask)
  train = jax.jit(lambda key: decoder.apply(variables, context, atom_states, y, train=True,
                                            rngs={"dropout": key}))
  a, b = np.asarray(train(jax.random.key(1))), np.asarray(train(jax.random.key(2)))
  chex.assert_tree_all_finite((a, b))
  assert np.abs(a - b)[:2].max() > 1e-6
  np.testing.assert_array_equal(apply(context, atoms, atom_mask, y),
                                apply(context, atoms, atom_mask, y))


def _teacher_jacobian(decoder, decoder_inputs):
  context, atoms, atom_mask, y = decoder_inputs
  variables, _ = _init_apply(decoder, context, atoms, atom_mask)
  f = lambda teacher: decoder.apply(variables, context, AtomStates.from_dense(atoms, atom_mask),
                                    teacher, train=False)
  return np.asarray(jax.jit(jax.jacfwd(f))(y))            # [G, l_y, G, l_y]


@pytest.mark.parametrize("name", ["rnn", "rnn_attn"])
def test_rnn_teacher_forcing_is_strictly_causal(tiny_config, decoder_inputs, name):
  """Output t depends on y_teacher[s] only for s < t (and on y_teacher[t - 1])."""
  decoder = DECODERS[name](_config(tiny_config))
  jac = _teacher_jacobian(decoder, decoder_inputs)
  l_y = jac.shape[1]
  chex.assert_tree_all_finite(jac)
  for g in range(3):
    dependence = np.abs(jac[g, :, g])                       # [t, s]
    assert (np.triu(dependence) == 0.0).all()              # s >= t: none
    # y_{t-1} is the input of step t. (Under stick breaking the last position is the
    # remaining mass, fixed by the hazards up to l_y - 2, so it skips y_{l_y - 2}.)
    assert (np.diagonal(dependence, -1)[:l_y - 2] > 0).all()
    assert dependence[l_y - 1, :l_y - 2].min() > 0
  assert np.abs(jac[0, :, 1]).max() == 0.0 and np.abs(jac[1, :, 0]).max() == 0.0


@pytest.mark.parametrize("cls", [ChunkRNNAttentionDecoder, ChunkRNNDecoder])
@pytest.mark.parametrize("activation", ["softmax", "identity"])
def test_chunk_rnn_teacher_forcing_is_block_causal(tiny_config, decoder_inputs, cls, activation):
  """Output t depends on y_teacher[s] only when chunk(s) < chunk(t): the teacher values
  at or after chunk t's own positions never reach it."""
  l_y = tiny_config.data.l_y
  decoder = cls(l_y=l_y, d_model=tiny_config.model.d_model, chunk_size=CHUNK,
                output_activation=activation)
  jac = _teacher_jacobian(decoder, decoder_inputs)
  chunk = np.arange(l_y) // CHUNK
  earlier = chunk[None, :] < chunk[:, None]                 # [t, s]: chunk(s) < chunk(t)
  for g in range(2):
    dependence = np.abs(jac[g, :, g])
    assert (dependence[~earlier] == 0.0).all()
    assert (dependence[chunk >= 1].max(axis=1) > 0).all()   # later chunks do use the teacher


def test_chunk_rnn_without_attention(tiny_config, decoder_inputs):
  """'chunk_rnn' (paper Fig. 2b) is the chunk GRU without the attention: no attention
  parameters, outputs independent of the atom states (the context is their only way
  in), and different outputs from 'chunk_rnn_attn' given the same GRU, initial state
  and head parameters plus the attention's."""
  config = _config(tiny_config)
  plain, attn = DECODERS["chunk_rnn"](config), DECODERS["chunk_rnn_attn"](config)
  assert type(plain) is ChunkRNNDecoder and not plain.attention and attn.attention
  assert plain.chunk_size == attn.chunk_size == CHUNK
  context, atoms, atom_mask, y = decoder_inputs
  variables, apply = _init_apply(plain, context, atoms, atom_mask)
  attn_variables, _ = _init_apply(attn, context, atoms, atom_mask)
  assert set(variables["params"]["step"]) == {"gru", "head"}
  assert set(attn_variables["params"]["step"]) == {"gru", "attention", "head"}
  params = variables["params"]
  shared = {**params, "step": {**params["step"],
                               "attention": attn_variables["params"]["step"]["attention"]}}
  attn_apply = jax.jit(lambda a, teacher: attn.apply({"params": shared}, context,
                                                     AtomStates.from_dense(a, atom_mask), teacher,
                                                     train=False))
  other_atoms = jnp.asarray(np.random.default_rng(7).normal(size=atoms.shape), jnp.float32)
  for teacher in (None, y):
    out = apply(context, atoms, atom_mask, teacher)
    chex.assert_shape(out, (3, tiny_config.data.l_y))
    np.testing.assert_array_equal(apply(context, other_atoms, atom_mask, teacher), out)
    with_attention = np.asarray(attn_apply(atoms, teacher))
    assert np.abs(with_attention - np.asarray(out))[:2].max() > 1e-4
    assert np.abs(np.asarray(attn_apply(other_atoms, teacher)) - with_attention)[:2].max() > 1e-6


@pytest.mark.parametrize("cls,activation", [
    (RNNDecoder, "softmax"), (RNNDecoder, "softplus"), (RNNDecoder, "identity"),
    (ChunkRNNAttentionDecoder, "softmax")])
def test_free_running_feeds_back_what_teacher_forcing_feeds(tiny_config, decoder_inputs, cls,
                                                            activation):
  """Running free equals teacher forcing with the decoder's own activated predictions, so
  training and inference feed the GRU the same quantity."""
  l_y = tiny_config.data.l_y
  kwargs = dict(chunk_size=CHUNK) if cls is ChunkRNNAttentionDecoder else {}
  decoder = cls(l_y=l_y, d_model=tiny_config.model.d_model, output_activation=activation,
                **kwargs)
  context, atoms, atom_mask, _ = decoder_inputs
  _, apply = _init_apply(decoder, context, atoms, atom_mask)
  free = apply(context, atoms, atom_mask, None)
  prediction = apply_output_activation(free, activation)
  if activation == "softmax":   # stick breaking: raw outputs are log-probabilities
    np.testing.assert_allclose(np.exp(free), prediction, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(prediction.sum(-1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(apply(context, atoms, atom_mask, prediction), free,
                             rtol=1e-4, atol=1e-5)


def test_softmax_rnn_starts_near_uniform(tiny_config, decoder_inputs):
  """The hazard offsets make an untrained stick-breaking decoder close to uniform."""
  l_y = tiny_config.data.l_y
  decoder = RNNDecoder(l_y=l_y, d_model=tiny_config.model.d_model)
  context, atoms, atom_mask, _ = decoder_inputs
  variables, apply = _init_apply(decoder, context, atoms, atom_mask)
  zero_head = jax.tree_util.tree_map_with_path(
      lambda p, x: jnp.zeros_like(x) if "head" in jax.tree_util.keystr(p) else x, variables)
  raw = decoder.apply(zero_head, context, AtomStates.from_dense(atoms, atom_mask), None, train=False)
  np.testing.assert_allclose(np.exp(raw), 1.0 / l_y, rtol=1e-5)


def test_chunk_size_validation(tiny_config):
  config = _config(tiny_config, decoder="chunk_rnn_attn", chunk_size=0)
  with pytest.raises(InputError, match="chunk_size"):
    validate(config)
  for size in (1, 12, 13):      # one value per step, one chunk, one padded chunk
    config.model.chunk_size = size
    decoder = create_model(config).decoder
    args = (jnp.ones((2, 32)), AtomStates.from_dense(jnp.ones((2, 3, 16)), jnp.ones((2, 3), bool)))
    for teacher in (None, jnp.ones((2, 12))):
      out, _ = jax.eval_shape(functools.partial(decoder.init_with_output, train=False),
                              jax.random.key(0), *args, teacher)
      chex.assert_shape(out, (2, 12))


@pytest.mark.parametrize("energy_embedding", [False, True])
def test_mlp_decoder_matches_reference(tiny_config, decoder_inputs, energy_embedding):
  """Without energy embeddings: out[g] = MLP(context_g) (the last layer has l_y outputs).
  With them: one MLP shared over positions, out[g, t] = MLP([e_t; context_g])[0], e_t the
  learned embedding of position t. AtomStates and teacher values are ignored."""
  context, atoms, atom_mask, y = decoder_inputs
  l_y, hidden, num_layers = tiny_config.data.l_y, 8, 2
  decoder = MLPDecoder(l_y=l_y, hidden=hidden, num_layers=num_layers,
                       energy_embedding=energy_embedding)
  variables, _ = _init_apply(decoder, context, atoms, atom_mask)
  params = perturb(variables["params"])
  apply = jax.jit(lambda a, teacher: decoder.apply({"params": params}, context,
                                                   AtomStates.from_dense(a, atom_mask), teacher,
                                                   train=False))
  out = apply(atoms, None)
  chex.assert_shape(out, (3, l_y))
  p, c = as_numpy(params), np.asarray(context, np.float64)
  if energy_embedding:
    assert set(p) == {"energy_embedding", "mlp"}
    embeddings = p["energy_embedding"]["embedding"]
    chex.assert_shape(embeddings, (l_y, hidden))
    expected = np.array([[mlp_reference(p["mlp"], np.concatenate([embeddings[t], c[gi]]),
                                        num_layers)[0] for t in range(l_y)]
                         for gi in range(len(c))])
  else:
    assert set(p) == {"mlp"}
    expected = mlp_reference(p["mlp"], c, num_layers)
  chex.assert_trees_all_close(out, expected, **REF_TOL)
  np.testing.assert_array_equal(apply(atoms * 2, y), out)        # ignores atoms and teacher


def test_dostransformer_uses_crystal_system_prompt(tiny_config, decoder_inputs):
  decoder = DECODERS["dostransformer"](_config(tiny_config))
  assert isinstance(decoder, DOSTransformerDecoder) and decoder.uses_crystal_system
  context, atoms, atom_mask, _ = decoder_inputs
  variables, apply_without = _init_apply(decoder, context, atoms, atom_mask)
  assert variables["params"]["crystal_system_prompt"]["embedding"].shape == (7, 16)
  apply = jax.jit(lambda cs: decoder.apply(variables, context, AtomStates.from_dense(atoms, atom_mask),
                                           None, train=False, crystal_system=cs))
  base = apply(jnp.array([0, 0, 0]))
  np.testing.assert_allclose(apply_without(context, atoms, atom_mask, None), base,
                             **TOL)                         # crystal_system=None: triclinic
  changed = np.asarray(apply(jnp.array([6, 4, 0])))
  assert np.abs(changed[0] - base[0]).max() > 1e-5 and np.abs(changed[1] - base[1]).max() > 1e-5
  np.testing.assert_allclose(changed[2], base[2], **TOL)   # per-crystal prompt


@pytest.mark.parametrize("num_layers,memory_norm", [(1, True), (2, True), (2, False)])
def test_dostransformer_stage_order_matches_reference(tiny_config, decoder_inputs, num_layers,
                                                      memory_norm):
  """The decoder equals the numpy reference of its documented stages, in order: energy x
  atoms cross-attention, context fusion, self-attention with the prompt token prepended
  (then dropped), a second cross-attention, LayerNorm, Dense(1); the atom states go
  through each cross-attention's layer norm first when memory_norm (then an affine
  change of every atom's state, a (h - shift) with a > 0, leaves the output as it was)."""
  config = _config(tiny_config, decoder_layers=num_layers,
                   dostransformer_memory_norm=memory_norm)
  decoder = DECODERS["dostransformer"](config)
  context, atoms, atom_mask, _ = decoder_inputs
  atom_states = AtomStates.from_dense(atoms, atom_mask)
  systems = jnp.array([6, 2, 0])
  variables = decoder.init(jax.random.key(0), context, atom_states, None, train=False,
                           crystal_system=systems)
  params = perturb(variables["params"])
  apply = jax.jit(lambda p, a: decoder.apply({"params": p}, context, a, None, train=False,
                                             crystal_system=systems))
  out = apply(params, atom_states)
  expected = dostransformer_reference(as_numpy(params), np.asarray(context, np.float64),
                                      np.asarray(atom_states.states, np.float64),
                                      np.asarray(atom_states.index),
                                      np.asarray(atom_states.mask), np.asarray(systems),
                                      num_layers, config.model.num_heads,
                                      norm_memory=memory_norm)
  chex.assert_trees_all_close(out, expected, **REF_TOL)
  rescaled = apply(params, atom_states._replace(states=8.0 * (atom_states.states - 0.5)))
  if memory_norm:
    chex.assert_trees_all_close(rescaled, out, atol=1e-4, rtol=1e-4)
  else:
    assert np.abs(np.asarray(rescaled - out))[:2].max() > 1e-2
  # The two cross-attention stages are not interchangeable in this example.
  p = as_numpy(params)
  swapped = dict(p, **{f"energy_atom_{i}": p[f"source_{i}"] for i in range(num_layers)},
                 **{f"source_{i}": p[f"energy_atom_{i}"] for i in range(num_layers)})
  other = dostransformer_reference(swapped, np.asarray(context, np.float64),
                                   np.asarray(atom_states.states, np.float64),
                                   np.asarray(atom_states.index), np.asarray(atom_states.mask),
                                   np.asarray(systems), num_layers, config.model.num_heads)
  assert np.abs(other - expected)[:2].max() > 1e-2


# --------------------------------------------------------------------------------------------
# Whole models


def _train(model, batch, steps=20, learning_rate=1e-2):
  """Losses of `steps` Adam steps (KL summed over real crystals, train mode) and the
  final parameters."""
  variables = jax.jit(functools.partial(model.init, train=False))(jax.random.key(0), batch)
  params = variables["params"]
  opt = optax.adam(learning_rate)
  opt_state = opt.init(params)

  @jax.jit
  def step(params, opt_state):
    def loss_fn(p):
      pred = model.apply({"params": p}, batch, train=True, rngs={"dropout": jax.random.key(0)})
      return jnp.sum(jnp.where(batch.graph_mask, losses.kl_divergence(batch.y, pred), 0.0))
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  history = []
  for _ in range(steps):
    params, opt_state, loss = step(params, opt_state)
    history.append(float(loss))
  return history, params


def test_gat_encoder_with_chunk_rnn_model(tiny_config, tiny_batch):
  """The GAT encoder end to end (with the chunk RNN, so the whole autoregressive path runs
  through `Xtal2DoS`): shapes, training, padding edges, labels unseen at inference."""
  config = _config(tiny_config, encoder="gat", decoder="chunk_rnn_attn", encoder_dropout=0.0,
                   decoder_dropout=0.0)
  assert "gat" in ENCODERS
  model = create_model(config)
  assert isinstance(model.encoder, GATEncoder)
  g = tiny_batch.graph
  states, variables = jax.eval_shape(functools.partial(model.encoder.init_with_output,
                                                       train=False), jax.random.key(0), g)
  chex.assert_shape(states, (g.nodes.shape[0], config.model.d_model))
  chex.assert_type(states, jnp.float32)
  assert {"attention_centre", "attention_neighbour", "edge", "node",
          "skip"} <= set(variables["params"]["layer_0"])

  history, params = _train(model, tiny_batch)
  assert np.isfinite(history).all() and history[-1] < 0.7 * history[0], history

  predict = jax.jit(lambda batch: model.apply({"params": params}, batch, train=False))
  out = np.asarray(predict(tiny_batch))
  chex.assert_shape(out, (tiny_batch.graph_mask.shape[0], config.data.l_y))
  chex.assert_tree_all_finite(out)                          # padding crystals included
  np.testing.assert_allclose(_real(tiny_batch, out).sum(-1), 1.0, rtol=1e-5)
  # Inference never sees the labels (the decoder runs free).
  other_y = np.random.default_rng(5).dirichlet(np.ones(config.data.l_y),
                                               len(tiny_batch.y)).astype(np.float32)
  np.testing.assert_array_equal(predict(tiny_batch._replace(y=other_y)), out)
  # Padding edges rewired onto a real atom change nothing; real edge features matter.
  e_real = int(np.asarray(g.n_edge)[np.asarray(tiny_batch.graph_mask)].sum())
  rewired = g._replace(senders=g.senders.copy(), edges=g.edges.copy())
  rewired.senders[e_real:], rewired.edges[e_real:] = 0, 1.5
  np.testing.assert_allclose(_real(tiny_batch, predict(tiny_batch._replace(graph=rewired))),
                             _real(tiny_batch, out), **TOL)
  stretched = g._replace(edges=g.edges.copy())
  stretched.edges[:e_real] *= 1.1
  assert np.abs(_real(tiny_batch, predict(tiny_batch._replace(graph=stretched)))
                - _real(tiny_batch, out)).max() > 1e-6


class _ZeroEncoder(nn.Module):
  d_model: int = 4

  def __call__(self, graph, *, train):
    return jnp.zeros((graph.nodes.shape[0], self.d_model))


class _CrystalSystemProbe(SequenceDecoder):
  """A decoder that outputs the crystal system it was given (-1 if none)."""
  l_y: int = 3
  uses_crystal_system: ClassVar[bool] = True

  def __call__(self, context, atoms, y_teacher, *, train, crystal_system=None):
    if crystal_system is None:
      return jnp.full((context.shape[0], self.l_y), -1.0)
    return jnp.broadcast_to(jnp.asarray(crystal_system, jnp.float32)[:, None],
                            (context.shape[0], self.l_y))


def test_every_decoder_is_a_sequence_decoder(tiny_config):
  """All registered decoders share the base class; only the DOSTransformer takes the
  crystal systems."""
  for name, factory in DECODERS.items():
    decoder = factory(_config(tiny_config))
    assert isinstance(decoder, SequenceDecoder), name
    assert decoder.uses_crystal_system == (name == "dostransformer"), name


def test_xtal2dos_passes_crystal_system_to_decoders_that_use_it(tiny_batch):
  model = Xtal2DoS(_ZeroEncoder(), _CrystalSystemProbe(), output_activation="identity")
  systems = np.arange(len(tiny_batch.crystal_system), dtype=np.int32) % 7
  batch = tiny_batch._replace(crystal_system=systems)
  variables = model.init(jax.random.key(0), batch, train=False)
  out = np.asarray(model.apply(variables, batch, train=False))
  np.testing.assert_array_equal(out[:, 0], systems)


@pytest.mark.parametrize("path", ["rnn", "rnn_attn", "chunk_rnn", "chunk_rnn_attn", "mlp",
                                  "gat_transformer", "dostransformer", "unmasked",
                                  "no_source_attention", "gatgnn", "graph_network",
                                  "graph_network_energy", "dostransformer_own_encoder",
                                  "dostransformer_no_prompt"])
def test_ablation_configs_build(path):
  config = cli.load_config_file(os.path.join(REPO, "configs", "ablations", f"{path}.py"))
  model = create_model(config)
  assert model.decoder.l_y == config.data.l_y == 51
  expected = {"rnn": RNNDecoder, "rnn_attn": RNNAttentionDecoder, "chunk_rnn": ChunkRNNDecoder,
              "chunk_rnn_attn": ChunkRNNAttentionDecoder, "mlp": MLPDecoder,
              "dostransformer": DOSTransformerDecoder, "gatgnn": GATGNNHead,
              "graph_network": MLPDecoder, "graph_network_energy": MLPDecoder,
              "dostransformer_own_encoder": DOSTransformerDecoder,
              "dostransformer_no_prompt": DOSTransformerDecoder}
  if path in expected:
    assert type(model.decoder) is expected[path]
  assert (config.model.encoder == "gat") == (path == "gat_transformer")
  assert config.model.causal == (path != "unmasked")
  if path.startswith("dostransformer"):
    assert model.decoder.prompt == ("none" if path == "dostransformer_no_prompt" else "system")
    assert model.decoder.prompt_free_weight == (1.0 if path == "dostransformer_own_encoder"
                                                else 0.0)
  if path in ("unmasked", "no_source_attention"):
    assert model.decoder.source_attention == (path != "no_source_attention")


# --------------------------------------------------------------------------------------------
# experiments.compare


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
