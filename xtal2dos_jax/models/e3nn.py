"""E(3)-equivariant graph encoders with e3nn-jax (the E3NN baselines of the paper's Table 1).

Two variants (`config.model.e3nn_variant`): "chen2021" (`E3NNLayer`, below) and
"gate_points" (`GatePointsConvolution`, the layer of e3nn's `gate_points_2101.Network`,
further below; the paper's "E3NN-new" row and its E3NN2DoS encoder).

Variant "chen2021" (the E3NN paper's network; the public phonon-DoS tutorial's code is
the gate_points network instead):

The architecture of Chen et al., "Direct prediction of phonon density of states with
Euclidean neural networks" (Adv. Sci. 2021) and of e3nn's point-convolution networks:

  x^0_i      = Embed(Z_i)                                   scalars, mul x 0e
  Y_ij       = spherical harmonics l <= lmax of v_ij / |v_ij|  (v_ij = r_j + shift - r_i, Å)
  w_ij       = MLP(envelope(|v_ij|) * Bessel basis of |v_ij|)  MLP without biases: w -> 0
                                                               smoothly at r_max
  m_ij       = w_ij (per output irrep) * (x_j (x) Y_ij)        tensor product, filtered to the
                                                               hidden irreps' l and parities
  x^{t+1}_i  = Gate(Linear(sum_j m_ij / sqrt(num_neighbors)) + Linear(x^t_i))
  h_i        = Linear(x^T_i) -> d_model x 0e                   scalar node outputs

Each Gate applies SiLU / tanh to the scalars (even / odd) and multiplies every l > 0
irrep by a sigmoid of its own extra scalar, so the layer stays equivariant. The hidden
irreps (`irreps`, e.g. 32x0e+32x0o+32x1e+32x1o) are filtered in each layer to what the
tensor product can produce (from the first layer's 0e input only the harmonics'
own irreps, 0e and 1o for lmax 1). The envelope goes smoothly to zero at r_max, so a neighbour
crossing the cutoff changes nothing abruptly; the fixed `num_neighbors` (about the
mean in-degree of the training graphs) keeps each crystal's output independent of its
batch. Output h_i is invariant to rotations and translations of the crystal and moves
with its atom under a permutation; only the invariant 0e part reaches the decoders.

The element embedding is a learned table (one-hot -> Dense); the tutorial's mass-
weighted one-hot is the same up to a per-element scale of the rows, which the learned
table absorbs. No dropout (the E3NN paper uses none). The encoder computes in float32
whatever `config.model.dtype` is and casts its output to `dtype`.

Variant "gate_points" (e3nn's gate_points_2101 Convolution + Gate, as the MRS 2021
phonon-DoS tutorial ninarina12/phononDoS_tutorial uses them; zhantaochen/phonondos_e3nn,
the 2021 paper's code, is built on e3nn 0.1's GatedConvParityNetwork instead). Every
layer also reads a per-atom scalar attribute z_i, and the edge weights come from a
Gaussian basis:

  x^0_i = relu(Embed_x(Z_i)), z_i = relu(Embed_z(Z_i))      k x 0e each, k = the 0e width
                                                            of `irreps`
  a_ij  = s(|v_ij| / r_max) Y_ij                            smooth cutoff s (1 below r_max/2,
                                                            0 from r_max) times the harmonics
  B_ij  = sqrt(num_basis) gaussians(|v_ij|)                 num_basis centres on 0..r_max
  sc_i  = FCTP(x_i, z_i -> out),  y_i = FCTP(x_i, z_i -> irreps of x)
  m_ij  = MLP_silu(B_ij) (per path and channel, 'uvu') * (y_j (x) a_ij)
  c_i   = FCTP(sum_j m_ij / sqrt(num_neighbors), z_i -> out)
  o_i   = sin(pi/8) sc_i + cos(pi/8) c_i   where sc has a path (the irreps of x),
          sin(pi/8) sc_i + c_i = c_i       elsewhere (sc is 0 there; e3nn's output_mask)
  x^{t+1}_i = Gate(o_i)                                     as in "chen2021"
  h_i   = the same convolution without Gate -> d_model x 0e  scalar node outputs

FCTP(x, z -> out) is e3nn's FullyConnectedTensorProduct with the attributes z. Since z
holds only scalars, each path x_u (x) z_v is x_u scaled by z_v (same irrep), so the FCTP
is a learned linear map of all products x_u z_v onto each output irrep of that type:
`e3nn.flax.Linear(out)(e3nn.tensor_product(x, z))`, exactly: the Linear divides by
sqrt(fan-in) = sqrt(mul_x k), e3nn's "element" path normalisation of the FCTP.
`Linear(num_indexed_weights=)` would fit a one-hot index attribute only, not the
continuous relu embedding. The layer
count is e3nn's: `num_layers` gated convolutions, then the read-out convolution. The radial
MLP has one hidden layer (the tutorial's radial_layers=1) of `radial_hidden` units, no
biases. Padding edges get a = 0 (masked), so their messages are exactly zero.
Differences from the tutorial: x^0 and z are two learned tables of Z (the tutorial's
relu(Linear(mass-weighted one-hot)) and relu(Linear(one-hot)), one Linear for both, are
a special case: two per-element vectors) of width k (the tutorial's em_dim is 64, its
mul 32); the radial MLP is `radial_hidden` wide (the tutorial's 100); the read-out gives
d_model scalars the decoders read (the tutorial's 51 outputs go through relu, a mean
over atoms and a max-normalisation instead); the graph is the 5 Å radius graph without
self edges (the tutorial's is 4 Å and has each atom as its own neighbour at distance 0,
a = [1, 0, 0, 0]; the self-connection already mixes an atom's own state in).

Encoder interface (`graph_layers`): (graph, train=) -> float[N, d_model], with
graph.edges = float32[E, 3] displacement vectors (`uses_edge_vectors`, see `Xtal2DoS`).
The layer outputs are sown as `intermediates` (`features_<i>`, IrrepsArray [N, irreps]),
which the equivariance tests read.
"""
from __future__ import annotations

