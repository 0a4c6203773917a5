"""E(3)-equivariant graph encoder with e3nn-jax (the E3NN baselines of the paper's Table 1).

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

Encoder interface (`graph_layers`): (graph, train=) -> float[N, d_model], with
graph.edges = float32[E, 3] displacement vectors (`uses_edge_vectors`, see `Xtal2DoS`).
The layer outputs are sown as `intermediates` (`features_<i>`, IrrepsArray [N, irreps]),
which the equivariance tests read.
"""
from __future__ import annotations

from typing import Any, ClassVar

import e3nn_jax as e3nn
import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph
import ml_collections

from xtal2dos_jax.errors import InputError
from xtal2dos_jax.featurize import MAX_Z
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


class E3NNEncoder(nn.Module):
  """Element embedding + `num_layers` `E3NNLayer`s + scalar read-out to d_model.

  Attributes:
    d_model: width of the scalar node outputs (what the decoders read).
    num_layers: number of equivariant layers.
    irreps: hidden irreps, e.g. "32x0e+32x0o+32x1e+32x1o".
    lmax: highest degree of the edge spherical harmonics (1 or 2).
    r_max: cutoff of the radial basis and envelope, Å (the featuriser's radius).
    num_basis: number of Bessel functions of the edge length.
    num_neighbors: normaliser of the message sums (about the mean in-degree).
    radial_hidden: width of the radial MLPs.
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


def e3nn_encoder(config: ml_collections.ConfigDict) -> E3NNEncoder:
  """The registry factory: `config.model.e3nn_*`, `encoder_layers`, `d_model`, and the
  featuriser's `data.radius` as r_max."""
  m = config.model
  if m.e3nn_lmax not in (1, 2):
    raise InputError("config.model.e3nn_lmax", f"{m.e3nn_lmax} must be 1 or 2")
  try:
    irreps = e3nn.Irreps(m.e3nn_irreps)
  except (ValueError, AssertionError) as e:
    raise InputError("config.model.e3nn_irreps", f"{m.e3nn_irreps!r} is not an irreps "
                     f"string like 32x0e+32x0o+32x1e+32x1o ({e})") from None
  if irreps.filter(keep=["0e"]).num_irreps == 0:
    raise InputError("config.model.e3nn_irreps", f"{m.e3nn_irreps!r} has no 0e channel "
                     "(the element embedding and the read-out need one)")
  return E3NNEncoder(d_model=m.d_model, num_layers=m.encoder_layers, irreps=str(irreps),
                     lmax=m.e3nn_lmax, r_max=config.data.radius, num_basis=m.e3nn_num_basis,
                     num_neighbors=m.e3nn_num_neighbors, radial_hidden=m.e3nn_radial_hidden,
                     dtype=precision_kwargs(config)["dtype"])
