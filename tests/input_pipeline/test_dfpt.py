"""The shipped DFPT phonon-DoS benchmark (the paper's Table 1 data) and its default config."""
import csv
import ast
import os

import chex
import jax
import numpy as np

from configs import phdos, phdos_chgnet, phdos_ensemble
from xtal2dos_jax.input_pipeline import batching, readers, run_data
from xtal2dos_jax.training import model_setup


def _raw_rows():
  """The CSV's rows parsed with the standard library only (the test's own reader)."""
  csv.field_size_limit(2**31 - 1)
  with open(readers.embedded_dfpt_path(), newline="", encoding="utf-8") as f:
    return list(csv.DictReader(f))


def test_dfpt_reader_on_the_shipped_file():
  ds = readers.load_raw_dataset(phdos.get_config().data)
  rows = _raw_rows()
  assert len(rows) == 1521
  assert len(ds) == 1521 and not ds.skipped
  assert ds.ids == [r["mp_id"] for r in rows]
  assert len(set(ds.ids)) == 1521
  chex.assert_shape(ds.labels, (1521, 51))
  chex.assert_trees_all_close(ds.grid, np.arange(0, 1001, 20, dtype=np.float32))
  # The file's own grid is the config's grid, so the resampling changes nothing.
  freq = np.asarray(ast.literal_eval(rows[0]["phfreq"]), np.float64)
  np.testing.assert_allclose(freq, np.arange(0, 1001, 20))
  for k in (0, 700, 1520):
    dos = np.asarray(ast.literal_eval(rows[k]["phdos"]), np.float64)
    chex.assert_trees_all_close(ds.labels[k], dos.astype(np.float32), atol=1e-7)
  # Max-normalised labels (the README's processing): every crystal's maximum is 1.
  chex.assert_trees_all_close(ds.labels.max(axis=1), np.ones(1521, np.float32), atol=1e-6)
  assert ds.labels.min() >= 0.0
  # Structures: 2-40 atoms per cell, as the README says.
  n_atoms = np.array([len(a) for a in ds.structures])
  assert n_atoms.min() == 2 and n_atoms.max() == 40
  first = ast.literal_eval(rows[0]["structure"])
  np.testing.assert_array_equal(ds.structures[0].numbers, first["numbers"])


def test_default_split_has_the_paper_sizes(tmp_path):
  config = phdos.get_config()
  config.data.cache_dir = str(tmp_path)
  rd = run_data.prepare_run_data(config)
  sizes = {name: len(s.graphs) for name, s in rd.splits.items()}
  assert sizes == {"train": 1217, "validation": 152, "test": 152}
  assert not rd.skipped


def test_universal_potential_set_is_one_config_away():
  config = phdos_chgnet.get_config()
  ds = readers.load_raw_dataset(config.data)
  assert len(ds) == 1024 and "cv300" in ds.extras
  assert config.model.to_dict() == phdos.get_config().model.to_dict()


def test_five_folds_test_every_crystal_once(tmp_path):
  config = phdos.get_config()
  config.data.cache_dir = str(tmp_path)
  config.data.num_folds = 5
  tested = []
  for fold in range(5):
    config.data.fold = fold
    rd = run_data.prepare_run_data(config)
    ids = {name: set(s.graphs.ids) for name, s in rd.splits.items()}
    assert not (ids["train"] & ids["validation"] or ids["train"] & ids["test"]
                or ids["validation"] & ids["test"])
    assert sum(map(len, ids.values())) == 1521
    assert len(ids["test"]) in (304, 305) and len(ids["validation"]) == 152
    tested += list(ids["test"])
  assert sorted(tested) == sorted(readers.load_raw_dataset(config.data).ids)


def test_paper_config_builds_and_trains(tmp_path):
  """The published recipe as configured, shrunk only in size and length."""
  from configs import phdos_paper
  from xtal2dos_jax import models
  from xtal2dos_jax.training import train
  config = phdos_paper.get_config()
  assert (config.model.d_model, config.model.num_heads, config.model.decoder_layers,
          config.train.batch_size, config.train.num_epochs) == (512, 8, 6, 128, 200)
  full = models.create_model(config)
  assert full.decoder.num_layers == 6 and full.encoder.num_layers == 3
  config.model.d_model, config.model.num_heads, config.model.ff_dim = 16, 2, 32
  config.model.decoder_layers = 1
  config.data.limit, config.train.batch_size, config.train.num_epochs = 40, 16, 1
  config.train.progress = False
  summary = train.train_and_evaluate(config, str(tmp_path / "paper"))
  assert np.isfinite(summary["metrics"]["test"]["normalized"]["r2"])
  lines = open(tmp_path / "paper" / "metrics.jsonl").read().splitlines()
  assert len(lines) == 1  # 32 training crystals, batch 16: 2 steps, still warming up
  import json
  lr = json.loads(lines[0])["learning_rate"]
  np.testing.assert_allclose(lr, 1.0 / np.sqrt(16) * 2 * 300 ** -1.5, rtol=1e-5)


def test_public_code_split_file_covers_the_shipped_set(tmp_path):
  """configs/splits/dfpt_xtal2dos_public.json (the split the public Xtal2DoS code draws)
  names every DFPT crystal once: 1,216 / 153 / 152."""
  config = phdos.get_config()
  config.data.cache_dir = str(tmp_path)
  config.data.split_file = os.path.join(os.path.dirname(phdos.__file__), "splits",
                                        "dfpt_xtal2dos_public.json")
  rd = run_data.prepare_run_data(config)
  sizes = {name: len(s.graphs) for name, s in rd.splits.items()}
  assert sizes == {"train": 1216, "validation": 153, "test": 152}


def test_ensemble_config_is_five_mlp_heads_stacked_on_a_member_axis():
  """configs/phdos_ensemble.py: the MLP head, 5 members with their own initialisation
  (seeds seed..seed+4) stacked on a leading axis, 60 epochs, encoder dropout 0.2, the
  default data."""
  config = phdos_ensemble.get_config()
  assert config.model.decoder == "mlp" and config.train.ensemble_size == 5
  assert config.train.num_epochs == 60 and config.model.encoder_dropout == 0.2
  assert config.data == phdos.get_config().data
  config.model.d_model, config.model.ff_dim = 16, 32
  budget = batching.Budget(n_node=64, n_edge=640, n_graph=5, max_atoms=16)
  state = model_setup.create_train_state(config, budget, 3)
  assert model_setup.ensemble_size_of_state(state) == 5
  leaves = jax.tree.leaves(state.params)
  assert all(x.shape[0] == 5 for x in leaves)
  kernels = [x for x in leaves if x.ndim == 3]           # [member, in, out] matrices
  assert all(len({float(np.abs(x[k]).sum()) for k in range(5)}) == 5 for x in kernels)
