"""Tests for xtal2dos_jax.models: shapes, masking, causality, invariances, dtypes, factory."""
from __future__ import annotations

import functools

import chex
import flax.linen as nn
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import smoke

from xtal2dos_jax.core.errors import InputError
from xtal2dos_jax.input_pipeline.batching import Budget
from xtal2dos_jax.models import (AtomStates, CausalTransformerDecoder, count_params, create_model,
                                 CrystalContext, DECODERS, ENCODERS, graph_layers,
                                 output_activation_for, SequenceDecoder, UniMPEncoder, UniMPLayer,
                                 Xtal2DoS)
from xtal2dos_jax.models.attention import masked_softmax, MultiHeadAttention, segment_softmax
from xtal2dos_jax.models.precision import bf16_dot_general
from xtal2dos_jax.objectives import losses
from xtal2dos_jax.training.config_check import validate

from test_equations import (REF_TOL, as_numpy, context_reference, encoder_reference, perturb,
                            transformer_decoder_reference, unimp_layer_reference)

TOL = dict(rtol=1e-4, atol=1e-6)   # float32 agreement of the same computation


def _real(batch, out):
  """Rows of `out` for the real crystals of `batch`."""
  return np.asarray(out)[np.asarray(batch.graph_mask)]


def _encoder_from_config(config, **overrides):
  m, d = config.model, config.data
  kwargs = dict(d_model=m.d_model, num_heads=m.num_heads, num_layers=m.encoder_layers,
                dropout=m.encoder_dropout, radius=d.radius, gaussian_step=d.gaussian_step)
  kwargs.update(overrides)
  return UniMPEncoder(**kwargs)


def _decoder(config, causal=True, position_embedding="onehot", dropout=0.0, num_layers=None,
             source_attention=True):
  m = config.model
  return CausalTransformerDecoder(l_y=config.data.l_y, d_model=m.d_model, num_heads=m.num_heads,
                                  num_layers=num_layers or m.decoder_layers, ff_dim=m.ff_dim,
                                  dropout=dropout, causal=causal,
                                  source_attention=source_attention,
                                  position_embedding=position_embedding)


# --------------------------------------------------------------------------------------------
# Attention math


def _dense_segment_softmax(logits, segment_ids, mask, num_segments):
  """float64 reference: plain softmax over each segment's unmasked entries."""
  logits = np.asarray(logits, np.float64)
  out = np.zeros_like(logits)
  for s in range(num_segments):
    idx = np.where((segment_ids == s) & mask)[0]
    if len(idx):
      x = logits[idx] - logits[idx].max(0)
      out[idx] = np.exp(x) / np.exp(x).sum(0)
  return out


def test_segment_softmax_extreme_logits_match_dense_reference():
  rng = np.random.default_rng(1)
  num_edges, num_segments = 40, 7            # segment 6 is empty; segment 5 fully masked
  segment_ids = np.sort(rng.integers(0, 6, num_edges)).astype(np.int32)
  logits = rng.uniform(-1e4, 1e4, (num_edges, 3)).astype(np.float32)
  mask = rng.random(num_edges) > 0.2
  mask[segment_ids == 5] = False
  expected = _dense_segment_softmax(logits, segment_ids, mask, num_segments)

  for sorted_hint in (True, False):
    fn = jax.jit(functools.partial(segment_softmax, num_segments=num_segments,
                                   indices_are_sorted=sorted_hint))
    out = fn(logits, segment_ids, mask=mask)
    chex.assert_shape(out, (num_edges, 3))
    chex.assert_type(out, jnp.float32)
    chex.assert_tree_all_finite(out)
    np.testing.assert_allclose(out, expected, atol=1e-6)
  assert np.all(np.asarray(out)[~mask] == 0.0)

  grad = jax.grad(lambda x: jnp.sum(segment_softmax(x, segment_ids, num_segments, mask)
                                    * jnp.arange(3.0)))(logits)
  chex.assert_tree_all_finite(grad)
  assert np.all(np.asarray(grad)[~mask] == 0.0)


