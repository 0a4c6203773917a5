"""Reader for ASE databases, the package's native format.

One row per crystal: the structure, the DoS in `row.data[label_key]` and scalar
key-value pairs (e.g. `cv300`) that become `RawDataset.extras`; the label grid,
if any, is in `db.metadata`. The embedded universal-potential phonon-DoS set is
stored this way.
"""

import collections
import os
from typing import Any, Mapping

import ase.db
import numpy as np

from xtal2dos_jax.core.errors import error_text, InputError
from xtal2dos_jax.input_pipeline.readers.raw_dataset import RawDataset

# Keys of db.metadata that may hold the label grid (first one found is used).
_GRID_METADATA_KEYS = ("freq_cm", "grid", "energies_ev", "energy_ev")


def _is_number(value: Any) -> bool:
  """A real number (bools are flags, not extras)."""
  return (isinstance(value, (int, float, np.integer, np.floating))
          and not isinstance(value, (bool, np.bool_)))


def read_ase_db(path: str, label_key: str = "dos",
                l_y: int | None = None) -> RawDataset:
  """Reads an ASE database (`ase.db.connect`) with labels in `row.data`.

  Args:
    path: the database file (SQLite `.db`, or ASE `.json` db).
    label_key: key of the label array in `row.data`.
    l_y: expected label length (config.data.l_y); None = the most common one.

  Returns:
    ids from the `material_id` key (else the row id), labels float32 [N, l_y]
    (None if no row has `label_key`), grid from `db.metadata['freq_cm']` (or
    'grid' / 'energies_ev') if present, extras = every numeric key-value pair
    present in all rows. Rows without the label or with a label of the wrong
    length go to `skipped`. Ids are returned as stored, duplicates included
    (`load_raw_dataset` resolves them).

  Raises:
    InputError: missing or unreadable file, non-1-D labels, or no row with a
      label of length `l_y`.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    # ase.db.connect would silently create an empty database.
    raise InputError(path, "no such file")
  if os.path.getsize(path) == 0:
    # SQLite would treat it as a new database and ASE would write tables.
    raise InputError(path, "file is empty")
  try:
    db = ase.db.connect(path, create_indices=False)
    rows = list(db.select())
    metadata = db.metadata
  except Exception as e:  # sqlite3 / json errors on a non-database file.
    raise InputError(path, f"not a readable ASE database: "
                     f"{error_text(e)}") from None

  ids, atoms_list, labels, kvps, skipped = [], [], [], [], []
  for row in rows:
    rid = str(row.get("material_id", row.id))
    name = f"{path} row {row.id} ({rid})"
    try:
      atoms = row.toatoms()
      data = row.data
    except Exception as e:  # A corrupt row must not sink the whole db.
      skipped.append((rid, f"db row {row.id} unreadable: {error_text(e)}"))
      continue
    label = data.get(label_key) if label_key else None
    if label is not None:
      label = np.asarray(label)
      if label.ndim != 1:
        raise InputError(name, f"data[{label_key!r}] has shape "
                         f"{label.shape}, expected a 1-D array")
    ids.append(rid)
    atoms_list.append(atoms)
    labels.append(label)
    kvps.append(row.key_value_pairs)

  keep = list(range(len(ids)))
  label_matrix = None
  if any(label is not None for label in labels):
    lengths = collections.Counter(len(y) for y in labels if y is not None)
    expected = int(l_y) if l_y is not None else lengths.most_common(1)[0][0]
    if expected not in lengths:
      found = ", ".join(str(k) for k in sorted(lengths))
      raise InputError(path, f"data[{label_key!r}] has length {found}, but "
                       f"config.data.l_y = {expected}")
    keep = []
    for i, label in enumerate(labels):
      if label is None:
        skipped.append((ids[i], f"no data[{label_key!r}] label"))
      elif len(label) != expected:
        skipped.append((ids[i], f"data[{label_key!r}] has length {len(label)}"
                        f", expected {expected}"))
      else:
        keep.append(i)
    label_matrix = (np.stack([labels[i] for i in keep]).astype(np.float32)
                    if keep else np.zeros((0, expected), np.float32))

  extras = {}
  if keep:
    common = set(k for k, v in kvps[keep[0]].items() if _is_number(v))
    for i in keep[1:]:
      common &= set(k for k, v in kvps[i].items() if _is_number(v))
    for key in sorted(common):
      extras[key] = np.asarray([kvps[i][key] for i in keep], dtype=np.float64)

  grid = None
  for key in _GRID_METADATA_KEYS:
    if isinstance(metadata, Mapping) and key in metadata:
      grid = np.asarray(metadata[key], dtype=np.float32).reshape(-1)
      break
  if (grid is not None and label_matrix is not None
      and len(grid) != label_matrix.shape[1]):
    raise InputError(path, f"db.metadata grid has {len(grid)} points but the "
                     f"labels have {label_matrix.shape[1]}")
  return RawDataset(ids=[ids[i] for i in keep],
                    structures=[atoms_list[i] for i in keep],
                    labels=label_matrix, grid=grid, extras=extras,
                    skipped=skipped, source=path)
