"""Tests for the E3NN encoder (xtal2dos_jax/models/e3nn.py) and the geometry it reads.

The model is tiny (irreps 4x0e+4x0o+4x1e+4x1o, l <= 2 harmonics, 2 layers, d_model 16)
on 4 Å radius graphs of 2-3 atom cells, and every batch shares one padding budget, so
the jitted model compiles once per variant ("chen2021", "gate_points": the symmetry,
padding and permutation tests run for both). Symmetry checks featurise the transformed
crystal itself (cell and positions), so they cover the featuriser's vectors as well.
"""
from __future__ import annotations

import functools
import math
import os
import re

import ase
import chex
import e3nn_jax as e3nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xtal2dos_jax.core.errors import InputError
from xtal2dos_jax.input_pipeline import batching
from xtal2dos_jax.input_pipeline.featurize import featurize_crystal
from xtal2dos_jax.input_pipeline.graph_cache import GraphSet
from xtal2dos_jax.models import create_model
from xtal2dos_jax.models.e3nn import (E3NNEncoder, GatePointsConvolution, gaussian_radial_basis,
                                      self_connection_mask)
from xtal2dos_jax.models.mlp_decoder import MLPDecoder
from xtal2dos_jax.models.transformer_decoder import CausalTransformerDecoder
from xtal2dos_jax.workflows import cli
from xtal2dos_jax.training.config_check import validate

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RADIUS = 4.0
IRREPS = "4x0e+4x0o+4x1e+4x1o"
TOL = dict(rtol=1e-4, atol=1e-5)


def _shrink(config):
  """The smoke model sizes with a tiny E3NN encoder on the 4 Å radius graph."""
  config.data.l_y = 12
  config.data.radius = RADIUS
  config.data.max_num_nbr = 0
  m = config.model
  m.encoder = "e3nn"
  m.d_model, m.num_heads, m.ff_dim = 16, 2, 32
  m.encoder_layers, m.decoder_layers = 2, min(m.decoder_layers, 1)
  m.e3nn_irreps, m.e3nn_lmax, m.e3nn_num_basis, m.e3nn_radial_hidden = IRREPS, 2, 6, 16
  m.e3nn_num_neighbors = 10.0
  return config


def _rotation(seed: int) -> np.ndarray:
  """A random proper rotation, float64[3, 3]."""
  q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
  q = q * np.sign(np.diag(r))
  return q if np.linalg.det(q) > 0 else -q


R = _rotation(0)
SHIFT = np.array([0.7, -1.3, 2.1])


def _moved(atoms: ase.Atoms, rotate_cell: bool = True) -> ase.Atoms:
  """`atoms` rotated by R and translated by SHIFT; with `rotate_cell=False` only the
  positions move (a different crystal: the lattice keeps its orientation)."""
  out = atoms.copy()
  out.positions = atoms.positions @ R.T + SHIFT
  if rotate_cell:
    out.set_cell(atoms.cell.array @ R.T, scale_atoms=False)
  return out


@pytest.fixture(scope="module")
def crystals(tiny_crystals) -> dict[str, ase.Atoms]:
  """conftest's triclinic cell, NaCl and Si; each also rotated and translated, the
  triclinic one also with only its positions moved, and with permuted atoms."""
  tri, nacl, si = (tiny_crystals[n] for n in ("tri", "nacl", "si"))
  return {"tri": tri, "nacl": nacl, "si": si,
          "tri_moved": _moved(tri), "nacl_moved": _moved(nacl), "si_moved": _moved(si),
          "tri_positions_only": _moved(tri, rotate_cell=False),
          "tri_perm": tri[[2, 0, 1]]}


@pytest.fixture(scope="module", params=["chen2021", "gate_points"])
def config(request):
  """The tiny model of each E3NN variant."""
  from configs import smoke
  config = _shrink(smoke.get_config())
  config.model.e3nn_variant = request.param
  return config


@pytest.fixture(scope="module")
def data(config, crystals) -> batching.LabelledGraphs:
  names = list(crystals)
  graphs = GraphSet.from_graphs(names, [featurize_crystal(a, RADIUS, 0, name=n)
                                        for n, a in crystals.items()])
  y = np.random.default_rng(0).dirichlet(np.ones(config.data.l_y), len(names))
  return batching.LabelledGraphs(graphs, y.astype(np.float32), np.ones(len(names), np.float32))