def test_masked_softmax_fully_masked_row_is_zero_with_finite_gradient():
  logits = jnp.array([[1e4, -1e4, 3.0], [1.0, 2.0, 3.0]])
  mask = jnp.array([[True, True, False], [False, False, False]])
  out = masked_softmax(logits, mask)
  np.testing.assert_allclose(out, [[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]], atol=1e-7)
  grad = jax.grad(lambda x: jnp.sum(masked_softmax(x, mask) ** 2))(logits)
  chex.assert_tree_all_finite(grad)


def test_multi_head_attention_ignores_masked_keys():
  rng = np.random.default_rng(2)
  q = jnp.asarray(rng.normal(size=(2, 4, 16)), jnp.float32)
  kv = jnp.asarray(rng.normal(size=(2, 5, 8)), jnp.float32)
  key_mask = jnp.array([[True, True, True, False, False], [False] * 5])
  mask = key_mask[:, None, :]
  mha = MultiHeadAttention(d_model=16, num_heads=2)
  variables = mha.init(jax.random.key(0), q, kv, mask, train=False)
  out = mha.apply(variables, q, kv, mask, train=False)
  chex.assert_shape(out, (2, 4, 16))
  chex.assert_type(out, jnp.float32)
  chex.assert_tree_all_finite(out)
  kv2 = kv.at[:, 3:].set(1e3).at[1].set(-7.0)  # change only masked keys/values
  np.testing.assert_allclose(mha.apply(variables, q, kv2, mask, train=False), out, **TOL)


def test_multi_head_attention_kv_index_equals_gathered_inputs():
  """Projecting the rows first and gathering them (`kv_index`) equals attending to the
  gathered rows, in value and in gradient."""
  rng = np.random.default_rng(3)
  q = jnp.asarray(rng.normal(size=(3, 4, 16)), jnp.float32)
  rows = jnp.asarray(rng.normal(size=(7, 8)), jnp.float32)
  index = jnp.asarray(rng.integers(0, 7, size=(3, 5)), jnp.int32)
  mask = jnp.asarray(rng.random((3, 4, 5)) < 0.7)
  mha = MultiHeadAttention(d_model=16, num_heads=2)
  variables = mha.init(jax.random.key(0), q, rows[index], mask, train=False)

  def outputs(params, rows):
    indexed = mha.apply(params, q, rows, mask, train=False, kv_index=index)
    gathered = mha.apply(params, q, rows[index], mask, train=False)
    return indexed, gathered

  indexed, gathered = outputs(variables, rows)
  chex.assert_trees_all_close(indexed, gathered, **TOL)
  grad = lambda i: jax.grad(lambda p, r: jnp.sum(jnp.sin(outputs(p, r)[i])), argnums=(0, 1))
  chex.assert_trees_all_close(grad(0)(variables, rows), grad(1)(variables, rows), **TOL)


def test_decoder_on_node_states_equals_padded_atoms(tiny_model, tiny_batch, tiny_variables):
  """The transformer decoder projects the source keys/values from the flat node states
  [N, d]; attending to the padded per-crystal atoms [G, A, d] (zeros where masked)
  instead gives the same outputs and gradients on a real batch."""
  params = tiny_variables["params"]
  node_states = tiny_model.encoder.apply({"params": params["encoder"]}, tiny_batch.graph,
                                         train=False)
  context = CrystalContext().apply({"params": params["context"]}, node_states, tiny_batch.graph)
  atoms = AtomStates(node_states, jnp.asarray(tiny_batch.atom_index), jnp.asarray(tiny_batch.atom_mask))
  assert atoms.mask.sum() < atoms.mask.size            # there are padded atom slots

  def raw(decoder_params, node_states, dense):
    flat = atoms._replace(states=node_states)
    atom_states = AtomStates.from_dense(flat.dense(), flat.mask) if dense else flat
    return tiny_model.decoder.apply({"params": decoder_params}, context, atom_states, None,
                                    train=False)

  chex.assert_trees_all_close(raw(params["decoder"], node_states, False),
                              raw(params["decoder"], node_states, True), **TOL)
  grads = [jax.grad(lambda p, h: jnp.sum(jnp.sin(raw(p, h, dense))), argnums=(0, 1))(
      params["decoder"], node_states) for dense in (False, True)]
  chex.assert_trees_all_close(grads[0], grads[1], **TOL)


# --------------------------------------------------------------------------------------------
# Shapes and dtypes of the public modules


