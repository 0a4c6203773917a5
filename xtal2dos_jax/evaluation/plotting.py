"""PNG figures of DoS curves and their uncertainty bands (matplotlib, headless Agg backend)."""
from __future__ import annotations

import math
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_dos_grid(path: str, grid: np.ndarray, y_pred: np.ndarray, titles: Sequence[str],
                  y_true: np.ndarray | None = None, xlabel: str = "", ylabel: str = "DoS",
                  ncols: int = 3, y_std: np.ndarray | None = None) -> str:
  """One panel per crystal: predicted DoS (and the true one if given) on `grid`.

  y_pred, y_true: float[n, l_y]; y_std: float[n, l_y] ensemble standard deviation, drawn
  as a ±2σ band around y_pred where given. Returns `path`.
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
    if y_std is not None and np.any(y_std[k] > 0):
      ax.fill_between(grid, y_pred[k] - 2 * y_std[k], y_pred[k] + 2 * y_std[k], color="C3",
                      alpha=0.25, lw=0, label="±2σ")
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


def _band(ax, x: np.ndarray, mean: np.ndarray, std: np.ndarray | None, color: str,
          label: str) -> None:
  """mean as a line, with a ±2σ band where std is given and not all zero."""
  if std is not None and np.any(np.nan_to_num(std) > 0):
    ax.fill_between(x, mean - 2 * std, mean + 2 * std, color=color, alpha=0.25, lw=0,
                    label="±2σ")
  ax.plot(x, mean, color=color, lw=1.5, label=label)


def plot_prediction(path: str, grid: np.ndarray, dos_mean: np.ndarray, dos_std: np.ndarray,
                    title: str, xlabel: str = "", ylabel: str = "DoS",
                    temperatures: np.ndarray | None = None, cv_mean: np.ndarray | None = None,
                    cv_std: np.ndarray | None = None) -> str:
  """One structure's prediction: its DoS (mean over members, ±2σ band) and, for phonons,
  its heat capacity C_v(T) beside it (J/K/mol of cells, mean and ±2σ band).

  grid, dos_mean, dos_std: float[l_y]; temperatures, cv_mean, cv_std: float[n_T] (K).
  Returns `path`.
  """
  with_cv = temperatures is not None and cv_mean is not None
  fig, axes = plt.subplots(1, 2 if with_cv else 1, figsize=(8.5 if with_cv else 4.5, 3.0),
                           squeeze=False)
  ax = axes[0, 0]
  _band(ax, grid, dos_mean, dos_std, "C3", "predicted")
  ax.set_xlabel(xlabel, fontsize=8)
  ax.set_ylabel(ylabel, fontsize=8)
  ax.legend(fontsize=7, frameon=False)
  if with_cv:
    ax = axes[0, 1]
    _band(ax, temperatures, cv_mean, cv_std, "C0", "C$_v$")
    ax.set_xlabel("temperature (K)", fontsize=8)
    ax.set_ylabel("C$_v$ (J/K/mol)", fontsize=8)
  for ax in axes.flat:
    ax.tick_params(labelsize=7)
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