@pytest.fixture(scope="module")
def budget(data) -> batching.Budget:
  """Holds any three of the crystals, with padding left over."""
  g = data.graphs
  return batching.Budget(n_node=int(np.sort(g.n_node)[-3:].sum()) + 8,
                         n_edge=int(np.sort(g.n_edge)[-3:].sum()) + 24, n_graph=4,
                         max_atoms=int(g.n_node.max()))


@pytest.fixture(scope="module")
def run(config, data, budget):
  """run(names) -> (raw outputs float[G, l_y], intermediates {features_i: IrrepsArray},
  node states float[N, d]) of the crystals `names`, in order, in one batch."""
  model = create_model(config)
  params = jax.jit(functools.partial(model.init, train=False))(
      jax.random.key(0), jax.tree.map(jnp.asarray, batching.dummy_batch(budget, 12)))

  @jax.jit
  def apply(batch):
    out, state = model.apply(params, batch, train=False, raw=True,
                             mutable=["intermediates"])
    graph = batch.graph._replace(edges=batch.edge_vectors)
    states = model.encoder.apply({"params": params["params"]["encoder"]}, graph, train=False)
    return out, {k: v[0] for k, v in state["intermediates"]["encoder"].items()}, states

  ids = data.graphs.ids

  def go(names, batch=None):
    batch = batch or batching.assemble(data, np.array([ids.index(n) for n in names]), budget)
    return apply(jax.tree.map(jnp.asarray, batch))
  return go


def _real(out, k):
  return np.asarray(out)[:k]


def test_registry_builds_the_e3nn_encoder(config):
  model = create_model(config)
  assert isinstance(model.encoder, E3NNEncoder) and model.encoder.uses_edge_vectors
  assert model.encoder.r_max == RADIUS and model.encoder.irreps == IRREPS
  assert model.encoder.variant == config.model.e3nn_variant


def test_unknown_variant_is_a_one_line_input_error():
  from configs import smoke
  bad = _shrink(smoke.get_config())
  bad.model.e3nn_variant = "nequip"
  with pytest.raises(InputError, match="^" + re.escape(
      "config.model.e3nn_variant: unknown E3NN variant 'nequip'; expected one of chen2021, "
      "gate_points") + "$"):
    validate(bad)
  bad.model.e3nn_variant, bad.model.e3nn_num_basis = "gate_points", 1
  with pytest.raises(InputError, match=r"^config.model.e3nn_num_basis: 1: .* at least 2 "):
    validate(bad)


def test_batch_edge_vectors_reproduce_the_distances(data, budget):
  batch = batching.assemble(data, np.array([0, 1, 2]), budget)
  e_real = int(batch.graph.n_edge[:3].sum())
  chex.assert_shape(batch.edge_vectors, (budget.n_edge, 3))
  np.testing.assert_allclose(np.linalg.norm(batch.edge_vectors[:e_real], axis=1),
                             batch.graph.edges[:e_real], rtol=1e-6)
  np.testing.assert_array_equal(batch.edge_vectors[e_real:], 0.0)


def test_output_invariant_to_rotation_and_translation_of_the_crystal(run):
  out, _, _ = run(["tri", "nacl", "si"])
  moved, _, _ = run(["tri_moved", "nacl_moved", "si_moved"])
  chex.assert_tree_all_finite(out)
  np.testing.assert_allclose(_real(moved, 3), _real(out, 3), **TOL)


def test_rotating_only_the_positions_changes_the_output(run):
  """Guards the test above: it would fail if the cell were left out of the rotation."""
  out, _, _ = run(["tri"])
  positions_only, _, _ = run(["tri_positions_only"])
  with pytest.raises(AssertionError):
    np.testing.assert_allclose(_real(positions_only, 1), _real(out, 1), **TOL)


def test_output_invariant_to_atom_permutation(run):
  out, _, states = run(["tri"])
  perm, _, perm_states = run(["tri_perm"])
  np.testing.assert_allclose(_real(perm, 1), _real(out, 1), **TOL)
  # Node states follow their atoms: atom a of tri_perm is atom [2, 0, 1][a] of tri.
  np.testing.assert_allclose(np.asarray(perm_states)[:3], np.asarray(states)[[2, 0, 1]], **TOL)