def test_graph_masks_and_mean_pool(tiny_batch):
  g = tiny_batch.graph
  nm, em = graph_layers.node_mask(g), graph_layers.edge_mask(g)
  n_real = int(np.asarray(g.n_node)[np.asarray(tiny_batch.graph_mask)].sum())
  e_real = int(np.asarray(g.n_edge)[np.asarray(tiny_batch.graph_mask)].sum())
  assert int(nm.sum()) == n_real and bool(nm[:n_real].all())
  assert int(em.sum()) == e_real and bool(em[:e_real].all())
  states = jnp.where(nm[:, None], 1.0, 1e6) * jnp.ones((g.nodes.shape[0], 3))
  pooled = graph_layers.mean_pool(states, g)
  chex.assert_shape(pooled, (g.n_node.shape[0], 3))
  np.testing.assert_allclose(pooled, np.asarray(tiny_batch.graph_mask)[:, None] * np.ones(3))


@pytest.mark.parametrize("last", [False, True])
def test_unimp_layer_on_the_batch_matches_reference(tiny_config, tiny_batch, last):
  """One `UniMPLayer` on the fixture batch graph (padding nodes and edges included) equals
  the numpy reference of paper Eq. 2, 4-6 on every node."""
  g = tiny_batch.graph
  n, e, d = g.nodes.shape[0], g.edges.shape[0], tiny_config.model.d_model
  num_heads = tiny_config.model.num_heads
  rng = np.random.default_rng(3)
  h = rng.normal(size=(n, 8)).astype(np.float32)
  edge_states = rng.normal(size=(e, d)).astype(np.float32)
  mask = graph_layers.edge_mask(g)
  args = (h, edge_states, g.senders, g.receivers, mask)
  layer = UniMPLayer(d_model=d, num_heads=num_heads, last=last)
  params = perturb(layer.init(jax.random.key(0), *args, train=False)["params"])
  assert ("LayerNorm_0" in params) != last
  out = jax.jit(functools.partial(layer.apply, train=False))({"params": params}, *args)
  chex.assert_shape(out, (n, d))
  chex.assert_type(out, jnp.float32)
  chex.assert_tree_all_finite(out)
  expected = unimp_layer_reference(as_numpy(params), h.astype(np.float64),
                                   edge_states.astype(np.float64), np.asarray(g.senders),
                                   np.asarray(g.receivers), np.asarray(mask), num_heads, last)
  chex.assert_trees_all_close(out, expected, **REF_TOL)


def _pieces(model, params, batch):
  """(node states [N, d], context [G, 2d], raw decoder outputs [G, l_y]) of `model`."""
  node_states = model.encoder.apply({"params": params["encoder"]}, batch.graph, train=False)
  context = CrystalContext().apply({"params": params["context"]}, node_states, batch.graph)
  atoms = AtomStates(node_states, batch.atom_index, batch.atom_mask)
  raw = model.decoder.apply({"params": params["decoder"]}, context, atoms, None, train=False)
  return node_states, context, raw


def _reference_pieces(config, params, batch):
  """numpy reference of `_pieces` (encoder -> context -> decoder)."""
  m, d, g = config.model, config.data, batch.graph
  p = as_numpy(params)
  node_states = encoder_reference(p["encoder"], g, m.num_heads, m.encoder_layers, d.radius,
                                  d.gaussian_step)
  context = context_reference(p["context"], node_states, np.asarray(g.nodes),
                              np.asarray(g.n_node))
  raw = transformer_decoder_reference(p["decoder"], context, node_states,
                                      np.asarray(batch.atom_index), np.asarray(batch.atom_mask),
                                      d.l_y, m.decoder_layers, m.num_heads)
  return node_states, context, raw


