"""`load_raw_dataset`: the training data that `config.data` describes, read and validated.

Picks the reader for `config.data.format`, then applies the checks every format
shares: usable structures and label rows, unique ids, and the config's label grid.
Inputs that fail are never dropped silently: they are listed in
`RawDataset.skipped` and summarised in one warning.
"""

import logging

import ml_collections
import numpy as np

from xtal2dos_jax.core.errors import InputError
from xtal2dos_jax.input_pipeline import structures as structures_lib
from xtal2dos_jax.input_pipeline.readers.ase_db import read_ase_db
from xtal2dos_jax.input_pipeline.readers.mat2spec import read_mat2spec
from xtal2dos_jax.input_pipeline.readers.phonondos_csv import read_phonondos_csv
from xtal2dos_jax.input_pipeline.readers.raw_dataset import (embedded_dfpt_path, embedded_edos_path,
                                                             embedded_phdos_path, RawDataset)
from xtal2dos_jax.input_pipeline.readers.validation import (check_label_shape, label_row_problems,
                                                            summarise_skipped)

logger = logging.getLogger(__name__)

FORMATS = ("ase_db", "mat2spec", "phonondos_csv")


def load_raw_dataset(data_config: ml_collections.ConfigDict) -> RawDataset:
  """Reads the training data described by `config.data`, validated.

  Uses `data_config.format` (ase_db | mat2spec | phonondos_csv), `path`
  ("" = the embedded DFPT benchmark CSV for phonondos_csv, the embedded
  universal-potential phonon-DoS db for ase_db, the embedded eDoS sample for
  mat2spec), `l_y`, `label_key` (ase_db), `grid_start`/`grid_stop` (grid for
  phonondos_csv, and for sources without one).

  Every structure goes through `structures.validate_atoms` and every label
  row through `validate_labels`; failures are moved to `skipped`. An id that
  occurs twice for the same composition (the same material listed twice,
  e.g. from two source collections) keeps its first usable occurrence and
  the others are skipped, so ids stay unique and one material cannot land in
  both the training and the test split. One warning summarises all skips.

  Raises:
    InputError: unknown format, unreadable source, no labels, label length !=
      l_y, no usable crystal, one id used for different compositions, or a
      label grid (db metadata, energies_ev.npy) other than config.data's.
  """
  fmt = str(data_config.format)
  path = str(data_config.path or "")
  l_y = int(data_config.l_y)
  grid_start = float(data_config.grid_start)
  grid_stop = float(data_config.grid_stop)
  config_grid = np.linspace(grid_start, grid_stop, l_y)
  if fmt == "ase_db":
    raw = read_ase_db(path or embedded_phdos_path(), label_key=str(data_config.label_key),
                      l_y=l_y)
  elif fmt == "mat2spec":
    raw = read_mat2spec(path or embedded_edos_path(), l_y=l_y)
  else:  # phonondos_csv
    raw = read_phonondos_csv(path or embedded_dfpt_path(), config_grid)
  source = raw.source or path
  if raw.labels is None:
    raise InputError(source, "has no labels (config.data.label_key = "
                     f"{data_config.label_key!r})")
  check_label_shape(np.asarray(raw.labels), l_y, source, len(raw))

  bad: dict[int, str] = {}
  for i, (rid, atoms) in enumerate(zip(raw.ids, raw.structures)):
    try:
      structures_lib.validate_atoms(atoms, rid, check_overlap=False)
    except InputError as e:
      bad[i] = e.reason
  for i, reason in label_row_problems(np.asarray(raw.labels)).items():
    bad[i] = f"{bad[i]}; {reason}" if i in bad else reason
  # Ids must be unique (splits are saved by id).
  first: dict[str, int] = {}
  for i, rid in enumerate(raw.ids):
    if i in bad:
      continue
    if rid not in first:
      first[rid] = i
      continue
    a, b = raw.structures[first[rid]], raw.structures[i]
    if sorted(a.numbers.tolist()) != sorted(b.numbers.tolist()):
      raise InputError(source, f"duplicate id {rid!r} for different crystals "
                       f"({a.get_chemical_formula()} and "
                       f"{b.get_chemical_formula()})")
    bad[i] = ("duplicate id: same composition as the first entry with this "
              "id, which is kept")

  keep = [i for i in range(len(raw)) if i not in bad]
  skipped = list(raw.skipped) + [(raw.ids[i], bad[i]) for i in sorted(bad)]
  total = len(raw) + len(raw.skipped)
  if not keep:
    detail = f" (first: {skipped[0][0]}: {skipped[0][1]})" if skipped else ""
    raise InputError(source, f"no usable crystals among {total}{detail}")
  if skipped:
    logger.warning("%s", summarise_skipped(skipped, total, source))
  data = raw.subset(keep)
  data.skipped = skipped
  if data.grid is None:
    data.grid = config_grid.astype(np.float32)
  elif not np.allclose(data.grid, config_grid, rtol=1e-4, atol=1e-4 * max(
      1.0, abs(grid_stop - grid_start))):
    # Training, evaluation and prediction must all use one grid; predict only has
    # the config's, so data on another grid is refused rather than trained on.
    g = np.asarray(data.grid, np.float64)
    uneven = ("" if np.allclose(g, np.linspace(g[0], g[-1], len(g)), rtol=1e-4,
                                atol=1e-4 * max(1.0, abs(g[-1] - g[0])))
              else " (not evenly spaced: resample the labels onto an even grid)")
    raise InputError(source, f"label grid {g[0]:g}..{g[-1]:g} ({len(g)} points)"
                     f"{uneven} does not match the config's grid {grid_start:g}.."
                     f"{grid_stop:g} ({l_y} points); set config.data.grid_start="
                     f"{g[0]:g}, config.data.grid_stop={g[-1]:g} and "
                     f"config.data.l_y={len(g)}")
  return data