def test_l1_features_rotate_with_the_crystal(run):
  _, feats, _ = run(["tri"])
  _, moved, _ = run(["tri_moved"])
  for name, x in feats.items():
    vectors = x.filter(keep=["1e", "1o"])
    assert vectors.irreps.num_irreps > 0, name
    rotated = np.asarray(vectors.transform_by_matrix(R).array)[:3]
    got = np.asarray(moved[name].filter(keep=["1e", "1o"]).array)[:3]
    assert np.abs(rotated).max() > 1e-3, f"{name}: l=1 features vanish"
    np.testing.assert_allclose(got, rotated, **TOL, err_msg=name)
    # They are not invariant: the check above would see a missing rotation.
    assert np.abs(got - np.asarray(vectors.array)[:3]).max() > 1e-3, name


def test_padding_does_not_change_a_crystals_output(run, data, budget):
  alone, _, _ = run(["tri"])
  crowded, _, _ = run(["si", "tri", "nacl"])
  np.testing.assert_allclose(_real(crowded, 2)[1], _real(alone, 1)[0], **TOL)
  # Padding edges given real-looking geometry and wired between real atoms change nothing.
  batch = batching.assemble(data, np.array([data.graphs.ids.index("tri")]), budget)
  e_real = int(batch.graph.n_edge[0])
  vectors, senders = batch.edge_vectors.copy(), batch.graph.senders.copy()
  receivers = batch.graph.receivers.copy()
  vectors[e_real:], senders[e_real:], receivers[e_real:] = [1.0, 2.0, -0.5], 0, 1
  rewired = batch._replace(edge_vectors=vectors, graph=batch.graph._replace(
      senders=senders, receivers=receivers))
  out, _, _ = run(None, rewired)
  np.testing.assert_allclose(_real(out, 1), _real(alone, 1), **TOL)


@pytest.mark.parametrize("name,decoder,variant", [
    ("e3nn", MLPDecoder, "chen2021"), ("e3nn_new", MLPDecoder, "gate_points"),
    ("e3nn2dos", CausalTransformerDecoder, "gate_points")])
def test_ablation_configs_build_and_take_a_train_step(name, decoder, variant, train_one_step):
  config = cli.load_config_file(os.path.join(REPO, "configs", "ablations", f"{name}.py"))
  assert config.model.encoder == "e3nn" and config.data.max_num_nbr == 0
  assert config.data.radius == 5.0 and config.model.encoder_layers == 2
  full = create_model(config)
  assert isinstance(full.encoder, E3NNEncoder) and type(full.decoder) is decoder
  assert full.encoder.irreps == "32x0e+32x0o+32x1e+32x1o"
  assert full.encoder.variant == variant
  if decoder is MLPDecoder:
    assert full.decoder.num_layers == 0   # one linear map of the pooled per-atom states
  else:
    assert full.decoder.source_attention and full.decoder.causal

  config = _shrink(config)
  config.model.decoder_layers = 0 if decoder is MLPDecoder else 1
  moved = train_one_step(config).moved
  assert max(jax.tree.leaves(moved)) > 0


def test_benchmark_config_compiles_each_step_once(tmp_path):
  """configs/bench_e3nn.py (the benchmark's E3NN rows): the radius graph's edge counts vary
  from crystal to crystal, yet one padding budget holds every batch, so each step has one
  executable and nothing compiles after the first epoch. (The first train epoch's count
  also holds the small programs e3nn-jax runs eagerly while the step is traced: the
  second moments of its activations, over 10^6 samples, that normalise them.)"""
  from xtal2dos_jax.models import needs_edge_vectors
  from xtal2dos_jax.workflows.benchmarks import compile_counter
  from xtal2dos_jax.workflows.benchmarks.harness import quick_config
  config = cli.load_config_file(os.path.join(REPO, "configs", "bench_e3nn.py"))
  assert config.model.encoder == "e3nn" and needs_edge_vectors(config)
  assert config.data.max_num_nbr == 0 and config.data.radius == 5.0
  config = _shrink(quick_config(config))
  config.data.limit = 48
  config.data.cache_dir = str(tmp_path / "graphs")
  counts = compile_counter.count_step_compiles(config, num_epochs=2)
  assert (counts["train_buckets"], counts["eval_buckets"]) == (1, 1), counts
  assert counts["train_per_epoch"][1:] == [0] and counts["eval_per_epoch"] == [1, 0], counts
  assert counts["eval_final_rereplicated"] == 0, counts


