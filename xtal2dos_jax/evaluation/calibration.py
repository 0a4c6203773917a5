"""How far to trust an ensemble's spread: interval coverage, spread-error ranking and a
one-scalar recalibration, as pure numpy functions of (truth, mean, std).

An ensemble's members give, per DoS point (or per derived property), a mean prediction
and a standard deviation sigma over members. If sigma were a calibrated Gaussian error
bar, 68.3 % of true values would lie within mean +- 1 sigma and 95.4 % within +- 2 sigma,
and crystals with a larger spread would have larger errors. `recalibration_factor` is
the scalar s for which mean +- s * sigma covers 68.3 % of the data it is fitted on (the
validation split).
"""
from __future__ import annotations

from typing import Any

import numpy as np

# Coverage of +-1 and +-2 standard deviations of a Gaussian.
GAUSSIAN_COVERAGE = {1: 0.6827, 2: 0.9545}


def _positive(std: np.ndarray) -> np.ndarray:
  return np.asarray(std, np.float64) > 0


def coverage(y_true: Any, mean: Any, std: Any, sigmas: float) -> float:
  """Fraction of values with |y_true - mean| <= sigmas * std (any matching shapes)."""
  err = np.abs(np.asarray(y_true, np.float64) - np.asarray(mean, np.float64))
  return float(np.mean(err <= sigmas * np.asarray(std, np.float64)))


def spearman(a: Any, b: Any) -> float:
  """Spearman rank correlation of two float[n] arrays (NaN for n < 2 or a constant)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if len(a) < 2:
    return float("nan")
  ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
  if ra.std() == 0 or rb.std() == 0:
    return float("nan")
  return float(np.corrcoef(ra, rb)[0, 1])


def recalibration_factor(y_true: Any, mean: Any, std: Any) -> float:
  """s such that |y_true - mean| <= s * std holds for 68.27 % of the values with std > 0
  (the Gaussian 1-sigma share): the quantile of |error| / std. 1 = calibrated, > 1 = the
  spread is too narrow. A quantile, not the Gaussian likelihood scale
  sqrt(mean(error^2 / std^2)), which points where the members agree to ~1e-8 (empty DoS
  bins) inflate a hundredfold. NaN when no std is positive."""
  y, m, s = (np.asarray(x, np.float64).ravel() for x in (y_true, mean, std))
  keep = s > 0
  if not keep.any():
    return float("nan")
  return float(np.quantile(np.abs(y[keep] - m[keep]) / s[keep], GAUSSIAN_COVERAGE[1]))


def calibration_report(y_true: Any, mean: Any, std: Any, factor: float = 1.0
                       ) -> dict[str, float]:
  """Coverage of +-1 / +-2 std (raw and after multiplying std by `factor`, fitted on
  validation) and the Spearman correlation between each crystal's mean spread and
  its mean absolute error, for float[n, ...] arrays with crystals on axis 0."""
  y, m, s = (np.asarray(x, np.float64) for x in (y_true, mean, std))
  per_crystal = lambda x: x.reshape(len(x), -1).mean(1)  # noqa: E731
  out = {
      "coverage_1sigma": coverage(y, m, s, 1),
      "coverage_2sigma": coverage(y, m, s, 2),
      "spread_error_correlation": spearman(per_crystal(s), per_crystal(np.abs(y - m))),
      "recalibration_factor": float(factor),
  }
  if np.isfinite(factor):
    out["coverage_1sigma_recalibrated"] = coverage(y, m, factor * s, 1)
    out["coverage_2sigma_recalibrated"] = coverage(y, m, factor * s, 2)
  return out
