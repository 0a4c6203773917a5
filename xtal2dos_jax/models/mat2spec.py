"""Mat2Spec decoder (Kong et al., Nat. Commun. 2022): contrastive learning from
probabilistic embeddings, the Xtal2DoS paper's main eDoS baseline.

Two branches share one decoder and one table of learned energy-level ("label")
embeddings e_t (float[l_y, emb]):

  crystal branch (train and evaluation)
    h     = MLP(context)                                      (Dense-relu-dropout x3)
    q_k   = N(mu_k(h), diag exp(logvar_k(h))), k = 1..K       K Gaussians, float[G, K, D]
    pi    = softmax(Dense(h))                                 float[G, K]
    z_x   = sum_k pi_k z_k,  z_k ~ q_k (reparameterised) in training, z_k = mu_k at evaluation
  label branch (training only: it reads the labels)
    p_l   = N(mu_l, diag exp(logvar_l)) = MLP(one-hot of energy level l), l = 1..l_y
    rho   = softmax(MLP(y))                                   float[G, l_y], from the label y
    z_y   = sum_l rho_l z_l,  z_l ~ p_l (one draw per step, shared by the batch)
  shared decoder, for z in (z_x, z_y)
    u     = leaky_relu(Dense(relu(Dense([context; z]))))      float[G, emb]
    raw_t = <u, e_t>                                          float[G, l_y]

The decoder returns the crystal branch's raw output (the train step's DoS loss is on
it); in training it sows, per crystal (float32[G], into `train.AUX_LOSS`):

  label_dos:   w_label * DoS loss of the label branch's raw output
  latent_kl:   w_kl * sum_{k,l} pi_k rho_l (KL(q_k || p_l) + KL(p_l || q_k)) / 2
               (`mixture_latent_kl`: each covariance is diagonal)
  contrastive: w_c * -log[exp(s_ii / tau) / sum_{j != i} exp(s_ij / tau)], s_ij the cosine
               similarity of the projections P(u_y,i) and P(u_x,j) (`contrastive_loss`):
               the positive of crystal i's label embedding is its own crystal embedding,
               the other real crystals of the batch are its negatives

with the public code's weights 1, 1.1 and 0.1 by default. At evaluation the crystal
branch uses the mixture means: deterministic, and the labels are never read.

Same interface as every decoder (see `transformer_decoder.py`); the atoms are unused
except for their mask, which tells real crystals from padding.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
import ml_collections

from xtal2dos_jax.input_pipeline.labels import output_activation_for
from xtal2dos_jax.models.precision import DotGeneral, precision_kwargs, same_precision
from xtal2dos_jax.models.transformer_decoder import AtomStates, SequenceDecoder
from xtal2dos_jax.objectives import losses
Dtype = Any

# Names of the per-crystal terms the decoder sows into `train.AUX_LOSS` in training.
AUX_TERMS = ("label_dos", "latent_kl", "contrastive")
# The collection they are sown into: `train.AUX_LOSS` (train imports the models, so the
# name is repeated here rather than imported).
AUX_LOSS = "aux_loss"
# Fill for excluded similarities: exp(fill) underflows to 0 in float32 while staying finite.
_EXCLUDED = -1e9


def diagonal_gaussian_kl(mu_q: jax.Array, logvar_q: jax.Array, mu_p: jax.Array,
                         logvar_p: jax.Array) -> jax.Array:
  """KL(q || p) between Gaussians with diagonal covariances, summed over the last axis.

  KL = 1/2 sum_d [logvar_p - logvar_q - 1 + exp(logvar_q - logvar_p)
                  + (mu_q - mu_p)^2 exp(-logvar_p)].

  Args:
    mu_q, logvar_q: float[..., D] mean and log-variance of q.
    mu_p, logvar_p: float[..., D] those of p (broadcast against q's).

  Returns:
    float[...] in nats; 0 when q == p.
  """
  return 0.5 * jnp.sum(logvar_p - logvar_q - 1.0 + jnp.exp(logvar_q - logvar_p)
                       + jnp.square(mu_q - mu_p) * jnp.exp(-logvar_p), axis=-1)


def mixture_latent_kl(pi_x: jax.Array, mu_x: jax.Array, logvar_x: jax.Array, rho_y: jax.Array,
                      mu_y: jax.Array, logvar_y: jax.Array) -> jax.Array:
  """The mixture-weighted symmetric KL between the crystal and the label latents.

  sum_{k,l} pi_k rho_l (KL(q_k || p_l) + KL(p_l || q_k)) / 2 per crystal: the expected
  symmetric divergence between a crystal component and a label component drawn from
  their mixture weights.

  Args:
    pi_x: float[G, K] crystal mixture weights (each row sums to 1).
    mu_x, logvar_x: float[G, K, D] crystal components q_k.
    rho_y: float[G, L] label mixture weights (each row sums to 1).
    mu_y, logvar_y: float[L, D] label components p_l (shared by every crystal).

  Returns:
    float[G] in nats.
  """
  q_mu, q_logvar = mu_x[:, :, None], logvar_x[:, :, None]              # [G, K, 1, D]
  p_mu, p_logvar = mu_y[None, None], logvar_y[None, None]              # [1, 1, L, D]
  symmetric = 0.5 * (diagonal_gaussian_kl(q_mu, q_logvar, p_mu, p_logvar)
                     + diagonal_gaussian_kl(p_mu, p_logvar, q_mu, q_logvar))  # [G, K, L]
  return jnp.einsum("gk,gl,gkl->g", pi_x, rho_y, symmetric)


def contrastive_loss(anchors: jax.Array, candidates: jax.Array, mask: jax.Array,
                     temperature: float = 1.0) -> jax.Array:
  """Per-anchor contrastive term: -log[exp(s_ii / tau) / sum_{j != i, real} exp(s_ij / tau)].

  s_ij is the cosine similarity of anchor i and candidate j; the positive of anchor i
  is candidate i (the same crystal's other embedding) and the negatives are the other
  real crystals' candidates (the positive is left out of the denominator, as in the
  public Mat2Spec code). Padding crystals (mask False) are neither negatives nor
  anchors: their term is 0, as is that of an anchor without negatives (a batch with a
  single real crystal).

  Args:
    anchors: float[G, P] (the label branch's projections).
    candidates: float[G, P] (the crystal branch's projections).
    mask: bool[G] real crystals.
    temperature: tau > 0.

  Returns:
    float[G].
  """
  normalise = lambda v: v / jnp.maximum(jnp.linalg.norm(v, axis=-1, keepdims=True), 1e-12)
  s = normalise(anchors) @ normalise(candidates).T / temperature       # [G, G]
  num = s.shape[0]
  negatives = mask[None, :] & ~jnp.eye(num, dtype=bool)
  log_denominator = jax.nn.logsumexp(jnp.where(negatives, s, _EXCLUDED), axis=-1)
  term = log_denominator - jnp.diagonal(s)
  return jnp.where(mask & jnp.any(negatives, axis=-1), term, 0.0)


class Mat2SpecDecoder(SequenceDecoder):
  """Probabilistic-embedding decoder of Mat2Spec (equations in the module docstring).

  Attributes:
    l_y: number of output positions (energy levels).
    latent_dim: D, width of each Gaussian latent.
    num_components: K, Gaussians of the crystal mixture.
    emb_size: width of the decoded embedding u and the energy-level embeddings e_t.
    feature_hidden: widths of the crystal encoder's hidden layers.
    label_hidden: widths of the label (energy-level) encoder's hidden layers.
    mixture_hidden: hidden width of the MLP giving the label mixture weights from y.
    decoder_hidden: hidden width of the shared decoder.
    projection_dim: width of the linear projection the contrastive loss compares.
    dropout: rate after each encoder hidden layer (train only).
    temperature: tau of the contrastive loss.
    label_weight, kl_weight, contrastive_weight: weights of the sown terms.
    loss: config.train.loss, the DoS loss of the label branch.
    output_activation: the model's head activation ('softmax' for normalized_sum).
    dtype: compute dtype of the layers (parameters and loss terms stay float32).
    dot_general: the matmul of the layers (see `precision.py`).
  """
  l_y: int
  latent_dim: int = 128
  num_components: int = 10
  emb_size: int = 512
  feature_hidden: Sequence[int] = (256, 512, 256)
  label_hidden: Sequence[int] = (512, 256)
  mixture_hidden: int = 128
  decoder_hidden: int = 512
  projection_dim: int = 1024
  dropout: float = 0.5
  temperature: float = 1.0
  label_weight: float = 1.0
  kl_weight: float = 1.1
  contrastive_weight: float = 0.1
  loss: str = "kl"
  output_activation: str = "softmax"
  dtype: Dtype = jnp.float32
  dot_general: DotGeneral = lax.dot_general

  def _dense(self, features: int, name: str) -> nn.Dense:
    return nn.Dense(features, **same_precision(self), name=name)

  def _encoder(self, x: jax.Array, widths: Sequence[int], prefix: str, train: bool) -> jax.Array:
    for i, width in enumerate(widths):
      x = nn.relu(self._dense(width, f"{prefix}_hidden_{i}")(x))
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return x

  @nn.compact
  def __call__(self, context: jax.Array, atoms: AtomStates, y_teacher: Optional[jax.Array], *,
               train: bool) -> jax.Array:
    """float[G, c] context, atoms (mask only), y_teacher float[G, l_y] (training) ->
    float[G, l_y] raw outputs of the crystal branch."""
    num_graphs, k, d = context.shape[0], self.num_components, self.latent_dim
    f32 = lambda a: a.astype(jnp.float32)
    real = jnp.any(atoms.mask, axis=-1)                                       # [G]
    energies = self.param("energy_embeddings",
                          nn.initializers.variance_scaling(1.0 / 3, "fan_in", "uniform",
                                                           in_axis=0, out_axis=1),
                          (self.l_y, self.emb_size))                         # [l_y, emb]
    decoder_in = self._dense(self.decoder_hidden, "decoder_hidden")
    decoder_out = self._dense(self.emb_size, "decoder_out")

    def decode(z: jax.Array) -> tuple[jax.Array, jax.Array]:
      """float[G, D] latent -> (u float[G, emb], raw float[G, l_y])."""
      x = jnp.concatenate([context, z.astype(context.dtype)], axis=-1)
      u = nn.leaky_relu(decoder_out(nn.relu(decoder_in(x))))
      return u, f32(u @ energies.T.astype(u.dtype))

    # Crystal branch.
    h = self._encoder(context, self.feature_hidden, "feature", train)
    mu_x = f32(self._dense(k * d, "feature_mu")(h)).reshape(num_graphs, k, d)
    logvar_x = f32(self._dense(k * d, "feature_logvar")(h)).reshape(num_graphs, k, d)
    pi_x = jax.nn.softmax(f32(self._dense(k, "feature_mixture")(h)), axis=-1)   # [G, K]
    z_k = mu_x
    if train:
      z_k = mu_x + jnp.exp(0.5 * logvar_x) * jax.random.normal(self.make_rng("dropout"),
                                                                mu_x.shape)
    u_x, raw_x = decode(jnp.einsum("gk,gkd->gd", pi_x, z_k))

    if not (train or self.is_initializing()):
      return raw_x
    if train and y_teacher is None:
      raise ValueError("Mat2SpecDecoder needs the labels (y_teacher) in training")
    # Label branch: built at initialisation too, so that the parameters exist.
    y = f32(y_teacher) if y_teacher is not None else jnp.zeros((num_graphs, self.l_y))
    g = self._encoder(jnp.eye(self.l_y, dtype=context.dtype), self.label_hidden, "label", train)
    mu_y = f32(self._dense(d, "label_mu")(g))                                  # [l_y, D]
    logvar_y = f32(self._dense(d, "label_logvar")(g))
    mixture = nn.relu(self._dense(self.mixture_hidden, "label_mixture_hidden")(
        y.astype(context.dtype)))
    rho_y = jax.nn.softmax(f32(self._dense(self.l_y, "label_mixture")(mixture)), axis=-1)
    z_l = mu_y
    if train:
      z_l = mu_y + jnp.exp(0.5 * logvar_y) * jax.random.normal(self.make_rng("dropout"),
                                                                mu_y.shape)
    u_y, raw_y = decode(rho_y @ z_l)
    projection = self._dense(self.projection_dim, "projection")
    proj_y, proj_x = f32(projection(u_y)), f32(projection(u_x))
    if train:
      dos_loss = losses.loss_on_raw_outputs(self.loss, self.output_activation)
      terms = {
          "label_dos": self.label_weight * dos_loss(y, raw_y),
          "latent_kl": self.kl_weight * mixture_latent_kl(pi_x, mu_x, logvar_x, rho_y, mu_y,
                                                          logvar_y),
          "contrastive": self.contrastive_weight * contrastive_loss(proj_y, proj_x, real,
                                                                    self.temperature),
      }
      for name in AUX_TERMS:
        self.sow(AUX_LOSS, name, terms[name].astype(jnp.float32))
    return raw_x


def mat2spec_decoder(config: ml_collections.ConfigDict) -> nn.Module:
  """`Mat2SpecDecoder` sized by config.model.mat2spec_*, dropout config.model.decoder_dropout;
  the label branch's DoS loss is config.train.loss on the head of config.data.scaling."""
  m = config.model
  return Mat2SpecDecoder(l_y=config.data.l_y, latent_dim=m.mat2spec_latent_dim,
                         num_components=m.mat2spec_num_components,
                         emb_size=m.mat2spec_emb_size, dropout=m.decoder_dropout,
                         temperature=m.mat2spec_temperature,
                         label_weight=m.mat2spec_label_weight,
                         kl_weight=m.mat2spec_kl_weight,
                         contrastive_weight=m.mat2spec_contrastive_weight,
                         loss=config.train.loss,
                         output_activation=output_activation_for(config.data.scaling),
                         **precision_kwargs(config))
