"""Label scalings for DoS targets, as in the public Xtal2DoS code.

The scaling is chosen by `config.data.scaling`; each pairs with the output activation of
the model's head (`SCALING_ACTIVATIONS`): the decoders return raw values float[G, l_y] and
the output activation maps them onto the scale of the scaled labels, so the prediction
has the targets' shape. One table serves the model (`Xtal2DoS`, the RNN decoders'
fed-back values), the losses (`losses.loss_on_raw_outputs`) and the label scaler:

- `normalized_sum` (default; pairs with the KL or WD loss): y / sum(y). The model ends in
  a softmax over positions; "original scale" predictions multiply by the true per-crystal
  sum, as the reference code does.
- `normalized_max`: y / max(y). Outputs are non-negative and unbounded above, so the head
  ends in a softplus.
- `standardized`: (y - mean_t) / std_t per position t, statistics from the training split
  only (saved with the run via `to_dict`). Identity output.

`LabelScaler.transform` returns the scaled labels and a per-crystal scale; `inverse`
undoes the transform exactly given that scale. Both accept numpy or jnp arrays (numpy in,
numpy out), and are pure, so `inverse` can be used inside `jax.jit` (close over the
scaler; it is not a pytree). `original_scale_for_prediction` gives a new structure's
prediction in physical units where the scaling allows it.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from xtal2dos_jax.core.errors import check_choice, InputError

OUTPUT_ACTIVATIONS: Dict[str, Callable[[jax.Array], jax.Array]] = {
    "softmax": lambda x: jax.nn.softmax(x, axis=-1),   # over the l_y positions
    "softplus": jax.nn.softplus,
    "identity": lambda x: x,
}

# Label scaling (config.data.scaling) -> output activation; its keys are `SCALINGS`.
SCALING_ACTIVATIONS: Dict[str, str] = {
    "normalized_sum": "softmax",
    "normalized_max": "softplus",
    "standardized": "identity",
}

# The keys of the scaling -> output activation table, so every scaling has its activation.
SCALINGS = tuple(SCALING_ACTIVATIONS)

# Positions whose training-split std is below this are treated as constant and get
# std = 1 (the scikit-learn StandardScaler convention): they are only centred, so a
# tiny test-time deviation at a constant position cannot blow up.
STD_FLOOR = 1e-8


def _xp(x: Any):
  """numpy for numpy inputs (and Python scalars/lists), jax.numpy otherwise."""
  return np if isinstance(x, (np.ndarray, np.generic, list, tuple, float, int)) else jnp


def output_activation_for(scaling: str) -> str:
  """Output activation matching a label scaling (see the module docstring)."""
  return SCALING_ACTIVATIONS[scaling]


def apply_output_activation(raw: jax.Array, name: str) -> jax.Array:
  """float[..., l_y] raw decoder outputs -> predictions on the scaled-label scale."""
  return OUTPUT_ACTIVATIONS[name](raw)


@dataclasses.dataclass(frozen=True, eq=False)
class LabelScaler:
  """A fitted label scaling.

  Attributes:
    name: one of `SCALINGS`.
    mean: float64[l_y] per-position training mean (`standardized` only, else None).
    std: float64[l_y] per-position training std, constant positions set to 1
      (`standardized` only, else None).
  """
  name: str = "normalized_sum"
  mean: Optional[np.ndarray] = None
  std: Optional[np.ndarray] = None

  def __post_init__(self):
    if self.name == "standardized":
      if self.mean is None or self.std is None:
        raise InputError("label_stats", "standardized scaling needs mean and std")
      mean = np.asarray(self.mean, np.float64)
      std = np.asarray(self.std, np.float64)
      if mean.ndim != 1 or mean.shape != std.shape:
        raise InputError("label_stats",
                         f"mean and std must be 1-d of equal length, got {mean.shape} and "
                         f"{std.shape}")
      if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std)) and np.all(std > 0)):
        raise InputError("label_stats", "mean/std must be finite and std positive")
      object.__setattr__(self, "mean", mean)
      object.__setattr__(self, "std", std)

  @classmethod
  def fit(cls, name: str, train_labels: Any) -> "LabelScaler":
    """Fit a scaling on the training-split labels float[N, l_y] (unscaled)."""
    if name != "standardized":
      return cls(name)
    y = np.asarray(train_labels, np.float64)
    if y.ndim != 2 or y.shape[0] == 0:
      raise InputError("train labels",
                       f"need a non-empty [N, l_y] array to fit 'standardized', got shape "
                       f"{y.shape}")
    mean = y.mean(axis=0)
    std = y.std(axis=0)
    std = np.where(std < STD_FLOOR, 1.0, std)
    return cls(name, mean, std)

  @property
  def output_activation(self) -> str:
    """Activation the model's head should end in: 'softmax', 'softplus' or 'identity'."""
    return output_activation_for(self.name)

  @property
  def num_positions(self) -> Optional[int]:
    """l_y the scaler was fitted on (`standardized`), else None (any length works)."""
    return None if self.mean is None else int(self.mean.shape[0])

  def transform(self, y: Any) -> Tuple[Any, Any]:
    """Scale labels.

    Args:
      y: float[..., l_y] labels in original units (numpy or jnp).

    Returns:
      (y_scaled float[..., l_y], scale float[...]): scale is the per-crystal sum
      (`normalized_sum`), max (`normalized_max`) or ones (`standardized`). A row whose
      sum/max is not positive (invalid labels; rejected by the data readers) is left
      unscaled rather than divided by zero, and its scale is still the raw sum/max, so
      `inverse` stays exact.
    """
    xp = _xp(y)
    y = xp.asarray(y)
    if not xp.issubdtype(y.dtype, xp.floating):
      y = y.astype(xp.float32)
    if self.name == "standardized":
      self._check_length(y)
      mean = xp.asarray(self.mean, dtype=y.dtype)
      std = xp.asarray(self.std, dtype=y.dtype)
      return (y - mean) / std, xp.ones(y.shape[:-1], y.dtype)
    if self.name == "normalized_sum":
      scale = xp.sum(y, axis=-1)
    else:
      scale = xp.max(y, axis=-1)
    safe = xp.where(scale > 0, scale, xp.ones_like(scale))
    return y / safe[..., None], scale

  def inverse(self, y_scaled: Any, scale: Any = None) -> Any:
    """Undo `transform`: y_scaled float[..., l_y], scale float[...] -> original units.

    `scale` is required for the normalised scalings (the true per-crystal sum/max, as in
    the reference code) and ignored for `standardized`.
    """
    xp = _xp(y_scaled)
    y_scaled = xp.asarray(y_scaled)
    if self.name == "standardized":
      self._check_length(y_scaled)
      return (y_scaled * xp.asarray(self.std, dtype=y_scaled.dtype)
              + xp.asarray(self.mean, dtype=y_scaled.dtype))
    if scale is None:
      raise ValueError(f"{self.name}: inverse needs the per-crystal scale")
    scale = xp.asarray(scale, dtype=y_scaled.dtype)
    safe = xp.where(scale > 0, scale, xp.ones_like(scale))
    return y_scaled * safe[..., None]

  def metric_predictions(self, y_hat_scaled: Any, scale: Any = None) -> Tuple[Any, Any]:
    """Predictions as the metrics compare them, on the normalised and the original scale.

    As the public reference's `metrics()`: `normalized_sum` and `normalized_max`
    predictions are first renormalised by their own sum / maximum (a softmax output is
    unchanged; a softplus head's output gets max 1, like its targets), then multiplied by
    the true per-crystal sum / maximum; `standardized` predictions are compared as they
    are on the standardised scale, and on the original scale after undoing the
    standardisation with negative values clipped to 0 (a DoS is non-negative).

    Args:
      y_hat_scaled: float[..., l_y] model output on the scaled-label scale.
      scale: float[...] the true per-crystal sum / max (ignored for `standardized`).

    Returns:
      (normalised float[..., l_y], original float[..., l_y]).
    """
    xp = _xp(y_hat_scaled)
    y_hat = xp.asarray(y_hat_scaled)
    if self.name == "standardized":
      return y_hat, xp.maximum(self.inverse(y_hat), 0.0)
    own = xp.sum(y_hat, axis=-1) if self.name == "normalized_sum" else xp.max(y_hat, axis=-1)
    own = xp.where(own > 0, own, xp.ones_like(own))
    normalized = y_hat / own[..., None]
    return normalized, self.inverse(normalized, scale)

  def _check_length(self, y: Any) -> None:
    if y.shape[-1] != self.mean.shape[0]:
      raise InputError("labels", f"label length {y.shape[-1]} != {self.mean.shape[0]} "
                       "positions the standardized scaler was fitted on")

  def to_dict(self) -> Dict[str, Any]:
    """JSON-serialisable dict (plain floats and lists) for saving with the run."""
    out: Dict[str, Any] = {"name": self.name}
    if self.name == "standardized":
      out["mean"] = [float(v) for v in self.mean]
      out["std"] = [float(v) for v in self.std]
    return out

  @classmethod
  def from_dict(cls, d: Dict[str, Any]) -> "LabelScaler":
    """Inverse of `to_dict` (e.g. after `json.load` of a run's label_scaler.json)."""
    if not isinstance(d, dict) or "name" not in d:
      raise InputError("label_stats", "expected a dict with key 'name'")
    name = check_choice(d["name"], SCALINGS, "config.data.scaling")
    if name != "standardized":
      return cls(name)
    if "mean" not in d or "std" not in d:
      raise InputError("label_stats", "standardized scaling needs 'mean' and 'std'")
    return cls(name, np.asarray(d["mean"], np.float64), np.asarray(d["std"], np.float64))


def original_scale_for_prediction(config, scaler, y_scaled: np.ndarray,
                                  n_atoms: np.ndarray, grid: np.ndarray) -> np.ndarray | None:
  """Predictions in physical units where the scaling allows it, else None.

  `standardized` labels invert exactly. A `normalized_sum` phonon DoS is rescaled
  so it integrates to 3N modes (sum * bin width = 3N), as the shipped data does.
  Other cases need the true per-crystal scale, which a new structure does not have.
  """
  if scaler.name == "standardized":
    return np.asarray(scaler.inverse(y_scaled, np.ones(len(y_scaled), np.float32)))
  if scaler.name == "normalized_sum" and config.data.kind == "phonon":
    return y_scaled * (3.0 * n_atoms / float(grid[1] - grid[0]))[:, None]
  return None