import math
from typing import Any, ClassVar

import e3nn_jax as e3nn
import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph
import ml_collections
import numpy as np

from xtal2dos_jax.input_pipeline.featurize import MAX_Z
from xtal2dos_jax.models.dostransformer_encoder import smooth_cutoff
from xtal2dos_jax.models.graph_layers import edge_mask
from xtal2dos_jax.models.precision import precision_kwargs
Dtype = Any


def _gate_irreps(target: e3nn.Irreps) -> e3nn.Irreps:
  """Irreps a Linear must produce for `e3nn.gate` to return `target`: its scalars, then one
  even gate scalar per l > 0 irrep, then the l > 0 irreps."""
  scalars, vectors = target.filter(keep=["0e", "0o"]), target.filter(drop=["0e", "0o"])
  return (scalars + e3nn.Irreps(f"{vectors.num_irreps}x0e") + vectors if vectors.num_irreps
          else scalars)


class E3NNLayer(nn.Module):
  """One equivariant point convolution + gated nonlinearity (see the module docstring).

  Attributes:
    irreps: hidden irreps of the output (filtered to what the tensor product yields).
    num_neighbors: messages are summed and divided by sqrt(num_neighbors).
    radial_hidden: width of the radial MLP's two hidden layers.
  """
  irreps: e3nn.Irreps
  num_neighbors: float
  radial_hidden: int = 64

  @nn.compact
  def __call__(self, x: e3nn.IrrepsArray, sh: e3nn.IrrepsArray, radial: jax.Array,
               senders: jax.Array, receivers: jax.Array) -> e3nn.IrrepsArray:
    """Args:
      x: IrrepsArray [N, irreps_in] node features.
      sh: IrrepsArray [E, 0e+1o(+2e)] spherical harmonics of the edge directions.
      radial: float[E, num_basis] radial basis of the edge lengths, times the envelope
        and the edge mask (zero rows for padding edges).
      senders / receivers: int32[E] neighbour j / centre i of each edge.

    Returns:
      IrrepsArray [N, irreps filtered to the reachable l and parities].
    """
    irreps = e3nn.Irreps(self.irreps)
    messages = e3nn.tensor_product(x[senders], sh, filter_ir_out=irreps)
    target = irreps.filter(keep=messages.irreps)
    # No biases and silu(0) = 0: a zero basis row (padding edge, or beyond r_max) gives
    # zero weights, hence no message.
    weights = e3nn.flax.MultiLayerPerceptron(
        (self.radial_hidden, self.radial_hidden, messages.irreps.num_irreps), act=jax.nn.silu,
        output_activation=False, name="radial")(radial)
    messages = messages * weights                                          # per irrep
    summed = e3nn.scatter_sum(messages, dst=receivers, output_size=x.shape[0])
    summed = summed / jnp.sqrt(self.num_neighbors)
    pre = _gate_irreps(target)
    # Both map into exactly `pre` (gate scalars after the others, as e3nn.gate reads
    # them); the self-connection gives zeros for the irreps x lacks.
    linear = lambda name: e3nn.flax.Linear(pre, force_irreps_out=True,
                                           simplify_irreps_internally=False, name=name)
    out = linear("message_linear")(summed) + linear("self_linear")(x)
    return e3nn.gate(out, even_act=jax.nn.silu, odd_act=jnp.tanh, even_gate_act=jax.nn.sigmoid)


