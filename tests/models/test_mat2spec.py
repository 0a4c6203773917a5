"""Tests for the Mat2Spec decoder: its latent KL and contrastive loss against numpy, the
decoder's contract (evaluation deterministic and label-free, training terms sown, padding
without influence) and the baseline config taking a train step."""
from __future__ import annotations

import functools
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xtal2dos_jax.models import AtomStates, create_model, DECODERS
from xtal2dos_jax.models.gatgnn import GATGNNEncoder
from xtal2dos_jax.models.mat2spec import (AUX_LOSS, AUX_TERMS, contrastive_loss,
                                          diagonal_gaussian_kl, Mat2SpecDecoder, mixture_latent_kl)
from xtal2dos_jax.training import train_steps
from xtal2dos_jax.workflows import cli

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOL = dict(rtol=1e-5, atol=1e-6)
L_Y = 12


# --------------------------------------------------------------------------------------------
# The math against numpy


def _np_gaussian_kl(mu_q, var_q, mu_p, var_p):
  """KL(q || p) from the general multivariate formula with full covariance matrices."""
  cov_q, cov_p = np.diag(var_q), np.diag(var_p)
  inv_p = np.linalg.inv(cov_p)
  diff = mu_p - mu_q
  return 0.5 * (np.trace(inv_p @ cov_q) + diff @ inv_p @ diff - len(mu_q)
                + np.log(np.linalg.det(cov_p) / np.linalg.det(cov_q)))


def test_diagonal_gaussian_kl_matches_numpy():
  rng = np.random.default_rng(0)
  mu_q, mu_p = rng.normal(size=(2, 5, 6))
  logvar_q, logvar_p = rng.normal(scale=0.7, size=(2, 5, 6))
  got = np.asarray(diagonal_gaussian_kl(mu_q, logvar_q, mu_p, logvar_p))
  chex.assert_shape(got, (5,))
  want = [_np_gaussian_kl(mu_q[i], np.exp(logvar_q[i]), mu_p[i], np.exp(logvar_p[i]))
          for i in range(5)]
  np.testing.assert_allclose(got, want, rtol=1e-5)
  assert (got > 0).all()
  np.testing.assert_allclose(diagonal_gaussian_kl(mu_q, logvar_q, mu_q, logvar_q), 0.0,
                             atol=1e-6)
  reverse = np.asarray(diagonal_gaussian_kl(mu_p, logvar_p, mu_q, logvar_q))
  assert np.abs(reverse - got).max() > 1e-3          # KL is not symmetric


def test_mixture_latent_kl_matches_numpy():
  rng = np.random.default_rng(1)
  g, k, l, d = 3, 4, 5, 2
  pi = rng.dirichlet(np.ones(k), g)
  rho = rng.dirichlet(np.ones(l), g)
  mu_x, logvar_x = rng.normal(size=(2, g, k, d))
  mu_y, logvar_y = rng.normal(size=(2, l, d))
  got = np.asarray(mixture_latent_kl(pi, mu_x, logvar_x, rho, mu_y, logvar_y))
  chex.assert_shape(got, (g,))
  want = np.zeros(g)
  for i in range(g):
    for a in range(k):
      for b in range(l):
        q = (mu_x[i, a], np.exp(logvar_x[i, a]))
        p = (mu_y[b], np.exp(logvar_y[b]))
        want[i] += pi[i, a] * rho[i, b] * 0.5 * (_np_gaussian_kl(*q, *p) + _np_gaussian_kl(*p, *q))
  np.testing.assert_allclose(got, want, rtol=1e-5)


def _np_contrastive(anchors, candidates, mask, tau):
  """The public code's form on the real crystals only: c_i = b_ii / (sum_j b_ij - b_ii),
  b_ij = exp(cos(anchor_i, candidate_j) / tau); term -log c_i, 0 for padding."""
  real = np.flatnonzero(mask)
  a = anchors[real] / np.linalg.norm(anchors[real], axis=1, keepdims=True)
  c = candidates[real] / np.linalg.norm(candidates[real], axis=1, keepdims=True)
  b = np.exp(a @ c.T / tau)
  out = np.zeros(len(mask))
  out[real] = -np.log(np.diag(b) / (b.sum(axis=1) - np.diag(b)))
  return out


