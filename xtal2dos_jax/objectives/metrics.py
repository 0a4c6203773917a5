"""Evaluation metrics over a whole split: R^2, MAE, MSE, WD (paper Sec. 4.1).

A split is evaluated in padded batches (and across devices), so the metrics are built
from additive sufficient statistics:

    stats = batch_stats(y, y_hat, mask)       # jit-able, per batch (and per device)
    stats = psum / sum over batches            # any grouping gives the same totals
    metrics = finalize(stats, bin_width)       # host, float64 numpy

Definitions (y, y_hat: [N crystals, l_y positions]):

- r2: scikit-learn's `r2_score(y, y_hat, multioutput='variance_weighted')`,
  1 - sum_t SSE_t / sum_t SST_t with SSE_t = sum_i (y_it - y_hat_it)^2 and
  SST_t = sum_i (y_it - mean_i y_it)^2; positions with SST_t == 0 carry zero weight
  (their SSE_t is left out, as in scikit-learn), and if every SST_t is 0 the score is the
  fraction of positions predicted exactly (scikit-learn's `force_finite` rule).
- mae, mse: means of |err| and err^2 over all crystals and positions.
- rmse: sqrt(mse), the root of that same mean over crystals and positions (the
  DOSTransformer comparison reports it).
- wd: per crystal the 1-Wasserstein distance between y and y_hat viewed as weights on
  the bin-index grid 0..l_y-1, each normalised to sum 1
  (= sum_t |CDF_y(t) - CDF_y_hat(t)|, unit spacing; equal to
  `scipy.stats.wasserstein_distance(arange(l), arange(l), y, y_hat)`), averaged over
  crystals and multiplied by 0.0625 (the paper's reporting convention).
- wd_physical: the same mean WD in physical units (bin-index WD x `bin_width`, e.g.
  20 cm^-1 for phDoS, 0.0625 eV for eDoS), without the 0.0625 factor.

SST is computed from sums of y and y^2; to keep that free of cancellation for labels far
from zero (original-scale eDoS ~ 100), the sums are taken of y - shift, with a fixed
per-position `shift` (e.g. the training-set mean) shared by all batches of one
accumulation. SST is exactly invariant to the shift; only the rounding improves.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, Optional

import jax.numpy as jnp
import numpy as np

# The paper reports the bin-index WD times this factor (see the module docstring).
WD_REPORT_FACTOR = 0.0625

STAT_KEYS = ("count", "sum_abs_err", "sum_sq_err", "sum_wd", "sum_y", "sum_y2", "sse")

# Below this relative size SST_t counts as 0 (a constant position): the float32 sums of a
# constant column cancel to ~1e-7 relative, not to exactly 0.
_SST_REL_TOL = 1e-6

# What checkpoint selection and early stopping minimise (`config.train.select_on`):
# the validation loss, or -R^2 / WD on the normalised scale.
VALIDATION_SCORES: dict[str, Callable[[dict[str, Any]], float]] = {
    "loss": lambda val: float(val["loss"]),
    "r2": lambda val: -float(val["normalized"]["r2"]),
    "wd": lambda val: float(val["normalized"]["wd"]),
}


def _wd_per_crystal(xp, y, y_hat):
  """Bin-index 1-Wasserstein distance per crystal, [..., l_y] -> [...].

  Negative values are clipped to 0 (WD is defined for non-negative weights; e.g. a
  standardized model's predictions can dip below 0). A row summing to 0 gets an all-zero
  CDF instead of a division by zero.
  """
  y = xp.maximum(y, 0)
  y_hat = xp.maximum(y_hat, 0)
  sy = xp.sum(y, axis=-1, keepdims=True)
  sh = xp.sum(y_hat, axis=-1, keepdims=True)
  p = y / xp.where(sy > 0, sy, xp.ones_like(sy))
  q = y_hat / xp.where(sh > 0, sh, xp.ones_like(sh))
  cdf_diff = xp.cumsum(p, axis=-1) - xp.cumsum(q, axis=-1)
  # The last CDF value is 1 for both; leave it out so rounding there adds nothing.
  return xp.sum(xp.abs(cdf_diff[..., :-1]), axis=-1)


def _stats(xp, y, y_hat, mask, shift):
  y = xp.asarray(y)
  y_hat = xp.asarray(y_hat)
  if mask is None:
    mask = xp.ones(y.shape[:-1], bool)
  mask = xp.asarray(mask, bool)
  m = mask[..., None]
  zeros = xp.zeros_like(y)
  # `where`, not multiply: padding rows may hold anything (even inf) and must add nothing.
  y = xp.where(m, y, zeros)
  y_hat = xp.where(m, y_hat, zeros)
  err = y - y_hat
  yc = y if shift is None else xp.where(m, y - xp.asarray(shift, y.dtype), zeros)
  wd = xp.where(mask, _wd_per_crystal(xp, y, y_hat), xp.zeros(mask.shape, y.dtype))
  lead = tuple(range(y.ndim - 1))  # all crystal axes
  return {
      "count": xp.sum(mask.astype(y.dtype)),
      "sum_abs_err": xp.sum(xp.abs(err)),
      "sum_sq_err": xp.sum(err * err),
      "sum_wd": xp.sum(wd),
      "sum_y": xp.sum(yc, axis=lead),
      "sum_y2": xp.sum(yc * yc, axis=lead),
      "sse": xp.sum(err * err, axis=lead),
  }


def batch_stats(y: jnp.ndarray,
                y_hat: jnp.ndarray,
                mask: Optional[jnp.ndarray] = None,
                shift: Optional[jnp.ndarray] = None) -> Dict[str, jnp.ndarray]:
  """Additive sufficient statistics of one (padded) batch; pure jnp, jit-able.

  Args:
    y: float[G, l_y] targets.
    y_hat: float[G, l_y] predictions on the same scale.
    mask: bool[G], False for padding crystals (they contribute nothing); None = all real.
    shift: optional float[l_y] subtracted from y before the y / y^2 sums (see module
      doc); must be the same for every batch that is summed together.

  Returns:
    dict of float32 arrays: count, sum_abs_err, sum_sq_err, sum_wd (scalars; sum_wd is
    the sum of per-crystal bin-index WD) and sum_y, sum_y2, sse ([l_y] per position).
    Add dicts key by key (`sum_stats`, `jax.lax.psum`) to combine batches or devices;
    the crystal axes may be more than one (e.g. [D, G, l_y]), all are summed.
  """
  y = jnp.asarray(y, jnp.float32)
  y_hat = jnp.asarray(y_hat, jnp.float32)
  return _stats(jnp, y, y_hat, mask, shift)


def sum_stats(stats: Iterable[Dict[str, Any]]) -> Dict[str, np.ndarray]:
  """Add a sequence of `batch_stats` dicts key by key on the host, in float64."""
  total: Optional[Dict[str, np.ndarray]] = None
  for s in stats:
    s64 = {k: np.asarray(s[k], np.float64) for k in STAT_KEYS}
    total = s64 if total is None else {k: total[k] + s64[k] for k in STAT_KEYS}
  if total is None:
    raise ValueError("sum_stats needs at least one batch")
  return total


def finalize(stats: Dict[str, Any], bin_width: float = 1.0) -> Dict[str, float]:
  """Metrics from accumulated statistics (float64 numpy, host side).

  Args:
    stats: totals of `batch_stats` over a split (numpy or jax arrays).
    bin_width: spacing of the DoS grid in physical units, for `wd_physical`.

  Returns:
    dict with float r2, mae, mse, rmse (sqrt of mse), wd (x 0.0625), wd_physical
    (x bin_width) and int count. Metrics are NaN when the split holds no crystal.
  """
  s = {k: np.asarray(stats[k], np.float64) for k in STAT_KEYS}
  if s["count"].ndim != 0:
    raise ValueError(
        f"finalize needs totals (scalar count), got count of shape {s['count'].shape}; "
        "reduce a per-device axis first (after lax.psum every device holds the total: "
        "take [0], do not sum)")
  n = float(s["count"])
  l_y = s["sse"].shape[-1]
  out = {"count": int(round(n))}
  if n <= 0:
    out.update(r2=float("nan"), mae=float("nan"), mse=float("nan"), rmse=float("nan"),
               wd=float("nan"), wd_physical=float("nan"))
    return out
  sst = np.maximum(s["sum_y2"] - s["sum_y"] ** 2 / n, 0.0)
  sse = s["sse"]
  nonconstant = sst > _SST_REL_TOL * s["sum_y2"]
  if np.any(nonconstant):
    r2 = 1.0 - np.sum(sse[nonconstant]) / np.sum(sst[nonconstant])
  else:
    r2 = float(np.mean(sse == 0.0))
  wd_mean = s["sum_wd"] / n
  mse = s["sum_sq_err"] / (n * l_y)
  out.update(
      r2=float(r2),
      mae=float(s["sum_abs_err"] / (n * l_y)),
      mse=float(mse),
      rmse=float(np.sqrt(mse)),
      wd=float(wd_mean * WD_REPORT_FACTOR),
      wd_physical=float(wd_mean * bin_width),
  )
  return out


def compute_metrics(y: Any,
                    y_hat: Any,
                    mask: Any = None,
                    bin_width: float = 1.0) -> Dict[str, float]:
  """All metrics for whole arrays y, y_hat float[N, l_y] in one call (float64 numpy).

  Uses the per-position mean of the real rows as the shift, so R^2 has no cancellation.
  """
  y = np.asarray(y, np.float64)
  y_hat = np.asarray(y_hat, np.float64)
  mask = np.ones(y.shape[:-1], bool) if mask is None else np.asarray(mask, bool)
  n = max(int(mask.sum()), 1)
  shift = np.where(mask[..., None], y, 0.0).reshape(-1, y.shape[-1]).sum(0) / n
  return finalize(_stats(np, y, y_hat, mask, shift), bin_width=bin_width)


def format_table(results: dict[str, Any]) -> str:
  """Paper-style table: one row per split and scale, columns R^2 MAE MSE WD WD_phys n.

  `results` maps a split name to {"normalized": metrics, "original": metrics}, each
  metrics dict as `metrics.finalize` returns it."""
  lines = [f"{'split':<11}{'scale':<11}{'R^2':>9}{'MAE':>12}{'MSE':>12}{'WD':>9}{'WD_phys':>10}"
           f"{'n':>6}"]
  for split, res in results.items():
    for scale in ("normalized", "original"):
      m = res[scale]
      lines.append(f"{split:<11}{scale:<11}{m['r2']:>9.4f}{m['mae']:>12.4g}{m['mse']:>12.4g}"
                   f"{m['wd']:>9.4f}{m['wd_physical']:>10.4g}{m['count']:>6d}")
  return "\n".join(lines)