def reachable_irreps(irreps_in: e3nn.Irreps, irreps_edge: e3nn.Irreps,
                     hidden: e3nn.Irreps) -> e3nn.Irreps:
  """The irreps of `hidden` that a tensor product of `irreps_in` with `irreps_edge` can
  produce (gate_points_2101's `tp_path_exists`, irrep by irrep)."""
  products = {ir for _, ir_in in e3nn.Irreps(irreps_in) for _, ir_edge in e3nn.Irreps(irreps_edge)
              for ir in ir_in * ir_edge}
  return e3nn.Irreps(hidden).filter(keep=sorted(products))


def gaussian_radial_basis(lengths: jax.Array, r_max: float, num_basis: int) -> jax.Array:
  """gate_points_2101's edge-length embedding: float[E] Å -> float[E, num_basis].

  B_k(r) = sqrt(num_basis) exp(-((r - c_k) / step)^2) / 1.12, centres c_k = k step,
  step = r_max / (num_basis - 1) (e3nn's soft_one_hot_linspace, basis "gaussian",
  cutoff False: no basis function vanishes at 0 or r_max; the sqrt(num_basis) gives the
  rows a sum of squares of about num_basis, unit variance per entry)."""
  return e3nn.soft_one_hot_linspace(lengths, start=0.0, end=r_max, number=num_basis,
                                    basis="gaussian", cutoff=False) * math.sqrt(num_basis)


def self_connection_mask(irreps_in: e3nn.Irreps, irreps_out: e3nn.Irreps) -> np.ndarray:
  """bool[irreps_out.dim]: the components of `irreps_out` the self-connection
  FCTP(x, z -> out) reaches, with x of `irreps_in` and scalar attributes z (an irrep of
  the output is reached when x holds that irrep); e3nn's `output_mask` of `sc`."""
  present = {ir for mul, ir in e3nn.Irreps(irreps_in) if mul > 0}
  return np.concatenate([np.full(mul * ir.dim, ir in present) for mul, ir in
                         e3nn.Irreps(irreps_out)]).astype(bool)


def self_connection_mix(sc: jax.Array, conv: jax.Array, mask: np.ndarray) -> jax.Array:
  """c_s sc + c_x conv with c_s = sin(pi/8) and c_x = cos(pi/8) where `mask` (the
  self-connection has a path), c_x = 1 elsewhere (sc is zero there, so the convolution
  keeps its full scale): float[..., D] twice and bool[D] -> float[..., D]. The two
  weights have c_s^2 + c_x^2 = 1, so a sum of unit-variance terms stays unit-variance."""
  c_s, c_x = math.sin(math.pi / 8), math.cos(math.pi / 8)
  return c_s * sc + jnp.where(jnp.asarray(mask), c_x, 1.0).astype(conv.dtype) * conv


def _fctp(irreps_out: e3nn.Irreps, x: e3nn.IrrepsArray, attr: e3nn.IrrepsArray,
          name: str) -> e3nn.IrrepsArray:
  """FullyConnectedTensorProduct(x, attr -> irreps_out) for scalar attributes `attr`:
  a Linear of the products x_u attr_v (see the module docstring), exactly `irreps_out`
  (zeros for the irreps no product reaches). Call inside a compact module."""
  return e3nn.flax.Linear(irreps_out, force_irreps_out=True, simplify_irreps_internally=False,
                          name=name)(e3nn.tensor_product(x, attr))


