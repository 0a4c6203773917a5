"""Splits of a dataset's crystals into train / validation / test.

The seeded splits work on indices into range(n) and are deterministic in their
arguments, so a run's split can be recomputed from its config: one random split
by fractions (`split_indices`), one fold of k-fold cross-validation
(`fold_indices`), and a nested share of a train split for learning curves
(`train_subset`). `read_split_file` reads a given split (`config.data.split_file`),
`excluded_ids` the ids `config.data.exclude_ids` leaves out, and `split_rows` picks the
rows of a dataset's usable crystals that each split holds.
"""
from __future__ import annotations

import json
from typing import Iterable, Mapping, Sequence

import ml_collections
import numpy as np
from absl import logging

from xtal2dos_jax.core.errors import error_text, InputError

SPLITS = ("train", "validation", "test")


def train_subset(train: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
  """The first round(fraction * len(train)) (at least 1) of a seeded shuffle of `train`,
  sorted: for learning curves on a fixed validation/test split. Same seed -> smaller
  fractions are subsets of larger ones. `fraction` in (0, 1] (`config_check` refuses others).
  """
  fraction = float(fraction)
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


def read_split_file(path: str) -> dict[str, list[str]]:
  """The train / validation / test ids of `config.data.split_file`: a JSON object with
  lists of crystal ids under "train", "validation" (or "val", as the reference harness
  writes it) and "test", e.g. another run's splits.json or a published split.
  Raises InputError naming the file for an unreadable file, a missing key or a crystal in
  two splits."""
  name = f"config.data.split_file {path!r}"
  try:
    with open(path) as f:
      table = json.load(f)
  except OSError as e:
    raise InputError(name, f"cannot be read ({e.strerror})") from None
  except ValueError as e:
    raise InputError(name, f"is not JSON ({e})") from None
  if isinstance(table, dict) and "validation" not in table and "val" in table:
    table = {**table, "validation": table["val"]}
  if not isinstance(table, dict) or any(not isinstance(table.get(k), list) for k in SPLITS):
    raise InputError(name, "must be a JSON object with id lists under 'train', "
                     "'validation' (or 'val') and 'test'")
  out = {k: [str(i) for i in table[k]] for k in SPLITS}
  seen: dict[str, str] = {}
  for k in SPLITS:
    for i in out[k]:
      if i in seen:
        raise InputError(name, f"crystal {i!r} is in both '{seen[i]}' and '{k}'")
      seen[i] = k
  return out


def _split_file_rows(ids: Sequence[str], path: str) -> dict[str, np.ndarray]:
  """Row indices of `read_split_file(path)`'s splits among the usable crystals `ids`."""
  split_ids = read_split_file(path)
  where = {str(i): k for k, i in enumerate(ids)}
  out = {}
  for name in SPLITS:
    missing = [i for i in split_ids[name] if i not in where]
    if missing:
      raise InputError(f"config.data.split_file {path!r}",
                       f"{len(missing)} '{name}' ids are not usable crystals of the dataset "
                       f"(first: {missing[0]})")
    out[name] = np.asarray([where[i] for i in split_ids[name]], np.int64)
  unused = len(where) - sum(len(v) for v in out.values())
  if unused:
    logging.info("%d crystals are in no split of %s; left out", unused, path)
  return out


def split_rows(ids: Sequence[str], data_config: ml_collections.ConfigDict,
               split_ids: Mapping[str, Sequence[str]] | None) -> dict[str, np.ndarray]:
  """Row indices into `ids` (the usable crystals) of each split: the saved `split_ids` of
  a resumed run, else `config.data.split_file`, a fold of `num_folds`, or a seeded split
  by fractions, with the train split cut to `train_fraction`."""
  if split_ids is None:
    if data_config.split_file:
      parts = _split_file_rows(ids, data_config.split_file)
    elif data_config.num_folds:
      parts = fold_indices(len(ids), data_config.num_folds, data_config.fold,
                           data_config.split[1], data_config.split_seed)
    else:
      parts = split_indices(len(ids), tuple(data_config.split), data_config.split_seed)
    parts["train"] = train_subset(parts["train"], data_config.train_fraction,
                                  data_config.split_seed)
    return parts
  where = {str(i): k for k, i in enumerate(ids)}
  out = {}
  for name in SPLITS:
    missing = [i for i in split_ids[name] if str(i) not in where]
    if missing:
      raise InputError(f"split '{name}'", f"{len(missing)} saved ids are no longer in the "
                       f"dataset (first: {missing[0]}); the data changed since the run began")
    out[name] = np.asarray([where[str(i)] for i in split_ids[name]], np.int64)
  return out


def excluded_ids(spec: str) -> set[str]:
  """The ids `config.data.exclude_ids` names: "" (none); a file of ids (a JSON list, or one
  id per line); or "file.json:key1,key2", the union of those keys' lists in a JSON object
  (e.g. another run's splits.json:validation,test, to keep its evaluation crystals out of a
  pre-training set)."""
  spec = str(spec or "")
  if not spec:
    return set()
  path, keys = spec.rsplit(":", 1) if ".json:" in spec else (spec, "")
  name = "config.data.exclude_ids"
  try:
    with open(path) as f:
      text = f.read()
  except OSError as e:
    raise InputError(name, f"cannot read {path!r} ({e.strerror})") from None
  if keys:
    try:
      table = json.loads(text)
      return {str(i) for key in keys.split(",") for i in table[key]}
    except (ValueError, KeyError, TypeError) as e:
      raise InputError(name, f"{path!r} is not a JSON object with lists under "
                       f"{keys!r} ({type(e).__name__}: {e})") from None
  if path.endswith(".json"):
    try:
      ids = json.loads(text)
    except ValueError as e:
      raise InputError(name, f"{path!r} is not JSON ({e})") from None
    if not isinstance(ids, list):
      raise InputError(name, f"{path!r} holds a JSON {type(ids).__name__}, not a list of ids; "
                       "name its keys as file.json:key1,key2")
    return {str(i) for i in ids}
  return {line.strip() for line in text.splitlines() if line.strip()}
