"""Label checks and the one-line summary of skipped crystals.

A DoS label must be a non-negative, non-empty distribution of the expected length:
`check_label_shape` refuses a label matrix of the wrong shape for the whole input
(`InputError`), `label_row_problems` / `validate_labels` name the single rows the
losses cannot use so that the loader can skip them, and `summarise_skipped`
turns every skipped (id, reason) into the one warning `load_raw_dataset` logs.
"""

from typing import Sequence

import numpy as np

from xtal2dos_jax.core.errors import InputError

# At most this many distinct skip reasons are listed in the summary warning.
_MAX_LISTED = 10


def check_label_shape(labels: np.ndarray, l_y: int | None, name: str,
                      n: int | None = None) -> None:
  """Raises InputError(name, ...) unless `labels` is 2-D [n, l_y] (None = any)."""
  if labels.ndim != 2:
    raise InputError(name, f"labels must be a 2-D [crystals, l_y] array, got "
                     f"shape {tuple(labels.shape)}")
  if l_y is not None and labels.shape[1] != int(l_y):
    raise InputError(name, f"label length {labels.shape[1]} does not match "
                     f"config.data.l_y = {int(l_y)}")
  if n is not None and labels.shape[0] != n:
    raise InputError(name, f"{labels.shape[0]} label rows for {n} ids")


def validate_labels(ids: Sequence[str], labels: np.ndarray, l_y: int,
                    name: str) -> list[tuple[str, str]]:
  """Finds label rows the losses cannot use.

  Args:
    ids: crystal ids aligned with the rows.
    labels: [N, l_y] DoS, original scale.
    l_y: expected number of DoS points (config.data.l_y).
    name: the label source (file) for error messages.

  Returns:
    (id, reason) for every row with NaN/inf, any negative value, or all zeros
    (a DoS must be a non-negative, non-empty distribution).

  Raises:
    InputError(name, ...): labels not 2-D, row length != l_y, or row count !=
      number of ids.
  """
  labels = np.asarray(labels)
  check_label_shape(labels, l_y, name, len(ids))
  return [(str(ids[i]), reason)
          for i, reason in label_row_problems(labels).items()]


def label_row_problems(labels: np.ndarray) -> dict[int, str]:
  """Row index -> reason for NaN/inf, negative or all-zero label rows."""
  with np.errstate(invalid="ignore"):
    nonfinite = ~np.all(np.isfinite(labels), axis=1)
    negative = np.any(labels < 0, axis=1) & ~nonfinite
    zero = np.all(labels == 0, axis=1)
  bad = {}
  for i in np.flatnonzero(nonfinite | negative | zero):
    if nonfinite[i]:
      bad[int(i)] = "label has NaN/inf values"
    elif negative[i]:
      bad[int(i)] = (f"label has negative values "
                     f"(min {float(labels[i].min()):.3g})")
    else:
      bad[int(i)] = "label is all zero"
  return bad


def summarise_skipped(skipped: Sequence[tuple[str, str]], total: int,
                      source: str) -> str:
  """One line: the count, then each distinct reason with (up to a few of) its ids."""
  by_reason: dict[str, list[str]] = {}
  for rid, reason in skipped:
    by_reason.setdefault(reason, []).append(str(rid))
  parts = []
  for reason, ids in list(by_reason.items())[:_MAX_LISTED]:
    shown = ", ".join(ids[:3]) + (f" and {len(ids) - 3} more" if len(ids) > 3 else "")
    parts.append(f"{shown} ({reason})")
  more = (f"; ... and {len(by_reason) - _MAX_LISTED} more reasons"
          if len(by_reason) > _MAX_LISTED else "")
  return (f"{source}: skipped {len(skipped)} of {total} crystals: "
          f"{'; '.join(parts)}{more}")