class GatePointsConvolution(nn.Module):
  """gate_points_2101's `Convolution`: self-connection, lin1, 'uvu' edge tensor product,
  lin2, sin/cos(pi/8) mix (see the module docstring).

  Attributes:
    irreps_out: the output irreps, exactly (for a gated layer those `e3nn.gate` reads).
    num_neighbors: messages are summed and divided by sqrt(num_neighbors).
    radial_hidden: width of the radial MLP's hidden layer.
    radial_layers: number of hidden layers of the radial MLP (the tutorial's 1).
  """
  irreps_out: e3nn.Irreps
  num_neighbors: float
  radial_hidden: int = 64
  radial_layers: int = 1

  @nn.compact
  def __call__(self, x: e3nn.IrrepsArray, attr: e3nn.IrrepsArray, edge_attr: e3nn.IrrepsArray,
               radial: jax.Array, senders: jax.Array, receivers: jax.Array) -> e3nn.IrrepsArray:
    """Args:
      x: IrrepsArray [N, irreps_in] node features.
      attr: IrrepsArray [N, k x 0e] node attributes (the element embedding).
      edge_attr: IrrepsArray [E, 0e+1o(+2e)] smooth cutoff times the harmonics of the
        edge directions; zero rows for padding edges.
      radial: float[E, num_basis] Gaussian basis of the edge lengths.
      senders / receivers: int32[E] neighbour j / centre i of each edge.

    Returns:
      IrrepsArray [N, irreps_out].
    """
    irreps_out = e3nn.Irreps(self.irreps_out)
    sc = _fctp(irreps_out, x, attr, "self_connection")
    y = _fctp(x.irreps, x, attr, "lin1")
    # 'uvu': every channel u of each path (x_u (x) a -> ir_out) gets its own weight.
    messages = e3nn.tensor_product(y[senders], edge_attr, filter_ir_out=irreps_out)
    weights = e3nn.flax.MultiLayerPerceptron(
        (self.radial_hidden,) * self.radial_layers + (messages.irreps.num_irreps,),
        act=jax.nn.silu, output_activation=False, name="radial")(radial)
    # The product is linear in edge_attr: a masked (zero) row gives an exactly zero message.
    messages = messages * weights
    summed = e3nn.scatter_sum(messages, dst=receivers, output_size=x.shape[0])
    summed = summed / jnp.sqrt(self.num_neighbors)
    conv = _fctp(irreps_out, summed, attr, "lin2")
    mask = self_connection_mask(x.irreps, irreps_out)
    return e3nn.IrrepsArray(irreps_out, self_connection_mix(sc.array, conv.array, mask))