def test_contrastive_loss_matches_numpy_and_masks_padding():
  rng = np.random.default_rng(2)
  anchors, candidates = rng.normal(size=(2, 6, 5)).astype(np.float32)
  mask = np.array([True, True, False, True, True, False])
  got = np.asarray(contrastive_loss(anchors, candidates, mask, 0.5))
  chex.assert_shape(got, (6,))
  np.testing.assert_allclose(got, _np_contrastive(anchors, candidates, mask, 0.5), **TOL)
  # Padding rows, whatever their values, are neither anchors nor negatives.
  junk_a, junk_c = anchors.copy(), candidates.copy()
  junk_a[~mask], junk_c[~mask] = 50.0, -7.0
  np.testing.assert_allclose(contrastive_loss(junk_a, junk_c, mask, 0.5), got, **TOL)
  # ... while a real crystal's negatives do count.
  unmasked = np.asarray(contrastive_loss(anchors, candidates, np.ones(6, bool), 0.5))
  assert np.abs(unmasked - got)[mask].max() > 1e-4
  # A single real crystal has no negatives: its term is 0, with finite gradients.
  single = np.array([False, True, False, False, False, False])
  np.testing.assert_array_equal(contrastive_loss(anchors, candidates, single), 0.0)
  grads = jax.grad(lambda a, c: jnp.sum(contrastive_loss(a, c, mask)), argnums=(0, 1))(
      anchors, candidates)
  chex.assert_tree_all_finite(grads)
  np.testing.assert_array_equal(grads[0][~mask], 0.0)


# --------------------------------------------------------------------------------------------
# The decoder


@pytest.fixture(scope="module")
def small():
  """A small decoder and inputs: 4 crystals, the last padding (no atoms)."""
  decoder = Mat2SpecDecoder(l_y=L_Y, latent_dim=4, num_components=3, emb_size=8,
                            feature_hidden=(16,), label_hidden=(16,), mixture_hidden=8,
                            decoder_hidden=16, projection_dim=8, dropout=0.2)
  rng = np.random.default_rng(3)
  context = jnp.asarray(rng.normal(size=(4, 10)), jnp.float32)
  mask = jnp.array([[True, True, False], [True, False, False], [True, True, True],
                    [False, False, False]])
  atoms = jnp.asarray(rng.normal(size=(4, 3, 5)), jnp.float32) * mask[..., None]
  y = jnp.asarray(rng.dirichlet(np.ones(L_Y), 4), jnp.float32)
  variables = decoder.init(jax.random.key(0), context, AtomStates.from_dense(atoms, mask), None,
                           train=False)

  @functools.partial(jax.jit, static_argnames="train")
  def apply(context, atoms, y, key, *, train):
    return decoder.apply(variables, context, AtomStates.from_dense(atoms, mask), y, train=train,
                         rngs={"dropout": key}, mutable=[AUX_LOSS])

  return decoder, variables, apply, context, atoms, mask, y


def test_aux_collection_is_the_train_steps():
  assert AUX_LOSS == train_steps.AUX_LOSS


def test_parameters_of_both_branches_exist_after_init(small):
  _, variables, *_ = small
  params = variables["params"]
  assert {"energy_embeddings", "feature_mu", "feature_logvar", "feature_mixture", "label_mu",
          "label_logvar", "label_mixture", "projection", "decoder_hidden",
          "decoder_out"} <= set(params)
  chex.assert_shape(params["energy_embeddings"], (L_Y, 8))
  chex.assert_shape(params["feature_mu"]["kernel"], (16, 3 * 4))


def test_evaluation_is_deterministic_label_free_and_sows_nothing(small):
  _, _, apply, context, atoms, _, y = small
  out, sown = apply(context, atoms, None, jax.random.key(1), train=False)
  chex.assert_shape(out, (4, L_Y))
  chex.assert_type(out, jnp.float32)
  chex.assert_tree_all_finite(out)
  assert not sown.get(AUX_LOSS)
  other_y = jnp.asarray(np.random.default_rng(9).dirichlet(np.ones(L_Y), 4), jnp.float32)
  for labels_in, key in ((None, 2), (y, 3), (other_y, 4)):
    again, _ = apply(context, atoms, labels_in, jax.random.key(key), train=False)
    np.testing.assert_array_equal(again, out)
  # Padding crystal's inputs do not reach the real crystals.
  junk = context.at[3].set(100.0)
  np.testing.assert_array_equal(apply(junk, atoms, None, jax.random.key(1), train=False)[0][:3],
                                out[:3])


