"""Tests for xtal2dos_jax.input_pipeline.data_splits: seeded splits, k-fold folds, learning-curve
subsets."""

import chex
import ml_collections
import numpy as np
import pytest

from configs import smoke
from xtal2dos_jax.core.errors import InputError
from xtal2dos_jax.input_pipeline import data_splits
from xtal2dos_jax.training.config_check import validate


@pytest.mark.parametrize("n", [3, 10, 101, 1077])
def test_split_indices_partition(n):
  split = data_splits.split_indices(n, seed=3)
  assert set(split) == {"train", "validation", "test"}
  everything = np.concatenate(list(split.values()))
  np.testing.assert_array_equal(np.sort(everything), np.arange(n))
  assert all(len(v) > 0 for v in split.values())
  if n == 10:
    assert [len(split[k]) for k in ("train", "validation", "test")] == [8, 1, 1]
  if n == 1077:
    assert abs(len(split["train"]) - 0.8 * n) <= 1


def test_split_indices_seeded():
  a = data_splits.split_indices(200, seed=0)
  b = data_splits.split_indices(200, seed=0)
  c = data_splits.split_indices(200, seed=1)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  assert not np.array_equal(a["test"], c["test"])


def test_train_subset_for_learning_curves():
  train = data_splits.split_indices(200, seed=0)["train"]
  assert data_splits.train_subset(train, 1.0) is train
  half = data_splits.train_subset(train, 0.5, seed=0)
  quarter = data_splits.train_subset(train, 0.25, seed=0)
  chex.assert_shape(half, (80,))
  chex.assert_shape(quarter, (40,))
  assert set(quarter) < set(half) < set(train)          # nested: a learning curve adds data
  assert np.all(np.diff(half) > 0)
  np.testing.assert_array_equal(half, data_splits.train_subset(train, 0.5, seed=0))
  assert set(data_splits.train_subset(train, 0.5, seed=1)) != set(half)
  assert len(data_splits.train_subset(train, 1e-6)) == 1
  for bad in (0.0, -0.5, 1.5, "x"):
    config = smoke.get_config().to_dict()
    config["data"]["train_fraction"] = bad          # a str too: what a JSON file may hold
    with pytest.raises(InputError, match="config.data.train_fraction"):
      validate(ml_collections.ConfigDict(config))


def test_split_indices_zero_fraction_and_errors():
  split = data_splits.split_indices(5, fractions=(1.0, 0.0, 0.0))
  assert len(split["train"]) == 5 and len(split["test"]) == 0
  for bad in [(0.5, 0.5, 0.5), (1.2, -0.1, -0.1), (0.5, 0.5)]:
    with pytest.raises(InputError, match="config.data.split"):
      data_splits.split_indices(10, fractions=bad)
  with pytest.raises(InputError, match=r"config.data.split: .*n=2"):
    data_splits.split_indices(2)


def test_fold_indices_partition_and_test_every_crystal_once():
  n, k = 23, 5
  tested = []
  for fold in range(k):
    parts = data_splits.fold_indices(n, k, fold, validation_fraction=0.1, seed=4)
    everything = np.concatenate([parts[s] for s in data_splits.SPLITS])
    np.testing.assert_array_equal(np.sort(everything), np.arange(n))
    assert len(parts["test"]) in (4, 5) and len(parts["validation"]) == 2
    assert all(np.all(np.diff(parts[s]) > 0) for s in data_splits.SPLITS)
    tested += parts["test"].tolist()
  assert sorted(tested) == list(range(n))


def test_fold_arguments_are_checked():
  with pytest.raises(InputError, match="config.data.num_folds: needs 2..10 folds"):
    data_splits.fold_indices(10, 1, 0)
  with pytest.raises(InputError, match="config.data.fold: must be in 0..4 for 5 folds, got 5"):
    data_splits.fold_indices(10, 5, 5)
  with pytest.raises(InputError, match="config.data.split: .*leaves no training crystal"):
    data_splits.fold_indices(10, 2, 0, validation_fraction=0.5)
  a, b = data_splits.fold_indices(100, 5, 2, seed=1), data_splits.fold_indices(100, 5, 2, seed=1)
  assert all(np.array_equal(a[k], b[k]) for k in a)
  c = data_splits.fold_indices(100, 5, 2, seed=2)
  assert not np.array_equal(a["test"], c["test"])