def test_encoder_context_decoder_model_match_reference(tiny_config, tiny_batch, tiny_model,
                                                       tiny_variables, tiny_predict):
  """Shapes, dtypes and values of every stage against the numpy references (perturbed
  parameters, real atoms and crystals; padding rows only finite)."""
  g = tiny_batch.graph
  n, num_graphs, d = g.nodes.shape[0], g.n_node.shape[0], tiny_config.model.d_model
  l_y = tiny_config.data.l_y
  variables = {"params": perturb(tiny_variables["params"])}
  params = variables["params"]

  node_states, context, raw = jax.jit(functools.partial(_pieces, tiny_model))(params, tiny_batch)
  chex.assert_shape([node_states, context, raw], [(n, d), (num_graphs, 2 * d), (num_graphs, l_y)])
  chex.assert_trees_all_equal_dtypes(node_states, context, raw, jnp.zeros((), jnp.float32))
  chex.assert_tree_all_finite([node_states, context, raw])

  ref_states, ref_context, ref_raw = _reference_pieces(tiny_config, params, tiny_batch)
  real_nodes = np.asarray(graph_layers.node_mask(g))
  chex.assert_trees_all_close(np.asarray(node_states)[real_nodes], ref_states[real_nodes],
                              **REF_TOL)
  chex.assert_trees_all_close(_real(tiny_batch, context), _real(tiny_batch, ref_context),
                              **REF_TOL)
  chex.assert_trees_all_close(_real(tiny_batch, raw), _real(tiny_batch, ref_raw), **REF_TOL)

  out = tiny_predict(variables, tiny_batch)
  chex.assert_shape(out, (num_graphs, l_y))
  chex.assert_type(out, jnp.float32)
  expected = np.exp(ref_raw) / np.exp(ref_raw).sum(-1, keepdims=True)   # over positions
  chex.assert_trees_all_close(_real(tiny_batch, out), _real(tiny_batch, expected), **REF_TOL)


def test_learned_position_embedding(tiny_config, tiny_batch):
  dec = _decoder(tiny_config, position_embedding="learned")
  num_graphs, max_atoms = tiny_batch.atom_mask.shape
  d = tiny_config.model.d_model
  args = (jnp.ones((num_graphs, 2 * d)),
          AtomStates.from_dense(jnp.ones((num_graphs, max_atoms, d)), tiny_batch.atom_mask), None)
  variables = dec.init(jax.random.key(0), *args, train=False)
  chex.assert_shape(variables["params"]["position_table"]["embedding"],
                    (tiny_config.data.l_y, d))
  out = dec.apply(variables, *args, train=False)
  chex.assert_shape(out, (num_graphs, tiny_config.data.l_y))
  bad = tiny_config.copy_and_resolve_references()
  bad.model.position_embedding = "sinusoid"
  with pytest.raises(InputError, match="config.model.position_embedding"):
    validate(bad)


# --------------------------------------------------------------------------------------------
# Whole-model properties


def test_outputs_finite_softmax_over_positions(tiny_model, tiny_batch, tiny_variables,
                                              tiny_predict):
  """Predictions are softmax(raw) over the l_y positions of each crystal, on their own:
  finite for padding crystals, equal to a per-row numpy softmax of the decoder outputs
  (so a softmax over the crystal axis, which mixes in padding crystals, or over the
  flattened batch fails), and not uniform."""
  out = np.asarray(tiny_predict(tiny_variables, tiny_batch))
  assert not np.asarray(tiny_batch.graph_mask).all()    # the batch has padding crystals
  chex.assert_tree_all_finite(out)                      # padding crystals included
  _, _, raw = jax.jit(functools.partial(_pieces, tiny_model))(tiny_variables["params"],
                                                              tiny_batch)
  raw = _real(tiny_batch, raw).astype(np.float64)
  assert np.ptp(raw, axis=-1).min() > 1e-3              # outputs differ across positions
  expected = np.exp(raw - raw.max(-1, keepdims=True))
  expected /= expected.sum(-1, keepdims=True)
  chex.assert_trees_all_close(_real(tiny_batch, out), expected, **REF_TOL)
  np.testing.assert_allclose(_real(tiny_batch, out).sum(-1), 1.0, rtol=1e-5)
  assert (out >= 0).all()


def test_jit_matches_eager(tiny_model, tiny_batch, tiny_variables, tiny_predict):
  jitted = tiny_predict(tiny_variables, tiny_batch)
  eager = tiny_model.apply(tiny_variables, tiny_batch, train=False)   # op by op
  np.testing.assert_allclose(jitted, eager, rtol=1e-4, atol=1e-6)


