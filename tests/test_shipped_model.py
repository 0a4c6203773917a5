"""The phonon model shipped in the package: it loads with no workdir and no training, and
predicts the shipped DFPT test split to the metrics its model card states."""
import json

import chex
import numpy as np
import pytest

from xtal2dos_jax import pretrained, run_data


@pytest.fixture(scope="module")
def shipped():
  if pretrained.DEFAULT not in pretrained.available():
    pytest.fail(f"no shipped model {pretrained.DEFAULT!r} in the package")
  return pretrained.load_exported(pretrained.model_path(pretrained.DEFAULT))


def test_shipped_model_reproduces_its_card_on_the_test_split(shipped):
  """The test crystals are read from the shipped dataset by the ids the model keeps;
  R^2 and MAE (normalised scale, the mean of the members) are recomputed in numpy."""
  config = shipped.config
  with open(pretrained.model_path(pretrained.DEFAULT) + "/test_ids.json") as f:
    test_ids = json.load(f)
  rd = run_data.prepare_run_data(config, 1, scaler=shipped.scaler)
  assert sorted(map(str, rd.splits["test"].graphs.ids)) == sorted(test_ids)
  part = rd.splits["test"]
  members = shipped.predict_members(part, shipped.budget)
  chex.assert_shape(members, (shipped.num_members, len(test_ids), config.data.l_y))
  pred, _ = shipped.scaler.metric_predictions(members.mean(0), part.y_scale)
  y = part.y
  sst = ((y - y.mean(0)) ** 2).sum(0)
  keep = sst > 1e-6 * (y ** 2).sum(0)
  r2 = 1 - ((y - pred) ** 2).sum(0)[keep].sum() / sst[keep].sum()
  card = shipped.setup["test_metrics"]["normalized"]
  # parameters are stored in float16: the card's float32 figures hold to ~1e-3
  assert r2 == pytest.approx(card["r2"], abs=5e-3)
  assert np.abs(y - pred).mean() == pytest.approx(card["mae"], rel=2e-2)
  assert shipped.num_members > 1 and shipped.spread_threshold is not None
  assert {"dos", "cv300_J_per_K_mol"} <= set(shipped.std_scale)