def test_exclude_ids_leaves_out_another_runs_evaluation_crystals(tmp_path):
  """data.exclude_ids=<splits.json>:validation,test: none of those ids is in any split of
  the new run, and every other crystal still is; a bad spec is one line naming the key."""
  import json
  from xtal2dos_jax.input_pipeline import data_splits, run_data
  config = smoke.get_config()
  config.data.limit = 40
  full = run_data.prepare_run_data(config)
  ids = lambda rd: {str(i) for part in rd.splits.values() for i in part.graphs.ids}  # noqa: E731
  splits = {name: [str(i) for i in part.graphs.ids] for name, part in full.splits.items()}
  (tmp_path / "splits.json").write_text(json.dumps(splits))
  config.data.exclude_ids = f"{tmp_path / 'splits.json'}:validation,test"
  config.data.limit = 0
  kept = run_data.prepare_run_data(config)
  left_out = set(splits["validation"]) | set(splits["test"])
  assert not ids(kept) & left_out and set(splits["train"]) <= ids(kept)
  (tmp_path / "ids.txt").write_text("\n".join(sorted(left_out)) + "\n")
  assert data_splits.excluded_ids(str(tmp_path / "ids.txt")) == left_out
  (tmp_path / "ids.json").write_text(json.dumps(sorted(left_out)))
  assert data_splits.excluded_ids(str(tmp_path / "ids.json")) == left_out
  with pytest.raises(InputError, match="config.data.exclude_ids: .* not a JSON object with "
                                       "lists under 'nope'"):
    data_splits.excluded_ids(f"{tmp_path / 'splits.json'}:nope")
  with pytest.raises(InputError, match="config.data.exclude_ids: cannot read"):
    data_splits.excluded_ids(str(tmp_path / "missing.txt"))
  with pytest.raises(InputError, match="not a list of ids"):
    data_splits.excluded_ids(str(tmp_path / "splits.json"))


def test_split_file_gives_exactly_its_splits_and_rejects_bad_files(tmp_path):
  """data.split_file: the run's train / validation / test crystals are the file's, in its
  order ("val" accepted for "validation", as the reference harness writes it); crystals
  in no list are left out; unknown ids, a crystal in two lists and a missing key are one
  line naming the file."""
  import json
  from xtal2dos_jax.input_pipeline import run_data
  config = smoke.get_config()
  config.data.limit = 30
  ids = [str(i) for part in run_data.prepare_run_data(config).splits.values()
         for i in part.graphs.ids]
  chosen = {"train": ids[5:20], "val": ids[2:5][::-1], "test": ids[20:24]}
  path = tmp_path / "split.json"
  path.write_text(json.dumps(chosen))
  config.data.split_file = str(path)
  rd = run_data.prepare_run_data(config)
  assert [str(i) for i in rd.splits["train"].graphs.ids] == chosen["train"]
  assert [str(i) for i in rd.splits["validation"].graphs.ids] == chosen["val"]
  assert [str(i) for i in rd.splits["test"].graphs.ids] == chosen["test"]
  config.data.split_seed = 7                            # the file, not the seed, decides
  assert [str(i) for i in run_data.prepare_run_data(config).splits["test"].graphs.ids] == \
      chosen["test"]

  path.write_text(json.dumps({**chosen, "test": chosen["test"] + ["nope-1"]}))
  with pytest.raises(InputError, match=r"split_file .*1 'test' ids are not usable crystals"
                                       r".*first: nope-1"):
    run_data.prepare_run_data(config)
  path.write_text(json.dumps({**chosen, "test": chosen["test"] + chosen["train"][:1]}))
  with pytest.raises(InputError, match=r"split_file .*is in both 'train' and 'test'"):
    run_data.prepare_run_data(config)
  path.write_text(json.dumps({"train": chosen["train"], "test": chosen["test"]}))
  with pytest.raises(InputError, match=r"split_file .*'validation' \(or 'val'\)"):
    run_data.prepare_run_data(config)
  path.write_text("{")
  with pytest.raises(InputError, match=r"split_file .*is not JSON"):
    run_data.prepare_run_data(config)
