"""Tests for the ablation / baseline models, crystal systems and experiments.compare."""
from __future__ import annotations

import functools
import os
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
from xtal2dos_jax.workflows import cli

from test_equations import REF_TOL, as_numpy, dostransformer_reference, mlp_reference, perturb

TOL = dict(rtol=1e-4, atol=1e-6)
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

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