def test_gradients_finite_and_reach_every_parameter(tiny_batch, tiny_variables,
                                                    tiny_train_step):
  (loss, _), grads = tiny_train_step(tiny_variables["params"], tiny_batch, jax.random.key(1))
  assert np.isfinite(float(loss)) and float(loss) > 0
  chex.assert_tree_all_finite(grads)
  norms = jax.tree.map(lambda x: float(jnp.abs(x).max()), grads)
  zero = [jax.tree_util.keystr(p) for p, v in jax.tree_util.tree_leaves_with_path(norms)
          if v == 0.0]
  assert not zero, f"parameters without gradient: {zero}"


@pytest.mark.parametrize("causal", [True, False])
def test_decoder_causality(tiny_config, causal):
  """Output t depends on the position states z_s only for s <= t (and on all s if not causal)."""
  d, l_y = tiny_config.model.d_model, tiny_config.data.l_y
  dec = _decoder(tiny_config, causal=causal, num_layers=2)
  rng = np.random.default_rng(4)
  context = jnp.asarray(rng.normal(size=(2, 2 * d)), jnp.float32)
  atom_mask = jnp.array([[True, True, False], [False, False, False]])  # 2nd: padding crystal
  atoms = AtomStates.from_dense(jnp.asarray(rng.normal(size=(2, 3, d)), jnp.float32), atom_mask)
  variables = dec.init(jax.random.key(0), context, atoms, None, train=False)
  z = dec.apply(variables, context, train=False, method="embed_inputs")
  chex.assert_shape(z, (2, l_y, d))

  decode = lambda z: dec.apply(variables, z, atoms, train=False, method="decode_from_embeddings")
  np.testing.assert_allclose(decode(z), dec.apply(variables, context, atoms, None, train=False),
                             **TOL)
  jac = np.asarray(jax.jit(jax.jacobian(decode))(z))        # [G, l_y, G, l_y, d]
  chex.assert_tree_all_finite(jac)
  for g in range(2):
    dependence = np.abs(jac[g, :, g]).max(-1)               # [t, s]
    future = np.triu(np.ones((l_y, l_y), bool), k=1)        # s > t
    assert (np.diag(dependence) > 0).all()
    if causal:
      assert (dependence[future] == 0.0).all()
    else:
      assert (dependence[future] > 1e-7).all()
  assert (np.abs(jac[0, :, 1]).max() == 0.0) and (np.abs(jac[1, :, 0]).max() == 0.0)


@pytest.mark.parametrize("source_attention", [True, False])
def test_decoder_without_source_attention_ignores_the_atoms(tiny_config, source_attention):
  """The ablation `source_attention=False` has no source-attention parameters and its
  outputs do not change when the atom states do; the full decoder's do."""
  d = tiny_config.model.d_model
  dec = _decoder(tiny_config, source_attention=source_attention, num_layers=2)
  rng = np.random.default_rng(5)
  context = jnp.asarray(rng.normal(size=(2, 2 * d)), jnp.float32)
  mask = jnp.array([[True, True, False], [True, False, False]])
  atoms = [AtomStates.from_dense(jnp.asarray(rng.normal(size=(2, 3, d)), jnp.float32), mask)
           for _ in range(2)]
  variables = dec.init(jax.random.key(0), context, atoms[0], None, train=False)
  has_source = ["source_attention" in jax.tree_util.keystr(path)
                for path, _ in jax.tree_util.tree_leaves_with_path(variables)]
  assert any(has_source) == source_attention
  out = [dec.apply(variables, context, a, None, train=False) for a in atoms]
  chex.assert_shape(out[0], (2, tiny_config.data.l_y))
  if source_attention:
    assert float(jnp.abs(out[0] - out[1]).max()) > 1e-6
  else:
    chex.assert_trees_all_equal(out[0], out[1])


def _predict_one(predict, variables, make_batch, names, which, budget=None):
  batch = make_batch(names, budget)
  return np.asarray(predict(variables, batch))[names.index(which)]


def test_atom_permutation_invariance(tiny_predict, tiny_variables, make_tiny_batch):
  a = _predict_one(tiny_predict, tiny_variables, make_tiny_batch, ["tri"], "tri")
  b = _predict_one(tiny_predict, tiny_variables, make_tiny_batch, ["tri_perm"], "tri_perm")
  np.testing.assert_allclose(a, b, **TOL)