# --------------------------------------------------------------------------------------------
# The gate_points layer's own pieces, against numpy


def test_gaussian_radial_basis_matches_numpy():
  """sqrt(n) exp(-((r - c_k) / step)^2) / 1.12 on centres 0, step, ..., r_max."""
  r_max, n = 5.0, 6
  lengths = np.array([0.0, 0.37, 1.0, 2.5, 4.2, 4.99])
  centres = np.linspace(0.0, r_max, n)
  step = r_max / (n - 1)
  want = math.sqrt(n) * np.exp(-((lengths[:, None] - centres) / step) ** 2) / 1.12
  got = gaussian_radial_basis(jnp.asarray(lengths, jnp.float32), r_max, n)
  chex.assert_shape(got, (len(lengths), n))
  chex.assert_trees_all_close(np.asarray(got), want, rtol=1e-5, atol=1e-6)


def test_self_connection_mask():
  """Irreps of the output that x holds get the self-connection (sin/cos mix)."""
  out = e3nn.Irreps("2x0e+1x0o+2x1o+1x1e")
  np.testing.assert_array_equal(self_connection_mask(e3nn.Irreps("3x0e+1x1o"), out),
                                [1, 1, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0])
  np.testing.assert_array_equal(self_connection_mask(e3nn.Irreps("3x0e"), out),
                                [1, 1] + [0] * 10)


def test_gate_points_convolution_against_numpy():
  """One first layer (x = k x 0e) of gate_points: its self-connection is the FCTP of x and
  the attributes (a linear map of the products x_u z_v, computed in numpy from the layer's
  weights), and the output is sin(pi/8) sc + cos(pi/8) lin2 on the irreps sc reaches (0e)
  and sin(pi/8) sc + lin2 = lin2 on the rest (1o)."""
  k, num_nodes, num_edges = 3, 4, 6
  out_irreps = e3nn.Irreps("2x0e+2x1o")
  rng = np.random.default_rng(0)
  x = e3nn.IrrepsArray(f"{k}x0e", jnp.asarray(rng.normal(size=(num_nodes, k)), jnp.float32))
  attr = e3nn.IrrepsArray(f"{k}x0e", jnp.asarray(rng.random((num_nodes, k)), jnp.float32))
  vectors = jnp.asarray(rng.normal(size=(num_edges, 3)), jnp.float32)
  edge_attr = e3nn.spherical_harmonics("0e+1o", vectors, normalize=True,
                                       normalization="component")
  radial = gaussian_radial_basis(jnp.linalg.norm(vectors, axis=-1), 4.0, 5)
  senders, receivers = jnp.array([0, 1, 2, 3, 1, 2]), jnp.array([1, 0, 3, 2, 2, 1])
  layer = GatePointsConvolution(out_irreps, num_neighbors=2.0, radial_hidden=8)
  args = (x, attr, edge_attr, radial, senders, receivers)
  params = layer.init(jax.random.key(0), *args)
  out, state = layer.apply(params, *args, capture_intermediates=True)
  chex.assert_shape(out.array, (num_nodes, out_irreps.dim))
  captured = state["intermediates"]
  sc = np.asarray(captured["self_connection"]["__call__"][0].array)
  lin2 = np.asarray(captured["lin2"]["__call__"][0].array)

  # FCTP(x, z -> 2x0e): sum_{u,v} W_{(u v) w} x_u z_v / sqrt(k^2); no path reaches 1o.
  (weight,) = jax.tree.leaves(params["params"]["self_connection"])
  products = np.einsum("nu,nv->nuv", np.asarray(x.array), np.asarray(attr.array))
  want_sc = products.reshape(num_nodes, k * k) @ np.asarray(weight) / k
  np.testing.assert_allclose(sc[:, :2], want_sc, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(sc[:, 2:], 0.0)

  c_s, c_x = np.sin(np.pi / 8), np.cos(np.pi / 8)
  want = np.concatenate([c_s * sc[:, :2] + c_x * lin2[:, :2], lin2[:, 2:]], axis=1)
  np.testing.assert_allclose(np.asarray(out.array), want, rtol=1e-5, atol=1e-6)
  assert np.abs(lin2[:, 2:]).max() > 1e-3 and np.abs(sc[:, :2]).max() > 1e-3
