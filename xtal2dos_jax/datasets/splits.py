"""Seeded splits of a dataset's crystals into train / validation / test.

All functions work on indices into range(n) and are deterministic in their
arguments, so a run's split can be recomputed from its config: one random split
by fractions (`split_indices`), one fold of k-fold cross-validation
(`fold_indices`), and a nested share of a train split for learning curves
(`train_subset`).
"""

from typing import Iterable

import numpy as np

from xtal2dos_jax.errors import InputError, error_text

SPLITS = ("train", "validation", "test")


def train_subset(train: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
  """The first round(fraction * len(train)) (at least 1) of a seeded shuffle of `train`,
  sorted: for learning curves on a fixed validation/test split. Same seed -> smaller
  fractions are subsets of larger ones.

  Raises InputError('config.data.train_fraction', ...) unless 0 < fraction <= 1.
  """
  try:
    fraction = float(fraction)
  except (TypeError, ValueError):
    raise InputError("config.data.train_fraction", f"expected a number, got {fraction!r}") from None
  if not 0.0 < fraction <= 1.0:
    raise InputError("config.data.train_fraction", f"must be in (0, 1], got {fraction}")
  if fraction == 1.0:
    return train
  keep = max(1, int(round(fraction * len(train))))
  order = np.random.default_rng([seed, 1]).permutation(len(train))
  return np.sort(np.asarray(train)[order[:keep]])


def fold_indices(n: int, num_folds: int, fold: int, validation_fraction: float = 0.1,
                 seed: int = 0) -> dict[str, np.ndarray]:
  """One fold of seeded k-fold cross-validation of range(n).

  A seeded permutation of range(n) is cut into `num_folds` folds of near-equal size
  (sizes differ by at most 1); fold `fold` is the test split, round(validation_fraction
  * n) crystals drawn (seeded) from the rest are the validation split, the remaining
  crystals the train split. Over fold = 0..num_folds-1 every crystal is tested exactly
  once. Same arguments -> same split.

  Returns:
    {'train', 'validation', 'test'} -> sorted int64 index arrays partitioning range(n).

  Raises:
    InputError('config.data.num_folds' / 'config.data.fold', ...): fewer than 2 folds,
      more folds than crystals, a fold index outside 0..num_folds-1, or no crystal left
      for training.
  """
  n, k, fold = int(n), int(num_folds), int(fold)
  if k < 2 or k > n:
    raise InputError("config.data.num_folds", f"needs 2..{n} folds for {n} crystals, got {k} "
                     "(0 = one seeded split by config.data.split)")
  if not 0 <= fold < k:
    raise InputError("config.data.fold", f"must be in 0..{k - 1} for {k} folds, got {fold}")
  perm = np.random.default_rng([seed, 2]).permutation(n)
  folds = np.array_split(perm, k)
  test = folds[fold]
  rest = np.concatenate([f for j, f in enumerate(folds) if j != fold])
  n_val = int(round(float(validation_fraction) * n))
  rest = np.random.default_rng([seed, 3, fold]).permutation(rest)
  if n_val >= len(rest):
    raise InputError("config.data.split", f"a validation share of {validation_fraction} "
                     f"leaves no training crystal in fold {fold} of {k}")
  return {"train": np.sort(rest[n_val:]).astype(np.int64),
          "validation": np.sort(rest[:n_val]).astype(np.int64),
          "test": np.sort(test).astype(np.int64)}


def split_indices(n: int, fractions: Iterable[float] = (0.8, 0.1, 0.1),
                  seed: int = 0) -> dict[str, np.ndarray]:
  """Seeded random train/validation/test split of range(n).

  Sizes are n * fractions rounded by largest remainder (they sum to n); a
  split with a positive fraction that would be empty takes one index from
  the largest split, so for n >= 3 every split with fraction > 0 is
  non-empty. Same (n, fractions, seed) -> same split.

  Returns:
    {'train', 'validation', 'test'} -> sorted int64 index arrays; every index
    in exactly one of them.

  Raises:
    InputError('config.data.split', ...): not three fractions, a negative
      fraction, a sum != 1 (within 1e-6), or a split with fraction > 0 that
      cannot get a crystal (n too small).
  """
  try:
    frac = np.asarray([float(f) for f in fractions], dtype=np.float64)
  except (TypeError, ValueError) as e:
    raise InputError("config.data.split", f"expected three numbers: "
                     f"{error_text(e)}") from None
  if frac.shape != (3,):
    raise InputError("config.data.split", f"expected three fractions (train, "
                     f"validation, test), got {len(frac)}")
  if not np.all(np.isfinite(frac)) or np.any(frac < 0):
    raise InputError("config.data.split", f"fractions must be non-negative, "
                     f"got {tuple(frac.tolist())}")
  if abs(frac.sum() - 1.0) > 1e-6:
    raise InputError("config.data.split", f"fractions must sum to 1, got "
                     f"{tuple(frac.tolist())} (sum {frac.sum():g})")
  n = int(n)
  if n < 0:
    raise InputError("config.data.split", f"cannot split n={n} crystals")
  exact = frac * n
  sizes = np.floor(exact).astype(np.int64)
  remainder = n - int(sizes.sum())
  for j in np.argsort(-(exact - sizes), kind="stable")[:remainder]:
    sizes[j] += 1
  for j in range(3):
    if frac[j] > 0 and sizes[j] == 0:
      donor = int(np.argmax(sizes))
      if sizes[donor] > 1:
        sizes[donor] -= 1
        sizes[j] += 1
  for j, name in enumerate(SPLITS):
    if frac[j] > 0 and sizes[j] == 0:
      raise InputError("config.data.split", f"split {name!r} would be empty "
                       f"with n={n} crystals (fractions "
                       f"{tuple(frac.tolist())})")
  perm = np.random.default_rng(seed).permutation(n)
  bounds = np.cumsum(sizes)[:-1]
  return {name: np.sort(part).astype(np.int64)
          for name, part in zip(SPLITS, np.split(perm, bounds))}