def test_extra_padding_invariance(tiny_predict, tiny_variables, make_tiny_batch, tiny_budget):
  names = ["nacl", "si", "tri"]
  bigger = Budget(n_node=tiny_budget.n_node + 13, n_edge=tiny_budget.n_edge + 29,
                  n_graph=tiny_budget.n_graph + 2, max_atoms=tiny_budget.max_atoms + 3)
  small, big = make_tiny_batch(names), make_tiny_batch(names, bigger)
  out_small = _real(small, tiny_predict(tiny_variables, small))
  out_big = _real(big, tiny_predict(tiny_variables, big))
  np.testing.assert_allclose(out_small, out_big, **TOL)


def test_batch_composition_invariance(tiny_predict, tiny_variables, make_tiny_batch):
  alone = _predict_one(tiny_predict, tiny_variables, make_tiny_batch, ["tri"], "tri")
  for names in (["nacl", "si", "tri"], ["tri", "nacl", "si"]):
    together = _predict_one(tiny_predict, tiny_variables, make_tiny_batch, names, "tri")
    np.testing.assert_allclose(alone, together, **TOL)


@pytest.mark.parametrize("name", ["tri", "nacl"])
def test_supercell_invariance(tiny_predict, tiny_variables, make_tiny_batch, name):
  primitive = _predict_one(tiny_predict, tiny_variables, make_tiny_batch, [name], name)
  supercell = _predict_one(tiny_predict, tiny_variables, make_tiny_batch, [f"{name}_super"],
                           f"{name}_super")
  np.testing.assert_allclose(primitive, supercell, rtol=1e-4, atol=1e-5)


def test_padding_edges_are_masked(tiny_config, tiny_batch, tiny_variables):
  """Rewiring the padding edges onto real atoms changes no real node state."""
  encoder = _encoder_from_config(tiny_config, sorted_receivers=False)
  variables = {"params": tiny_variables["params"]["encoder"]}
  g = tiny_batch.graph
  e_real = int(np.asarray(g.n_edge)[np.asarray(tiny_batch.graph_mask)].sum())
  n_real = int(np.asarray(g.n_node)[np.asarray(tiny_batch.graph_mask)].sum())
  assert e_real < g.edges.shape[0]
  rewired = g._replace(senders=g.senders.copy(), receivers=g.receivers.copy(),
                       edges=g.edges.copy())
  rewired.senders[e_real:], rewired.receivers[e_real:], rewired.edges[e_real:] = 0, 1, 1.5
  apply = jax.jit(functools.partial(encoder.apply, train=False))
  np.testing.assert_allclose(apply(variables, rewired)[:n_real], apply(variables, g)[:n_real],
                             **TOL)


def test_dropout_only_in_training(tiny_batch, tiny_variables, tiny_predict, tiny_train_step):
  eval_a = tiny_predict(tiny_variables, tiny_batch)
  eval_b = tiny_predict(tiny_variables, tiny_batch)
  np.testing.assert_array_equal(eval_a, eval_b)
  params = tiny_variables["params"]
  (_, train_a), _ = tiny_train_step(params, tiny_batch, jax.random.key(1))
  (_, train_b), _ = tiny_train_step(params, tiny_batch, jax.random.key(2))
  chex.assert_tree_all_finite((train_a, train_b))
  assert np.abs(_real(tiny_batch, train_a) - _real(tiny_batch, train_b)).max() > 1e-6
  assert np.abs(_real(tiny_batch, train_a) - _real(tiny_batch, eval_a)).max() > 1e-6


