"""Tests for xtal2dos_jax.losses."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from xtal2dos_jax import losses
from xtal2dos_jax.errors import InputError

L_Y = 51
NAMES = ("kl", "wd", "mae", "mse")


def _random_dos(rng, g=6, l_y=L_Y):
  y = rng.gamma(1.0, 1.0, size=(g, l_y)).astype(np.float32)
  return y / y.sum(-1, keepdims=True)


def _hard_cases():
  """(name, y, y_hat) pairs that break naive implementations."""
  rng = np.random.default_rng(0)
  y = _random_dos(rng, 4)
  onehot = np.eye(L_Y, dtype=np.float32)[[0, 7, 25, 50]]
  logits = np.where(rng.random((4, L_Y)) < 0.5, -1e4, 1e4).astype(np.float32)
  logits[:, 3] = 1e4
  return [
      ("zero_pred", y, np.zeros_like(y)),
      ("onehot_target", onehot, y),
      ("onehot_both", onehot, onehot[::-1].copy()),
      ("extreme_logits", y, np.asarray(jax.nn.softmax(jnp.asarray(logits), -1))),
      ("zero_target", np.zeros_like(y), y),
  ]


def _mean_losses(t, p, m):
  """float[4]: masked mean over crystals of each loss in NAMES."""
  out = []
  for name in NAMES:
    total, count = losses.masked_loss_sum(losses.get_loss(name)(t, p), m)
    out.append(total / count)
  return jnp.stack(out)


class LossTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_shapes_and_types(self):
    rng = np.random.default_rng(1)
    y, y_hat = _random_dos(rng), _random_dos(rng)
    for name in NAMES:
      out = self.variant(losses.get_loss(name))(jnp.asarray(y), jnp.asarray(y_hat))
      chex.assert_shape(out, (6,))
      chex.assert_type(out, jnp.float32)
      chex.assert_tree_all_finite(out)

  @parameterized.parameters(*NAMES)
  def test_finite_values_and_gradients_on_hard_inputs(self, name):
    fn = losses.get_loss(name)
    cases = _hard_cases()
    # All cases in one batch: losses are per crystal, so rows do not interact.
    y = jnp.asarray(np.concatenate([c[1] for c in cases]))
    y_hat = jnp.asarray(np.concatenate([c[2] for c in cases]))
    val, (grad_tgt, grad_pred) = jax.jit(
        jax.value_and_grad(lambda t, p: jnp.sum(fn(t, p)), argnums=(0, 1)))(y, y_hat)
    val = fn(y, y_hat)
    for i, (case, _, _) in enumerate(cases):
      rows = slice(4 * i, 4 * i + 4)
      assert np.all(np.isfinite(val[rows])), (name, case)
      assert np.all(np.isfinite(grad_pred[rows])), (name, case)
      assert np.all(np.isfinite(grad_tgt[rows])), (name, case)

  @parameterized.parameters(*NAMES)
  def test_finite_gradient_through_softmax_of_extreme_logits(self, name):
    fn = losses.get_loss(name)
    rng = np.random.default_rng(2)
    y = jnp.asarray(np.eye(L_Y, dtype=np.float32)[[1, 30]])
    logits = rng.choice([-1e4, 1e4], size=(2, L_Y)).astype(np.float32)

    def f(lg):
      return jnp.sum(fn(y, jax.nn.softmax(lg, axis=-1)))

    val, grad = jax.jit(jax.value_and_grad(f))(logits)
    assert np.isfinite(val)
    assert np.all(np.isfinite(grad))

  def test_kl_zero_iff_equal(self):
    rng = np.random.default_rng(3)
    y = _random_dos(rng, 8)
    np.testing.assert_allclose(losses.kl_divergence(y, y), 0.0, atol=1e-6)
    onehot = np.eye(L_Y, dtype=np.float32)[:3]
    np.testing.assert_allclose(losses.kl_divergence(onehot, onehot), 0.0, atol=1e-6)
    other = _random_dos(rng, 8)
    assert np.all(np.asarray(losses.kl_divergence(y, other)) > 0)
    # Reference value: plain KL when nothing is near 0.
    ref = np.sum(y.astype(np.float64) * np.log(y.astype(np.float64) / other), -1)
    np.testing.assert_allclose(losses.kl_divergence(y, other), ref, rtol=1e-4)

  def test_kl_eps_bounds_value_for_zero_prediction(self):
    y = np.eye(L_Y, dtype=np.float32)[:1]
    val = float(losses.kl_divergence(y, np.zeros_like(y), eps=1e-8)[0])
    np.testing.assert_allclose(val, np.log((1 + 1e-8) / 1e-8), rtol=1e-5)

  def test_wasserstein_matches_explicit_cumsum(self):
    rng = np.random.default_rng(4)
    y = rng.random((5, 17)).astype(np.float32)
    y_hat = rng.random((5, 17)).astype(np.float32)
    ref = np.zeros(5)
    for i in range(5):
      cy = cy_hat = 0.0
      for t in range(17):
        cy += float(y[i, t])
        cy_hat += float(y_hat[i, t])
        ref[i] += abs(cy - cy_hat)
    np.testing.assert_allclose(losses.wasserstein_loss(y, y_hat), ref, rtol=1e-5)
    np.testing.assert_allclose(losses.wasserstein_loss(y, y), 0.0, atol=1e-6)

  def test_mae_mse(self):
    rng = np.random.default_rng(5)
    y, y_hat = rng.normal(size=(2, 4, 9)).astype(np.float32)
    np.testing.assert_allclose(losses.mae_loss(y, y_hat), np.abs(y - y_hat).mean(-1), rtol=1e-6)
    np.testing.assert_allclose(losses.mse_loss(y, y_hat), ((y - y_hat) ** 2).mean(-1), rtol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_masked_sum_ignores_padding(self):
    rng = np.random.default_rng(6)
    y, y_hat = _random_dos(rng, 5), _random_dos(rng, 5)
    mask = np.array([True, True, True, False, False])
    # Arbitrary garbage in the padding rows.
    y_pad, y_hat_pad = y.copy(), y_hat.copy()
    y_pad[3:] = rng.normal(size=(2, L_Y)) * 1e3
    y_hat_pad[3:] = -7.0

    got = self.variant(_mean_losses)(y_pad, y_hat_pad, mask)
    y64, p64 = y[:3].astype(np.float64), y_hat[:3].astype(np.float64)
    ref = [
        np.mean(np.sum(y64 * (np.log(y64 + 1e-8) - np.log(p64 + 1e-8)), -1)),
        np.mean(np.sum(np.abs(np.cumsum(y64, -1) - np.cumsum(p64, -1)), -1)),
        np.mean(np.abs(y64 - p64)),
        np.mean((y64 - p64) ** 2),
    ]
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    total, count = losses.masked_loss_sum(jnp.asarray(got), jnp.array([1, 1, 0, 0], bool))
    chex.assert_shape((total, count), ())
    assert float(count) == 2.0

  def test_masked_gradients_ignore_padding(self):
    """Padding values change no gradient on real rows; padding rows get exactly 0."""
    rng = np.random.default_rng(7)
    y, y_hat = _random_dos(rng, 5), _random_dos(rng, 5)
    mask = np.array([True, True, True, False, False])
    y_pad, y_hat_pad = y.copy(), y_hat.copy()
    y_pad[3:] = rng.normal(size=(2, L_Y)) * 1e3
    y_hat_pad[3:] = -7.0
    jac_fn = jax.jit(jax.jacrev(_mean_losses, argnums=1))
    jac = jac_fn(y_pad, y_hat_pad, mask)
    jac_clean = jac_fn(y, y_hat, mask)
    chex.assert_shape(jac, (4, 5, L_Y))
    chex.assert_tree_all_finite(jac)
    np.testing.assert_allclose(jac[:, :3], jac_clean[:, :3], rtol=1e-6)
    np.testing.assert_array_equal(jac[:, 3:], 0.0)
    # And they equal the gradient of the plain mean over the real rows (MSE, closed form).
    np.testing.assert_allclose(jac[3, :3], -2 * (y[:3] - y_hat[:3]) / (3 * L_Y),
                               rtol=1e-5, atol=1e-9)

  def test_masked_sum_padding_inf_does_not_leak(self):
    per = jnp.array([1.0, 2.0, jnp.inf])
    total, count = losses.masked_loss_sum(per, jnp.array([True, True, False]))
    assert float(total) == 3.0 and float(count) == 2.0

  def test_get_loss(self):
    assert losses.get_loss("kl") is losses.kl_divergence
    assert set(losses.LOSSES) == set(NAMES)
    with pytest.raises(InputError) as e:
      losses.get_loss("x")
    assert str(e.value) == ("config.train.loss: unknown loss 'x'; "
                            "expected one of kl, wd, mae, mse")