class E3NNEncoder(nn.Module):
  """Element embedding + `num_layers` equivariant layers + scalar read-out to d_model.

  Variant "chen2021": `E3NNLayer`s and a Linear read-out; "gate_points":
  `GatePointsConvolution` + Gate layers and a read-out convolution (module docstring).

  Attributes:
    d_model: width of the scalar node outputs (what the decoders read).
    num_layers: number of gated equivariant layers (gate_points adds the read-out
      convolution).
    irreps: hidden irreps, e.g. "32x0e+32x0o+32x1e+32x1o".
    lmax: highest degree of the edge spherical harmonics (1 or 2).
    r_max: cutoff of the radial basis and envelope, Å (the featuriser's radius).
    num_basis: number of Bessel (chen2021) / Gaussian (gate_points) functions of the
      edge length.
    num_neighbors: normaliser of the message sums (about the mean in-degree).
    radial_hidden: width of the radial MLPs.
    variant: "chen2021" | "gate_points" (`models.E3NN_VARIANTS`).
    dtype: dtype of the returned node states.
  """
  uses_edge_vectors: ClassVar[bool] = True
  d_model: int
  num_layers: int
  irreps: str = "32x0e+32x0o+32x1e+32x1o"
  lmax: int = 1
  r_max: float = 5.0
  num_basis: int = 10
  num_neighbors: float = 30.0
  radial_hidden: int = 64
  variant: str = "chen2021"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, graph: jraph.GraphsTuple, *, train: bool) -> jax.Array:
    """float[N, d_model] node states; graph.edges = float32[E, 3] vectors in Å."""
    del train  # no dropout
    irreps = e3nn.Irreps(self.irreps)
    mask = edge_mask(graph)
    # Padding edges get a unit vector: lengths and directions stay finite (also in the
    # gradients), and the mask zeroes their messages.
    vectors = jnp.where(mask[:, None], graph.edges.astype(jnp.float32),
                        jnp.array([1.0, 0.0, 0.0], jnp.float32))
    lengths = jnp.linalg.norm(vectors, axis=-1)
    sh = e3nn.spherical_harmonics(e3nn.Irreps.spherical_harmonics(self.lmax), vectors,
                                  normalize=True, normalization="component")
    if self.variant == "gate_points":
      return self._gate_points(graph, irreps, mask, lengths, sh)
    envelope = e3nn.soft_envelope(lengths, x_max=self.r_max)
    radial = (e3nn.bessel(lengths, self.num_basis, x_max=self.r_max)
              * (envelope * mask)[:, None])
    scalars = irreps.filter(keep=["0e"])
    x = e3nn.IrrepsArray(
        f"{scalars.num_irreps}x0e",
        nn.Embed(MAX_Z + 1, scalars.num_irreps, embedding_init=nn.initializers.normal(1.0),
                 name="element_embedding")(graph.nodes))
    for i in range(self.num_layers):
      x = E3NNLayer(irreps, self.num_neighbors, self.radial_hidden, name=f"layer_{i}")(
          x, sh, radial, graph.senders, graph.receivers)
      self.sow("intermediates", f"features_{i}", x)
    out = e3nn.flax.Linear(f"{self.d_model}x0e", name="readout")(x)
    return out.array.astype(self.dtype)

  def _gate_points(self, graph: jraph.GraphsTuple, irreps: e3nn.Irreps, mask: jax.Array,
                   lengths: jax.Array, sh: e3nn.IrrepsArray) -> jax.Array:
    """The "gate_points" variant from the edge mask bool[E], lengths float[E] (Å) and
    harmonics [E, 0e+1o(+2e)]: float[N, d_model] node states."""
    edge_attr = sh * (smooth_cutoff(lengths / self.r_max) * mask)[:, None]
    radial = gaussian_radial_basis(lengths, self.r_max, self.num_basis)
    k = irreps.filter(keep=["0e"]).num_irreps
    embed = lambda name: e3nn.IrrepsArray(f"{k}x0e", jax.nn.relu(nn.Embed(
        MAX_Z + 1, k, embedding_init=nn.initializers.normal(1.0), name=name)(graph.nodes)))
    x, attr = embed("element_embedding"), embed("element_attribute")
    convolution = lambda irreps_out, name: GatePointsConvolution(
        irreps_out, self.num_neighbors, self.radial_hidden, name=name)
    for i in range(self.num_layers):
      pre = _gate_irreps(reachable_irreps(x.irreps, sh.irreps, irreps))
      x = convolution(pre, f"layer_{i}")(x, attr, edge_attr, radial, graph.senders,
                                         graph.receivers)
      x = e3nn.gate(x, even_act=jax.nn.silu, odd_act=jnp.tanh, even_gate_act=jax.nn.sigmoid)
      self.sow("intermediates", f"features_{i}", x)
    out = convolution(e3nn.Irreps(f"{self.d_model}x0e"), "readout")(
        x, attr, edge_attr, radial, graph.senders, graph.receivers)
    return out.array.astype(self.dtype)


def e3nn_encoder(config: ml_collections.ConfigDict) -> E3NNEncoder:
  """The registry factory: `config.model.e3nn_*` (e3nn_variant picks the layer),
  `encoder_layers`, `d_model`, and the featuriser's `data.radius` as r_max."""
  m = config.model
  return E3NNEncoder(d_model=m.d_model, num_layers=m.encoder_layers,
                     irreps=str(e3nn.Irreps(m.e3nn_irreps)),
                     lmax=m.e3nn_lmax, r_max=config.data.radius, num_basis=m.e3nn_num_basis,
                     num_neighbors=m.e3nn_num_neighbors, radial_hidden=m.e3nn_radial_hidden,
                     variant=m.e3nn_variant, dtype=precision_kwargs(config)["dtype"])