@pytest.mark.parametrize("dims", [
    ((2, 3, 5), (5, 7), (((2,), (0,)), ((), ()))),                  # nn.Dense
    ((2, 3, 4, 8), (4, 8, 16), (((2, 3), (0, 1)), ((), ()))),        # DenseGeneral((-2, -1))
    ((2, 5, 4, 8), (2, 6, 4, 8), (((3,), (3,)), ((0, 2), (0, 2)))),  # attention logits
    ((2, 4, 5, 6), (2, 6, 4, 8), (((1, 3), (2, 1)), ((0,), (0,)))),  # permuted axes
])
def test_bf16_dot_general_matches_dot_general_in_value_and_gradient(dims):
  """Exact on bfloat16-representable inputs (small integers; float32 accumulation), so
  any layout mistake in the hand-written backward shows."""
  lhs_shape, rhs_shape, dimension_numbers = dims
  rng = np.random.default_rng(5)
  ints = lambda shape: jnp.asarray(rng.integers(-4, 5, size=shape), jnp.float32)
  lhs, rhs = ints(lhs_shape), ints(rhs_shape)
  weights = ints(jax.eval_shape(functools.partial(jax.lax.dot_general,
                                                  dimension_numbers=dimension_numbers),
                                lhs, rhs).shape)
  outputs = {}
  for name, dot in (("reference", jax.lax.dot_general), ("bf16", bf16_dot_general)):
    loss = lambda a, b, dot=dot: jnp.sum(weights * dot(a, b, dimension_numbers))
    value = jax.jit(lambda a, b, dot=dot: dot(a, b, dimension_numbers))(lhs, rhs)
    outputs[name] = (value, jax.jit(jax.grad(loss, argnums=(0, 1)))(lhs, rhs))
  chex.assert_trees_all_equal(outputs["bf16"], outputs["reference"])
  chex.assert_trees_all_equal_dtypes(outputs["bf16"], outputs["reference"])


# Agreement with float32 at initialisation (relative to the 1 / l_y mean prediction).
LOW_PRECISION_RTOL = {"bfloat16": 0.1, "bf16_matmul": 0.05}


@pytest.mark.parametrize("dtype", sorted(LOW_PRECISION_RTOL))
def test_low_precision_close_to_float32_with_float32_params(tiny_config, tiny_batch,
                                                            tiny_variables, tiny_predict, dtype):
  config = tiny_config.copy_and_resolve_references()
  config.model.dtype = dtype
  model = create_model(config)
  variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                             tiny_batch)
  dtypes = {x.dtype for x in jax.tree.leaves(variables)}
  assert dtypes == {jnp.dtype(jnp.float32)}, dtypes
  chex.assert_trees_all_equal_shapes(variables, tiny_variables)
  out = jax.jit(functools.partial(model.apply, train=False))(tiny_variables, tiny_batch)
  chex.assert_type(out, jnp.float32)
  reference = tiny_predict(tiny_variables, tiny_batch)
  rtol = LOW_PRECISION_RTOL[dtype]
  np.testing.assert_allclose(_real(tiny_batch, out), _real(tiny_batch, reference),
                             rtol=rtol, atol=rtol / config.data.l_y)
  np.testing.assert_allclose(_real(tiny_batch, out).sum(-1), 1.0, rtol=1e-5)


def test_bf16_matmul_trains(tiny_config, tiny_batch, tiny_variables, tiny_train_step):
  """bf16_matmul: finite gradients close to float32's, and Adam steps lower the loss."""
  config = tiny_config.copy_and_resolve_references()
  config.model.dtype = "bf16_matmul"
  model = create_model(config)

  def loss_fn(params, key):
    pred = model.apply({"params": params}, tiny_batch, train=True, rngs={"dropout": key})
    per_crystal = losses.kl_divergence(tiny_batch.y, pred)
    return jnp.sum(jnp.where(tiny_batch.graph_mask, per_crystal, 0.0))

  opt = optax.adam(3e-3)

  @jax.jit
  def step(params, opt_state):
    loss, grads = jax.value_and_grad(loss_fn)(params, jax.random.key(1))
    updates, opt_state = opt.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, grads

  params = tiny_variables["params"]
  opt_state = opt.init(params)
  history = []
  for i in range(10):
    params, opt_state, loss, grads = step(params, opt_state)
    history.append(float(loss))
    if i == 0:
      chex.assert_tree_all_finite(grads)
      (_, _), reference = tiny_train_step(tiny_variables["params"], tiny_batch,
                                          jax.random.key(1))
      flat, flat_ref = (jax.flatten_util.ravel_pytree(g)[0] for g in (grads, reference))
      relative = float(jnp.linalg.norm(flat - flat_ref) / jnp.linalg.norm(flat_ref))
      assert relative < 0.05, relative
  assert np.isfinite(history).all() and history[-1] < 0.8 * history[0], history


