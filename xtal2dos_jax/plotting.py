"""PNG figures of DoS curves (matplotlib, headless Agg backend)."""
from __future__ import annotations

import math
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_dos_grid(path: str, grid: np.ndarray, y_pred: np.ndarray, titles: Sequence[str],
                  y_true: np.ndarray | None = None, xlabel: str = "", ylabel: str = "DoS",
                  ncols: int = 3) -> str:
  """One panel per crystal: predicted DoS (and the true one if given) on `grid`.

  y_pred, y_true: float[n, l_y]. Returns `path`.
  """
  n = len(y_pred)
  ncols = max(1, min(ncols, n))
  nrows = max(1, math.ceil(n / ncols))
  fig, axes = plt.subplots(nrows, ncols, figsize=(4 * ncols, 2.8 * nrows), squeeze=False)
  for k, ax in enumerate(axes.flat):
    if k >= n:
      ax.axis("off")
      continue
    if y_true is not None:
      ax.fill_between(grid, y_true[k], color="0.8", label="true")
    ax.plot(grid, y_pred[k], color="C3", lw=1.5, label="predicted")
    ax.set_title(titles[k], fontsize=9)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)
    if k == 0:
      ax.legend(fontsize=7, frameon=False)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path