def test_training_samples_and_sows_the_three_terms(small):
  decoder, _, apply, context, atoms, mask, y = small
  real = np.asarray(mask.any(-1))
  out, sown = apply(context, atoms, y, jax.random.key(1), train=True)
  terms = {name: value[0] for name, value in sown[AUX_LOSS].items()}
  assert set(terms) == set(AUX_TERMS)
  for name, value in terms.items():
    chex.assert_shape(value, (4,))
    chex.assert_type(value, jnp.float32)
    chex.assert_tree_all_finite(value)
  assert (np.asarray(terms["latent_kl"]) > 0).all() and (np.asarray(terms["label_dos"]) > 0).all()
  assert float(terms["contrastive"][3]) == 0.0 and np.abs(terms["contrastive"][:3]).min() > 0
  # Training samples the latents: other keys, other outputs; evaluation uses the means.
  other, _ = apply(context, atoms, y, jax.random.key(2), train=True)
  mean, _ = apply(context, atoms, None, jax.random.key(1), train=False)
  assert np.abs(np.asarray(other) - out).max() > 1e-5
  assert np.abs(np.asarray(mean) - out).max() > 1e-5
  # The label branch reads the labels.
  shifted = jnp.roll(y, 3, axis=-1)
  _, sown_shifted = apply(context, atoms, shifted, jax.random.key(1), train=True)
  assert np.abs(sown_shifted[AUX_LOSS]["label_dos"][0] - terms["label_dos"])[real].max() > 1e-6
  # A padding crystal's context and label change neither the real outputs nor their terms.
  junk_out, junk_sown = apply(context.at[3].set(-40.0), atoms, y.at[3].set(0.5),
                              jax.random.key(1), train=True)
  np.testing.assert_allclose(junk_out[:3], out[:3], **TOL)
  for name in AUX_TERMS:
    np.testing.assert_allclose(junk_sown[AUX_LOSS][name][0][:3], terms[name][:3], rtol=1e-5,
                               atol=1e-5, err_msg=name)
  with pytest.raises(ValueError, match="y_teacher"):
    decoder.apply(small[1], context, AtomStates.from_dense(atoms, mask), None, train=True,
                  rngs={"dropout": jax.random.key(0)})


# --------------------------------------------------------------------------------------------
# The baseline config


@pytest.mark.long
def test_config_builds_and_takes_a_train_step(train_one_step):
  config = cli.load_config_file(os.path.join(REPO, "configs", "ablations", "mat2spec.py"))
  model = create_model(config)
  assert "mat2spec" in DECODERS and type(model.decoder) is Mat2SpecDecoder
  assert isinstance(model.encoder, GATGNNEncoder)
  decoder = model.decoder
  assert (decoder.l_y, decoder.latent_dim, decoder.num_components, decoder.emb_size) == (
      51, 128, 10, 512)
  assert (decoder.label_weight, decoder.kl_weight, decoder.contrastive_weight) == (1.0, 1.1, 0.1)
  assert decoder.dropout == 0.5 and decoder.loss == "kl" and decoder.output_activation == "softmax"
  t = config.train
  assert t.batch_size == 8 and t.schedule == "exponential"
  np.testing.assert_allclose(t.decay_rate ** 50, 0.5)

  m = config.model
  m.d_model, m.num_heads, m.encoder_layers = 16, 2, 1
  m.mat2spec_latent_dim, m.mat2spec_num_components, m.mat2spec_emb_size = 8, 3, 16
  t.weight_decay = 0.0             # so a parameter moves only if a loss term reaches it
  trainer, state, batch, moved = train_one_step(config)
  assert min(jax.tree.leaves(moved["decoder"]["label_mu"])) > 0   # the sown terms train
  # Prediction never reads the labels.
  predicted = np.asarray(trainer.p_predict_step(state.params, batch))
  other = batch._replace(y=np.roll(np.asarray(batch.y), 5, axis=-1))
  np.testing.assert_array_equal(trainer.p_predict_step(state.params, other), predicted)
  real = np.asarray(batch.graph_mask[0])
  np.testing.assert_allclose(predicted[0][real].sum(-1), 1.0, rtol=1e-5)