# --------------------------------------------------------------------------------------------
# Factory


def test_output_activation_for():
  assert output_activation_for("normalized_sum") == "softmax"
  assert output_activation_for("normalized_max") == "softplus"
  assert output_activation_for("standardized") == "identity"
  bad = smoke.get_config()
  bad.data.scaling = "log"
  with pytest.raises(InputError, match="config.data.scaling: unknown scaling 'log'"):
    validate(bad)


@pytest.mark.parametrize("key,value", [
    ("model.decoder", "lstm"), ("model.encoder", "schnet"), ("data.scaling", "log"),
    ("model.dtype", "float16"), ("model.position_embedding", "sinusoid"), ("model.num_heads", 3),
    ("model.composition_activation", "relu"),
])
def test_config_check_rejects_what_create_model_cannot_build(tiny_config, key, value):
  config = tiny_config.copy_and_resolve_references()
  section, field = key.split(".")
  config[section][field] = value
  with pytest.raises(InputError) as info:
    validate(config)
  assert info.value.name == f"config.{key}"
  assert "expected one of" in str(info.value) or "divide" in str(info.value)


def test_create_model_uses_config_and_registries(tiny_config, monkeypatch):
  model = create_model(tiny_config)
  assert isinstance(model, Xtal2DoS) and model.output_activation == "softmax"
  assert isinstance(model.encoder, UniMPEncoder) and model.encoder.num_layers == 2
  assert isinstance(model.decoder, CausalTransformerDecoder) and model.decoder.causal
  assert model.decoder.l_y == tiny_config.data.l_y
  assert "unimp" in ENCODERS and "transformer" in DECODERS

  class ZeroDecoder(SequenceDecoder):
    l_y: int

    def __call__(self, context, atoms, y_teacher, *, train):
      return jnp.zeros((context.shape[0], self.l_y))

  monkeypatch.setitem(DECODERS, "zero", lambda config: ZeroDecoder(config.data.l_y))
  config = tiny_config.copy_and_resolve_references()
  config.model.decoder = "zero"
  config.data.scaling = "standardized"
  model = create_model(config)
  assert isinstance(model.decoder, ZeroDecoder) and model.output_activation == "identity"


def test_composition_activation_from_config(tiny_config, tiny_batch, tiny_variables):
  """config.model.composition_activation='leaky_relu' reaches the crystal context: the
  context inside the model is [mean; leaky_relu_0.2(Dense(composition))]; the default
  is the identity."""
  assert create_model(tiny_config).composition_activation == "none"
  config = tiny_config.copy_and_resolve_references()
  config.model.composition_activation = "leaky_relu"
  model = create_model(config)
  assert model.composition_activation == "leaky_relu"
  params = perturb(tiny_variables["params"], scale=0.5)
  g = tiny_batch.graph

  def contexts(model):
    _, state = model.apply({"params": params}, tiny_batch, train=False,
                           capture_intermediates=lambda module, _: isinstance(module,
                                                                              CrystalContext))
    return np.asarray(state["intermediates"]["context"]["__call__"][0])

  node_states = model.encoder.apply({"params": params["encoder"]}, g, train=False)
  reference = functools.partial(context_reference, as_numpy(params["context"]),
                                np.asarray(node_states, np.float64), np.asarray(g.nodes),
                                np.asarray(g.n_node))
  leaky, identity = reference("leaky_relu"), reference("none")
  assert np.abs(_real(tiny_batch, leaky) - _real(tiny_batch, identity)).max() > 0.05
  chex.assert_trees_all_close(_real(tiny_batch, contexts(model)), _real(tiny_batch, leaky),
                              **REF_TOL)
  chex.assert_trees_all_close(_real(tiny_batch, contexts(create_model(tiny_config))),
                              _real(tiny_batch, identity), **REF_TOL)


def test_count_params():
  params = {"a": {"kernel": jnp.zeros((3, 4)), "bias": jnp.zeros(4)}, "b": jnp.zeros((2, 2, 2))}
  assert count_params(params) == 24
  variables = nn.Dense(5).init(jax.random.key(0), jnp.ones((1, 7)))
  assert count_params(variables) == 7 * 5 + 5
