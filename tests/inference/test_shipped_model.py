"""The models shipped in the package: each loads with no workdir and no training, and
predicts its own test split (read from the shipped dataset by the ids the model keeps) to
the metrics its model card states."""
import json
import os

import chex
import numpy as np
import pytest
from ase.build import bulk

from xtal2dos_jax import Predictor
from xtal2dos_jax.inference import pretrained
from xtal2dos_jax.input_pipeline import run_data
from xtal2dos_jax.physics import thermodynamics

SHIPPED = pretrained.available(pretrained.PACKAGE_DIR)


def test_the_default_and_the_electronic_sample_are_shipped():
  assert pretrained.DEFAULT in SHIPPED and "edos_sample" in SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_reproduces_its_card_on_the_test_split(name):
  """R^2 and MAE (normalised scale, the mean of the members) recomputed in numpy."""
  path = pretrained.model_path(name, pretrained.PACKAGE_DIR)
  shipped = pretrained.load_exported(path)
  config = shipped.config
  with open(os.path.join(path, "test_ids.json")) as f:
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
  assert "dos" in shipped.std_scale


def test_electronic_sample_predicts_gaps_and_the_fermi_level_dos():
  """The eDoS sample model: band gap and DoS at 0 eV per member are
  `thermodynamics.electronic_properties` of that member's DoS; stds carry the model's
  factors."""
  p = Predictor.pretrained("edos_sample", dir=pretrained.PACKAGE_DIR)
  pred = p.predict([bulk("Si", "diamond", a=5.43), bulk("Cu", "fcc", a=3.61)])
  assert pred.kind == "electronic" and pred.num_members == p.exported.num_members
  each = [thermodynamics.electronic_properties(pred.grid, m) for m in pred.dos_members]
  for key in ("band_gap_eV", "dos_at_fermi_level"):
    values = np.stack([e[key] for e in each])
    chex.assert_trees_all_close(pred.thermodynamics[key], values.mean(0), rtol=1e-9)
    chex.assert_trees_all_close(pred.thermodynamics_std[key],
                                values.std(0) * p.std_scale.get(key, 1.0), rtol=1e-9)
  assert ("gamma_mJ_per_mol_K2" in pred.thermodynamics) == pred.physical_units
  assert set(pred.columns()) >= {"band_gap_eV", "band_gap_eV_std", "dos_at_fermi_level"}
