"""Tests for xtal2dos_jax.objectives.losses."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from configs import smoke
from xtal2dos_jax.core.errors import InputError
from xtal2dos_jax.objectives import losses
from xtal2dos_jax.training.config_check import validate

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

  def test_kl_of_probabilities_is_finite_for_a_zero_prediction(self):
    y = np.eye(L_Y, dtype=np.float32)[:1]
    val = float(losses.kl_divergence(y, np.zeros_like(y))[0])
    np.testing.assert_allclose(val, np.log(1 + 1e-10) - np.log(1e-30), rtol=1e-5)

  @chex.variants(with_jit=True, without_jit=True)
  def test_kl_from_logits_matches_numpy(self):
    rng = np.random.default_rng(11)
    logits = rng.normal(scale=3.0, size=(6, L_Y)).astype(np.float32)
    y = _random_dos(rng, 6)
    y[0, :10] = 0.0  # zero target bins contribute exactly 0
    y[0] /= y[0].sum()
    z = logits.astype(np.float64)
    log_q = z - z.max(-1, keepdims=True)
    log_q -= np.log(np.exp(log_q).sum(-1, keepdims=True))
    y64 = y.astype(np.float64)
    ref = np.sum(np.where(y64 > 0, y64 * (np.log(y64 + 1e-10) - log_q), 0.0), -1)
    fn = losses.loss_on_raw_outputs("kl", "softmax")
    got = self.variant(fn)(jnp.asarray(y), jnp.asarray(logits))
    chex.assert_shape(got, (6,))
    chex.assert_trees_all_close(got, ref.astype(np.float32), rtol=1e-5, atol=1e-6)

  def test_kl_gradient_is_exact_for_tiny_predicted_probabilities(self):
    """d KL / d logits = softmax(logits) - y for targets summing to 1, however small the
    predicted probability: a bin the model gives ~1e-12 is pulled up with its full
    target weight (log(softmax + eps) would damp it by p / (p + eps))."""
    y = np.full((1, L_Y), 1.0 / L_Y, np.float32)
    logits = np.zeros((1, L_Y), np.float32)
    logits[0, 7] = -28.0  # p_7 ~ 7e-13
    grad = jax.grad(lambda z: jnp.sum(losses.loss_on_raw_outputs("kl", "softmax")(y, z)))(
        jnp.asarray(logits))
    z = logits.astype(np.float64)
    p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    chex.assert_trees_all_close(grad, (p - y).astype(np.float32), atol=1e-7)
    np.testing.assert_allclose(float(grad[0, 7]), -1.0 / L_Y, rtol=1e-4)

  @parameterized.parameters(("wd", "softmax"), ("mae", "softplus"), ("mse", "identity"),
                            ("mae", "softmax"))
  def test_loss_on_raw_outputs_applies_the_activation(self, name, activation):
    rng = np.random.default_rng(12)
    raw = rng.normal(size=(4, L_Y)).astype(np.float32)
    y = _random_dos(rng, 4)
    act = {"softmax": lambda x: np.exp(x) / np.exp(x).sum(-1, keepdims=True),
           "softplus": lambda x: np.log1p(np.exp(x)), "identity": lambda x: x}[activation]
    p = act(raw.astype(np.float64))
    ref = {"wd": lambda: np.abs(np.cumsum(y, -1) - np.cumsum(p, -1)).sum(-1),
           "mae": lambda: np.abs(y - p).mean(-1), "mse": lambda: ((y - p) ** 2).mean(-1)}[name]()
    got = losses.loss_on_raw_outputs(name, activation)(jnp.asarray(y), jnp.asarray(raw))
    chex.assert_trees_all_close(got, ref.astype(np.float32), rtol=1e-5, atol=1e-7)

  def test_loss_scaling_pairs(self):
    def config(loss, scaling):
      c = smoke.get_config()
      c.train.loss, c.data.scaling = loss, scaling
      return c
    for loss in NAMES:
      validate(config(loss, "normalized_sum"))
    for scaling in ("normalized_max", "standardized"):
      for loss in ("mae", "mse"):
        validate(config(loss, scaling))
      for loss in ("kl", "wd"):
        with pytest.raises(InputError) as e:
          validate(config(loss, scaling))
        assert str(e.value) == (
            f"config.train.loss: loss '{loss}' needs config.data.scaling='normalized_sum', "
            f"got '{scaling}'; with '{scaling}' use one of mae, mse")
    with pytest.raises(InputError, match="unknown loss 'x'"):
      validate(config("x", "normalized_sum"))

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

  def test_get_loss(self):
    assert losses.get_loss("kl") is losses.kl_divergence
    assert set(losses.LOSSES) == set(NAMES)
    config = smoke.get_config()
    config.train.loss = "x"
    with pytest.raises(InputError) as e:
      validate(config)
    assert str(e.value) == ("config.train.loss: unknown loss 'x'; "
                            "expected one of kl, wd, mae, mse")
