"""Tests for xtal2dos_jax.input_pipeline.labels."""
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from configs import smoke
from xtal2dos_jax.core.errors import InputError
from xtal2dos_jax.input_pipeline import labels
from xtal2dos_jax.training.config_check import validate

L_Y = 51


def _labels(seed=0, n=20, scale=100.0):
  rng = np.random.default_rng(seed)
  y = (rng.gamma(2.0, 1.0, size=(n, L_Y)) * scale).astype(np.float32)
  y[:, 0] = 0.0  # a constant position (phDoS at 0 cm^-1)
  y[:, 1] = 3.5  # another constant position, non-zero
  return y


class LabelScalerTest(parameterized.TestCase):

  @parameterized.parameters(*labels.SCALINGS)
  def test_round_trip_numpy(self, name):
    y = _labels()
    scaler = labels.LabelScaler.fit(name, y[:15])
    y_scaled, scale = scaler.transform(y)
    assert isinstance(y_scaled, np.ndarray) and isinstance(scale, np.ndarray)
    chex.assert_shape(y_scaled, y.shape)
    chex.assert_shape(scale, (y.shape[0],))
    assert y_scaled.dtype == np.float32
    np.testing.assert_allclose(scaler.inverse(y_scaled, scale), y, rtol=1e-6, atol=1e-4)
    chex.assert_tree_all_finite(y_scaled)

  @parameterized.parameters(*labels.SCALINGS)
  def test_round_trip_jnp_and_jit(self, name):
    y = _labels(1)
    scaler = labels.LabelScaler.fit(name, y)
    y_scaled, scale = scaler.transform(jnp.asarray(y))
    assert isinstance(y_scaled, jax.Array)
    chex.assert_type(y_scaled, jnp.float32)
    inv = jax.jit(scaler.inverse)(y_scaled, scale)
    chex.assert_type(inv, jnp.float32)
    np.testing.assert_allclose(inv, y, rtol=1e-5, atol=1e-3)
    # numpy and jnp paths agree.
    y_np, scale_np = scaler.transform(y)
    np.testing.assert_allclose(y_scaled, y_np, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(scale, scale_np, rtol=1e-6)

  def test_scaled_values(self):
    y = _labels(2)
    ys, s = labels.LabelScaler.fit("normalized_sum", y).transform(y)
    np.testing.assert_allclose(ys.sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(s, y.sum(-1), rtol=1e-6)
    ys, s = labels.LabelScaler.fit("normalized_max", y).transform(y)
    np.testing.assert_allclose(ys.max(-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(s, y.max(-1))
    train = y[:12]
    scaler = labels.LabelScaler.fit("standardized", train)
    ys, s = scaler.transform(train)
    np.testing.assert_array_equal(s, 1.0)
    np.testing.assert_allclose(ys[:, 2:].mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(ys[:, 2:].std(0), 1.0, rtol=1e-4)
    # Statistics come from the training rows only.
    np.testing.assert_allclose(scaler.mean, train.astype(np.float64).mean(0), rtol=1e-12)

  def test_constant_positions_do_not_explode(self):
    y = _labels(3)
    scaler = labels.LabelScaler.fit("standardized", y)
    np.testing.assert_array_equal(scaler.std[:2], 1.0)
    test = y.copy()
    test[:, 0] = 1e-3  # a test crystal differs slightly at a constant position
    ys, _ = scaler.transform(test)
    assert np.all(np.abs(ys[:, :2]) < 1.0)

  def test_zero_row_is_safe(self):
    y = _labels(4, n=3)
    y[1] = 0.0
    for name in ("normalized_sum", "normalized_max"):
      scaler = labels.LabelScaler.fit(name, y)
      ys, s = scaler.transform(y)
      chex.assert_tree_all_finite(ys)
      np.testing.assert_allclose(scaler.inverse(ys, s), y, rtol=1e-6)

  @parameterized.parameters(*labels.SCALINGS)
  def test_json_round_trip(self, name):
    y = _labels(5)
    scaler = labels.LabelScaler.fit(name, y)
    restored = labels.LabelScaler.from_dict(json.loads(json.dumps(scaler.to_dict())))
    assert restored.name == name
    assert restored.output_activation == scaler.output_activation
    a, sa = scaler.transform(y)
    b, sb = restored.transform(y)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(sa, sb)

  def test_output_activation(self):
    y = _labels()
    got = {n: labels.LabelScaler.fit(n, y).output_activation for n in labels.SCALINGS}
    assert got == {"normalized_sum": "softmax", "normalized_max": "softplus",
                   "standardized": "identity"}

  def test_errors(self):
    config = smoke.get_config()
    config.data.scaling = "minmax"
    with pytest.raises(InputError, match=r"^config\.data\.scaling: unknown scaling 'minmax'"):
      validate(config)
    with pytest.raises(InputError, match="label_stats"):
      labels.LabelScaler.from_dict({"name": "standardized", "mean": [0.0]})
    with pytest.raises(InputError, match="config.data.scaling"):
      labels.LabelScaler.from_dict({"name": "bogus"})
    scaler = labels.LabelScaler.fit("standardized", _labels())
    with pytest.raises(InputError, match="label length"):
      scaler.transform(np.ones((2, L_Y + 1), np.float32))


def _reference_metric_predictions(name, y_true, pred_original, mean=None, std=None):
  """The public reference's `metrics()` in numpy: what the normalised-scale and the
  original-scale metrics compare, from an original-scale prediction."""
  y_true = y_true.astype(np.float64)
  pred = pred_original.astype(np.float64)
  if name == "standardized":
    normalized = (pred - mean) / std
    original = normalized * std + mean
    original[original < 0] = 0
    return normalized, original
  if name == "normalized_max":
    label_max = np.max(y_true, axis=1, keepdims=True)
    normalized = pred / np.max(pred, axis=1, keepdims=True)
    return normalized, normalized * label_max
  label_sum = np.sum(y_true, axis=1, keepdims=True)
  normalized = pred / np.sum(pred, axis=1, keepdims=True)
  return normalized, normalized * label_sum


@pytest.mark.parametrize("name", labels.SCALINGS)
@pytest.mark.parametrize("xp", [np, jnp])
def test_metric_predictions_match_the_reference_per_mode(name, xp):
  y = _labels(seed=3)
  scaler = labels.LabelScaler.fit(name, y[:15])
  rng = np.random.default_rng(4)
  if name == "standardized":
    pred_scaled = rng.normal(scale=2.0, size=y.shape).astype(np.float32)  # some < 0 in DoS
  else:
    pred_scaled = rng.gamma(2.0, 0.3, size=y.shape).astype(np.float32)    # max / sum != 1
  _, scale = scaler.transform(y)
  got_n, got_o = scaler.metric_predictions(xp.asarray(pred_scaled), xp.asarray(scale))
  pred_original = scaler.inverse(pred_scaled, scale)
  ref_n, ref_o = _reference_metric_predictions(name, y, pred_original, scaler.mean, scaler.std)
  chex.assert_trees_all_close((np.asarray(got_n), np.asarray(got_o)),
                              (ref_n.astype(np.float32), ref_o.astype(np.float32)),
                              rtol=2e-5, atol=1e-4)
  if name == "standardized":
    assert np.any(pred_original < 0) and np.all(np.asarray(got_o) >= 0)
  else:
    assert not np.allclose(np.asarray(got_n), pred_scaled)  # renormalised, not passed through
