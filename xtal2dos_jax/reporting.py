"""Printed summaries of a run's metrics (the binaries' and the training log's tables)."""
from __future__ import annotations

from typing import Any


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
