"""Tests for xtal2dos_jax.objectives.metrics against independent float64 implementations."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats
from absl.testing import parameterized

from xtal2dos_jax.objectives import metrics

L_Y = 51
_batch_stats = jax.jit(metrics.batch_stats)  # one compile per shape, shared by tests


def _r2_formula(y, y_hat):
  """1 - sum_t SSE_t / sum_t SST_t, written out (the brief's formula)."""
  y, y_hat = np.asarray(y, np.float64), np.asarray(y_hat, np.float64)
  sse = ((y - y_hat) ** 2).sum(0)
  sst = ((y - y.mean(0)) ** 2).sum(0)
  return 1.0 - sse.sum() / sst.sum()


def _r2_sklearn(y, y_hat):
  """scikit-learn r2_score(multioutput='variance_weighted', force_finite=True), transcribed."""
  y, y_hat = np.asarray(y, np.float64), np.asarray(y_hat, np.float64)
  numerator = ((y - y_hat) ** 2).sum(0)
  denominator = ((y - np.average(y, axis=0)) ** 2).sum(0)
  nonzero_den = denominator != 0
  nonzero_num = numerator != 0
  scores = np.ones(y.shape[1])
  valid = nonzero_den & nonzero_num
  scores[valid] = 1 - numerator[valid] / denominator[valid]
  scores[nonzero_num & ~nonzero_den] = 0.0
  weights = denominator if np.any(nonzero_den) else None
  return np.average(scores, weights=weights)


def _wd_scipy(y, y_hat):
  grid = np.arange(y.shape[1])
  return np.array([scipy.stats.wasserstein_distance(grid, grid, a, b)
                   for a, b in zip(np.asarray(y, np.float64), np.asarray(y_hat, np.float64))])


def _data(seed, n=40, scale=1.0, normalized=False, constant_column=False):
  """Realistic-looking DoS: smooth bumps on the grid, predictions = perturbed targets."""
  rng = np.random.default_rng(seed)
  t = np.arange(L_Y)
  centres = rng.uniform(5, 45, size=(n, 3, 1))
  widths = rng.uniform(2, 8, size=(n, 3, 1))
  amps = rng.uniform(0.2, 1.0, size=(n, 3, 1))
  y = (amps * np.exp(-0.5 * ((t - centres) / widths) ** 2)).sum(1)
  y_hat = np.abs(y * rng.lognormal(0.0, 0.3, size=y.shape) + 0.05 * rng.random(y.shape))
  if normalized:
    y /= y.sum(-1, keepdims=True)
    y_hat /= y_hat.sum(-1, keepdims=True)
  else:
    y *= scale
    y_hat *= scale
  if constant_column:
    y[:, 0] = 0.0  # the targets never vary here, the predictions do
  return y.astype(np.float32), y_hat.astype(np.float32)


def _pad(y, y_hat, g, rng):
  """Pad to g crystals with garbage and a mask."""
  n = y.shape[0]
  garbage = rng.normal(size=(2, g - n, L_Y)).astype(np.float32) * 1e4
  mask = np.arange(g) < n
  return (np.concatenate([y, garbage[0]]), np.concatenate([y_hat, garbage[1]]), mask)


class MetricsTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ("normalized", dict(normalized=True)),
      ("original_100", dict(scale=100.0)),
      ("original_1e3", dict(scale=1e3)),
  )
  def test_compute_metrics_vs_reference(self, kw):
    y, y_hat = _data(0, **kw)
    got = metrics.compute_metrics(y, y_hat, bin_width=20.0)
    y64, p64 = y.astype(np.float64), y_hat.astype(np.float64)
    np.testing.assert_allclose(got["r2"], _r2_formula(y64, p64), rtol=1e-9)
    np.testing.assert_allclose(got["r2"], _r2_sklearn(y64, p64), rtol=1e-9)
    assert 0.3 < got["r2"] < 0.99  # a non-trivial case
    np.testing.assert_allclose(got["mae"], np.abs(y64 - p64).mean(), rtol=1e-9)
    np.testing.assert_allclose(got["mse"], ((y64 - p64) ** 2).mean(), rtol=1e-9)
    np.testing.assert_allclose(got["rmse"], np.sqrt(((y64 - p64) ** 2).mean()), rtol=1e-9)
    wd = _wd_scipy(y64, p64).mean()
    np.testing.assert_allclose(got["wd"], 0.0625 * wd, rtol=1e-9)
    np.testing.assert_allclose(got["wd_physical"], 20.0 * wd, rtol=1e-9)
    assert got["count"] == y.shape[0]

  @parameterized.named_parameters(
      ("normalized", dict(normalized=True), None),
      ("original_100", dict(scale=100.0), None),
      ("original_100_shift", dict(scale=100.0), "mean"),
  )
  def test_batched_float32_accuracy(self, kw, shift):
    """Padded float32 batches of realistic magnitude meet 1e-5 relative accuracy."""
    y, y_hat = _data(1, n=300, **kw)
    shift = y.mean(0) if shift == "mean" else None
    rng = np.random.default_rng(1)
    fn = _batch_stats
    stats = [fn(*_pad(y[a:b], y_hat[a:b], 128, rng), shift=shift)
             for a, b in [(0, 100), (100, 228), (228, 300)]]
    got = metrics.finalize(metrics.sum_stats(stats), bin_width=0.0625)
    y64, p64 = y.astype(np.float64), y_hat.astype(np.float64)
    wd = _wd_scipy(y64, p64).mean()
    np.testing.assert_allclose(got["r2"], _r2_sklearn(y64, p64), rtol=1e-5)
    np.testing.assert_allclose(got["mae"], np.abs(y64 - p64).mean(), rtol=1e-5)
    np.testing.assert_allclose(got["mse"], ((y64 - p64) ** 2).mean(), rtol=1e-5)
    np.testing.assert_allclose(got["rmse"], np.sqrt(((y64 - p64) ** 2).mean()), rtol=1e-5)
    np.testing.assert_allclose(got["wd"], 0.0625 * wd, rtol=1e-5)
    np.testing.assert_allclose(got["wd_physical"], 0.0625 * wd, rtol=1e-5)

  @parameterized.parameters(True, False)
  def test_constant_position_weighted_like_sklearn(self, jitted_batches):
    """A position where every target is equal has SST = 0: sklearn gives it zero weight
    (its SSE is left out), unlike the bare formula."""
    y, y_hat = _data(10, n=60, scale=100.0, constant_column=True)
    y64, p64 = y.astype(np.float64), y_hat.astype(np.float64)
    if jitted_batches:
      fn = _batch_stats
      got = metrics.finalize(metrics.sum_stats([fn(y[:25], y_hat[:25]), fn(y[25:], y_hat[25:])]))
    else:
      got = metrics.compute_metrics(y, y_hat)
    np.testing.assert_allclose(got["r2"], _r2_sklearn(y64, p64), rtol=1e-5)
    assert abs(_r2_sklearn(y64, p64) - _r2_formula(y64, p64)) > 1e-3

  def test_additive_over_uneven_padded_batches(self):
    y, y_hat = _data(2, n=50, normalized=True)
    rng = np.random.default_rng(2)
    fn = _batch_stats
    one = metrics.finalize(fn(*_pad(y, y_hat, 64, rng)))
    three = metrics.finalize(metrics.sum_stats(
        [fn(*_pad(y[a:b], y_hat[a:b], 32, rng)) for a, b in [(0, 7), (7, 32), (32, 50)]]))
    for k in ("r2", "mae", "mse", "rmse", "wd", "wd_physical"):
      np.testing.assert_allclose(three[k], one[k], rtol=1e-5, err_msg=k)
    assert three["count"] == one["count"] == 50

  def test_psum_over_devices_axis(self):
    """Stacked per-device batches summed with lax.psum give the one-batch totals."""
    y, y_hat = _data(3, n=24, normalized=True)
    rng = np.random.default_rng(3)
    parts = [_pad(y[a:b], y_hat[a:b], 16, rng) for a, b in [(0, 5), (5, 16), (16, 24), (24, 24)]]
    ys, ps, ms = (np.stack(x) for x in zip(*parts))

    def per_device(a, b, m):
      return jax.lax.psum(metrics.batch_stats(a, b, m), "devices")

    summed = jax.vmap(per_device, axis_name="devices")(ys, ps, ms)
    got = metrics.finalize(jax.tree.map(lambda x: x[0], summed))
    ref = metrics.compute_metrics(y, y_hat)
    for k in ("r2", "mae", "mse", "wd"):
      np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, err_msg=k)

  def test_padding_garbage_changes_nothing(self):
    y, y_hat = _data(4, n=10, scale=50.0)
    y_pad, y_hat_pad, mask = _pad(y, y_hat, 16, np.random.default_rng(4))
    y_pad[12:] = np.inf  # even non-finite padding does not leak
    stats = _batch_stats(y_pad, y_hat_pad, mask)
    chex.assert_tree_all_finite(stats)
    ref = _batch_stats(y, y_hat)
    chex.assert_trees_all_close(stats, ref, rtol=1e-6)

  def test_zero_sum_rows_and_negative_predictions_are_safe(self):
    y, y_hat = _data(5, n=6, normalized=True)
    y[2] = 0.0
    y_hat[3] = 0.0
    y_hat[4, :5] = -0.01
    stats = _batch_stats(y, y_hat)
    chex.assert_tree_all_finite(stats)
    got = metrics.compute_metrics(y, y_hat)
    assert all(np.isfinite(v) for v in got.values())
    # Rows with a valid (non-negative, non-zero) pair still match scipy.
    ok = [0, 1, 5]
    per = np.asarray(metrics._wd_per_crystal(np, y[ok].astype(np.float64), y_hat[ok]))
    np.testing.assert_allclose(per, _wd_scipy(y[ok], y_hat[ok]), rtol=1e-5)

  def test_batch_stats_shapes_and_types(self):
    y, y_hat = _data(6, n=8, normalized=True)
    stats = _batch_stats(y, y_hat, np.ones(8, bool))
    assert set(stats) == set(metrics.STAT_KEYS)
    for k in ("count", "sum_abs_err", "sum_sq_err", "sum_wd"):
      chex.assert_shape(stats[k], ())
    for k in ("sum_y", "sum_y2", "sse"):
      chex.assert_shape(stats[k], (L_Y,))
    chex.assert_type(list(stats.values()), jnp.float32)

  def test_perfect_and_mean_predictions(self):
    y, _ = _data(7, n=30, normalized=True)
    perfect = metrics.compute_metrics(y, y)
    assert perfect["r2"] == 1.0 and perfect["mae"] == 0.0 and perfect["wd"] == 0.0
    mean_pred = np.broadcast_to(y.astype(np.float64).mean(0), y.shape)
    np.testing.assert_allclose(metrics.compute_metrics(y, mean_pred)["r2"], 0.0, atol=1e-12)

  def test_constant_targets_follow_sklearn(self):
    y = np.full((4, 5), 2.0, np.float32)
    assert metrics.compute_metrics(y, y)["r2"] == _r2_sklearn(y, y) == 1.0
    y_hat = y.copy()
    y_hat[:, :2] += 1.0
    np.testing.assert_allclose(metrics.compute_metrics(y, y_hat)["r2"], _r2_sklearn(y, y_hat))

  def test_empty_split_is_nan(self):
    y, y_hat = _data(8, n=3, normalized=True)
    got = metrics.finalize(_batch_stats(y, y_hat, np.zeros(3, bool)))
    assert got["count"] == 0 and np.isnan(got["r2"]) and np.isnan(got["wd"])
    assert np.isnan(got["rmse"])

  def test_rmse_is_the_root_of_the_mean_over_crystals_and_positions(self):
    """Not the mean of per-crystal RMSEs: crystals with unequal errors tell them apart."""
    y = np.zeros((2, 4), np.float32)
    y_hat = np.array([[1.0, 1.0, 1.0, 1.0], [3.0, 3.0, 3.0, 3.0]], np.float32)
    got = metrics.compute_metrics(y, y_hat)
    np.testing.assert_allclose(got["rmse"], np.sqrt(5.0), rtol=1e-12)   # sqrt((4 + 36) / 8)
    assert abs(got["rmse"] - 2.0) > 0.1                                  # mean of 1 and 3
    np.testing.assert_allclose(got["rmse"] ** 2, got["mse"], rtol=1e-12)


class JitVariantsTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_jit_and_eager_agree(self):
    y, y_hat = _data(9, n=12, scale=100.0)
    y_pad, y_hat_pad, mask = _pad(y, y_hat, 16, np.random.default_rng(9))
    got = metrics.finalize(self.variant(metrics.batch_stats)(y_pad, y_hat_pad, mask))
    ref = metrics.compute_metrics(y, y_hat)
    for k in ("r2", "mae", "mse", "wd"):
      np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, err_msg=k)
