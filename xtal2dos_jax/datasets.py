"""Labelled crystal datasets from the layouts users have, plus seeded splits.

Readers return a `RawDataset`: structures as `ase.Atoms`, DoS labels in their
original scale (float32 [N, l_y]) and the x-axis grid. Inputs that cannot be
used are never dropped silently: they go to `RawDataset.skipped` as
(id or path, one-line reason), and `load_raw_dataset` logs one warning that
summarises them. Errors that make the whole input unusable (missing files,
label matrix / id count mismatch, label length != config, unknown format) are
`InputError`s naming the input.

Supported layouts (DESIGN.md section 3.3):
* `read_ase_db`: ASE database, labels in `row.data[label_key]` (native format;
  the embedded phonon-DoS set).
* `read_mat2spec`: Mat2Spec / Xtal2DoS layout (`label_edos/mpids.csv`,
  `label_edos/total_dos_*.npy`, structures as
  `materials_with_edos/dos_<id>.json` or one pickle).
* `read_phonondos_csv`: the phononDoS (e3nn tutorial) CSV, resampled onto the
  model grid.
* `read_structure_folder`: unlabelled structure files, for prediction.
"""

import collections
import csv
import dataclasses
import glob
import logging
import os
import pickle
import re
import sys
from typing import Any, Iterable, Mapping, Sequence

import ase
import ase.db
import numpy as np

from xtal2dos_jax import structures as structures_lib
from xtal2dos_jax.errors import InputError, error_text

logger = logging.getLogger(__name__)

FORMATS = ("ase_db", "mat2spec", "phonondos_csv")
SPLITS = ("train", "validation", "test")
# Keys of db.metadata that may hold the label grid (first one found is used).
_GRID_METADATA_KEYS = ("freq_cm", "grid", "energies_ev", "energy_ev")
# Column names that may hold crystal ids (CSV files).
_ID_COLUMNS = ("mpid", "mp_id", "material_id", "id", "mpids", "ids")
# At most this many skipped entries are listed in the summary warning.
_MAX_LISTED = 10


@dataclasses.dataclass
class RawDataset:
  """Crystals with (optional) DoS labels, before featurisation and scaling.

  Attributes:
    ids: one string id per crystal (material id, row id or file path).
    structures: the crystals, aligned with `ids`.
    labels: float32 [N, l_y] DoS in the original scale (units of the source),
      or None for unlabelled structures (prediction).
    grid: float32 [l_y], the x-axis of the labels (cm^-1 or eV), or None.
    extras: per-crystal float arrays [N] aligned with `ids` (e.g. `cv300`).
    skipped: (id or path, one-line reason) of inputs that were reported and
      left out.
    source: where the data came from (path), for messages.
  """
  ids: list[str]
  structures: list[ase.Atoms]
  labels: np.ndarray | None = None
  grid: np.ndarray | None = None
  extras: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
  skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)
  source: str = ""

  def __post_init__(self):
    n = len(self.ids)
    if len(self.structures) != n:
      raise ValueError(f"{n} ids but {len(self.structures)} structures")
    if self.labels is not None and len(self.labels) != n:
      raise ValueError(f"{n} ids but {len(self.labels)} label rows")
    for key, value in self.extras.items():
      if len(value) != n:
        raise ValueError(f"{n} ids but extras[{key!r}] has {len(value)}")

  def __len__(self) -> int:
    return len(self.ids)

  def subset(self, indices: Sequence[int] | np.ndarray) -> "RawDataset":
    """The crystals at `indices` (ints, in that order); keeps `skipped`."""
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    return RawDataset(
        ids=[self.ids[i] for i in idx],
        structures=[self.structures[i] for i in idx],
        labels=None if self.labels is None else self.labels[idx],
        grid=self.grid,
        extras={k: np.asarray(v)[idx] for k, v in self.extras.items()},
        skipped=list(self.skipped),
        source=self.source)


def embedded_dfpt_path() -> str:
  """Path of the DFPT phonon-DoS benchmark (the paper's Table 1 set, phononDoS CSV)
  shipped inside the package."""
  return os.path.join(os.path.dirname(os.path.abspath(__file__)), "data",
                      "phdos_dfpt", "data.csv")


def embedded_phdos_path() -> str:
  """Path of the universal-potential phonon-DoS ASE database shipped inside the package."""
  return os.path.join(os.path.dirname(os.path.abspath(__file__)), "data",
                      "phdos", "phdos.db")


def embedded_edos_path() -> str:
  """Path of the eDoS sample (Mat2Spec layout) shipped inside the package."""
  return os.path.join(os.path.dirname(os.path.abspath(__file__)), "data",
                      "edos_mat2spec")


# --------------------------------------------------------------------------
# Labels.


def _check_label_shape(labels: np.ndarray, l_y: int | None, name: str,
                       n: int | None = None) -> None:
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
  _check_label_shape(labels, l_y, name, len(ids))
  return [(str(ids[i]), reason)
          for i, reason in _label_row_problems(labels).items()]


def _label_row_problems(labels: np.ndarray) -> dict[int, str]:
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


# --------------------------------------------------------------------------
# ASE database.


def _is_number(value: Any) -> bool:
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


# --------------------------------------------------------------------------
# Mat2Spec layout.


def _read_id_csv(csv_path: str, n_labels: int | None) -> list[str]:
  """Ids from a one-column (or `mpid`-column) CSV, header optional."""
  try:
    with open(csv_path, newline="", encoding="utf-8") as f:
      rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
  except (OSError, UnicodeDecodeError, csv.Error) as e:
    raise InputError(csv_path,
                     f"cannot read id CSV: {error_text(e)}") from None
  if not rows:
    raise InputError(csv_path, "id CSV is empty")
  header = [c.strip().lower() for c in rows[0]]
  col = next((header.index(c) for c in _ID_COLUMNS if c in header), None)
  if col is not None:
    body = rows[1:]
  else:
    col = 0
    # Unknown header name: a header iff that makes the counts match.
    has_header = n_labels is None or len(rows) - 1 == n_labels
    body = rows[1:] if has_header else rows
  ids = []
  for i, r in enumerate(body):
    value = r[col].strip() if col < len(r) else ""
    if not value:
      raise InputError(csv_path, f"empty id in data row {i}")
    ids.append(value)
  return ids


def _check_unique(ids: Sequence[str], name: str) -> None:
  seen = {}
  for i, rid in enumerate(ids):
    if rid in seen:
      raise InputError(name, f"duplicate id {rid!r} (entries {seen[rid]} and "
                       f"{i})")
    seen[rid] = i


def _to_atoms(obj: Any, name: str) -> ase.Atoms:
  """A pickled structure (ase.Atoms, pymatgen/ASE dict, object with as_dict)."""
  if isinstance(obj, ase.Atoms):
    return obj.copy()
  if not isinstance(obj, Mapping) and callable(getattr(obj, "as_dict", None)):
    obj = obj.as_dict()  # a pymatgen Structure, if pymatgen is installed
  return structures_lib.atoms_from_dict(obj, name)


def _load_structure_pickle(pkl_path: str, ids: Sequence[str]
                           ) -> tuple[dict[int, ase.Atoms],
                                      list[tuple[str, str]]]:
  """Structures for `ids` from one pickle (dict id->structure or list)."""
  # Note: unpickling runs code from the file; only load pickles you trust.
  try:
    with open(pkl_path, "rb") as f:
      content = pickle.load(f)
  except ModuleNotFoundError as e:
    raise InputError(pkl_path, f"unpickling needs the Python module "
                     f"{e.name!r}; store the structures as pymatgen dicts "
                     "(Structure.as_dict()) or ase.Atoms instead") from None
  except Exception as e:  # pickle raises many types on corrupt input.
    raise InputError(pkl_path, f"could not be unpickled: "
                     f"{error_text(e)}") from None
  if isinstance(content, np.ndarray) and content.dtype == object:
    content = list(content.reshape(-1))
  out, skipped = {}, []
  if isinstance(content, Mapping):
    lookup = {str(k): v for k, v in content.items()}
    for i, rid in enumerate(ids):
      if rid not in lookup:
        skipped.append((rid, f"no structure for this id in {pkl_path}"))
        continue
      try:
        out[i] = _to_atoms(lookup[rid], rid)
      except InputError as e:
        skipped.append((rid, f"{pkl_path}: {e.reason}"))
  elif isinstance(content, (list, tuple)):
    if len(content) != len(ids):
      raise InputError(pkl_path, f"holds {len(content)} structures but the "
                       f"id CSV has {len(ids)} ids")
    for i, (rid, obj) in enumerate(zip(ids, content)):
      try:
        out[i] = _to_atoms(obj, rid)
      except InputError as e:
        skipped.append((rid, f"{pkl_path}: {e.reason}"))
  else:
    raise InputError(pkl_path, f"holds a {type(content).__name__}; expected a "
                     "dict id -> structure or a list aligned with the id CSV")
  return out, skipped


def read_mat2spec(path: str, l_y: int | None = None) -> RawDataset:
  """Reads the Mat2Spec / Xtal2DoS data layout.

  Layout (DESIGN.md 3.3; `label_edos` may also be another `label_*` folder):

      label_edos/mpids.csv          ids, header `mpid`
      label_edos/total_dos_*.npy    float [N, l_y], row i = csv row i
      label_edos/energies_ev.npy    optional grid [l_y]
      materials_with_edos/dos_<id>.json   {"structure": pymatgen dict}
      or  <one>.pkl                 dict id -> structure, or a list aligned
                                    with the csv (pymatgen dicts / ase.Atoms)

  Args:
    path: the layout's root folder.
    l_y: expected label length; also picks `total_dos_<l_y>.npy` when there
      are several label matrices.

  Returns:
    RawDataset; ids whose structure is missing or unreadable are in `skipped`.

  Raises:
    InputError: missing pieces, label rows != ids (names the npy and both
      counts), label length != l_y, duplicate ids (names the id).
  """
  path = os.fspath(path)
  if not os.path.isdir(path):
    raise InputError(path, "not a directory (expected the Mat2Spec layout "
                     "with label_edos/mpids.csv)")
  candidates = ([os.path.join(path, "label_edos")]
                + sorted(glob.glob(os.path.join(path, "label_*"))) + [path])
  label_dir = next((d for d in candidates
                    if os.path.isfile(os.path.join(d, "mpids.csv"))), None)
  if label_dir is None:
    raise InputError(path, "no label_edos/mpids.csv (Mat2Spec layout)")
  csv_path = os.path.join(label_dir, "mpids.csv")

  npys = sorted(glob.glob(os.path.join(label_dir, "total_dos_*.npy")))
  if not npys:
    raise InputError(label_dir, "no total_dos_*.npy label matrix")
  if len(npys) > 1:
    wanted = (os.path.join(label_dir, f"total_dos_{int(l_y)}.npy")
              if l_y is not None else None)
    if wanted not in npys:
      names = ", ".join(os.path.basename(p) for p in npys)
      raise InputError(label_dir, f"several label matrices ({names}); set "
                       "config.data.l_y to pick total_dos_<l_y>.npy")
    npys = [wanted]
  npy_path = npys[0]
  try:
    labels = np.load(npy_path, allow_pickle=False)
  except Exception as e:  # ValueError / OSError / EOFError on corrupt files.
    raise InputError(npy_path, f"cannot load label matrix: "
                     f"{error_text(e)}") from None
  if labels.ndim != 2:
    raise InputError(npy_path, f"label matrix has shape {labels.shape}, "
                     "expected 2-D [crystals, l_y]")
  ids = _read_id_csv(csv_path, labels.shape[0])
  if labels.shape[0] != len(ids):
    raise InputError(npy_path, f"has {labels.shape[0]} label rows but "
                     f"{csv_path} has {len(ids)} ids")
  _check_label_shape(labels, l_y, npy_path)
  _check_unique(ids, csv_path)

  grid = None
  grid_path = os.path.join(label_dir, "energies_ev.npy")
  if os.path.isfile(grid_path):
    try:
      grid = np.load(grid_path, allow_pickle=False).astype(np.float32)
    except Exception as e:
      raise InputError(grid_path, f"cannot load: {error_text(e)}") from None
    grid = grid.reshape(-1)
    if len(grid) != labels.shape[1]:
      raise InputError(grid_path, f"has {len(grid)} energies but the labels "
                       f"have {labels.shape[1]} points")

  json_dirs = ([os.path.join(path, "materials_with_edos")]
               + sorted(glob.glob(os.path.join(path, "materials_with_*"))))
  json_dir = next((d for d in json_dirs if os.path.isdir(d)), None)
  found: dict[int, ase.Atoms] = {}
  skipped: list[tuple[str, str]] = []
  if json_dir is not None:
    for i, rid in enumerate(ids):
      file = os.path.join(json_dir, f"dos_{rid}.json")
      if not os.path.isfile(file) and os.path.isfile(
          os.path.join(json_dir, f"{rid}.json")):
        file = os.path.join(json_dir, f"{rid}.json")
      if not os.path.isfile(file):
        skipped.append((rid, f"structure file {file} is missing"))
        continue
      try:
        found[i] = structures_lib.read_structure(file)
      except InputError as e:
        skipped.append((rid, f"{file}: {e.reason}"))
  else:
    pkls = sorted(glob.glob(os.path.join(path, "*.pkl"))
                  + glob.glob(os.path.join(path, "*", "*.pkl")))
    if not pkls:
      raise InputError(path, "no structures: neither materials_with_edos/ "
                       "nor a .pkl file of structures")
    if len(pkls) > 1:
      raise InputError(path, "several .pkl files (" + ", ".join(
          os.path.relpath(p, path) for p in pkls) + "); keep one")
    found, skipped = _load_structure_pickle(pkls[0], ids)

  keep = sorted(found)
  return RawDataset(ids=[ids[i] for i in keep],
                    structures=[found[i] for i in keep],
                    labels=labels[keep].astype(np.float32), grid=grid,
                    skipped=skipped, source=path)


# --------------------------------------------------------------------------
# phononDoS tutorial CSV.

_ARRAY_STRIP = re.compile(r"array\(|dtype\s*=\s*\w+|[\[\](),]")


def _parse_array(text: str) -> np.ndarray:
  """'[0.1 0.2]', '[0.1, 0.2]', 'array([...])' -> float64 1-D array."""
  tokens = _ARRAY_STRIP.sub(" ", str(text)).split()
  if not tokens:
    raise ValueError("empty array")
  return np.asarray([float(t) for t in tokens], dtype=np.float64)


def read_phonondos_csv(path: str, grid: np.ndarray) -> RawDataset:
  """Reads a phononDoS-tutorial CSV and resamples the DoS onto `grid`.

  Columns: `structure` (an `Atoms(...)` repr with positions, an
  `Atoms.todict()` repr or a JSON dict; parsed without eval), `phfreq` and
  `phdos` (arrays as strings), optional id column (`id`, `mp_id`,
  `material_id`, `mpid`; else the 0-based row index).

  Args:
    path: the CSV file.
    grid: the model's frequency grid [l_y] (same units as `phfreq`).

  Returns:
    RawDataset with labels float32 [N, l_y] = np.interp of (phfreq, phdos)
    at `grid`, zero outside the input frequency range. Rows that cannot be
    parsed are in `skipped`.

  Raises:
    InputError: missing/unreadable file or missing columns.
  """
  path = os.fspath(path)
  grid = np.asarray(grid, dtype=np.float64).reshape(-1)
  if not os.path.isfile(path):
    raise InputError(path, "no such file")
  csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
  try:
    with open(path, newline="", encoding="utf-8") as f:
      reader = csv.DictReader(f)
      columns = list(reader.fieldnames or [])
      rows = list(reader)
  except (OSError, UnicodeDecodeError, csv.Error) as e:
    raise InputError(path, f"cannot read CSV: {error_text(e)}") from None
  missing = [c for c in ("structure", "phfreq", "phdos") if c not in columns]
  if missing:
    raise InputError(path, f"missing column(s) {', '.join(missing)} (found: "
                     f"{', '.join(columns) or 'none'})")
  id_cols = [c for c in ("id", "mp_id", "material_id", "mpid") if c in columns]

  ids, atoms_list, labels, skipped = [], [], [], []
  for i, row in enumerate(rows):
    rid = next((row[c].strip() for c in id_cols if (row.get(c) or "").strip()),
               str(i))
    try:
      atoms = structures_lib.parse_atoms_string(row.get("structure") or "",
                                                rid)
    except InputError as e:
      skipped.append((rid, f"{path} row {i}: {e.reason}"))
      continue
    try:
      freq = _parse_array(row.get("phfreq") or "")
      dos = _parse_array(row.get("phdos") or "")
    except ValueError as e:
      skipped.append((rid, f"{path} row {i}: cannot parse phfreq/phdos "
                      f"({error_text(e)})"))
      continue
    if len(freq) != len(dos):
      skipped.append((rid, f"{path} row {i}: phfreq has {len(freq)} values, "
                      f"phdos {len(dos)}"))
      continue
    if not np.all(np.isfinite(freq)):
      skipped.append((rid, f"{path} row {i}: phfreq has NaN/inf"))
      continue
    order = np.argsort(freq, kind="stable")
    labels.append(np.interp(grid, freq[order], dos[order], left=0.0,
                            right=0.0))
    ids.append(rid)
    atoms_list.append(atoms)
  label_matrix = (np.stack(labels).astype(np.float32) if labels
                  else np.zeros((0, len(grid)), np.float32))
  return RawDataset(ids=ids, structures=atoms_list, labels=label_matrix,
                    grid=grid.astype(np.float32), skipped=skipped,
                    source=path)


# --------------------------------------------------------------------------
# Structure files (prediction).


def read_structure_folder(pattern_or_dir: str,
                          validate: bool = True) -> RawDataset:
  """Reads structure files for prediction (no labels).

  Args:
    pattern_or_dir: a glob pattern (`my_cifs/*.cif`, `**` allowed) or a
      directory (every non-hidden file in it, not recursive).
    validate: also run `structures.validate_atoms` and skip failures.

  Returns:
    RawDataset with ids = file paths (`path@i` for the i-th structure of a
    multi-structure file) and labels None; unreadable files are in `skipped`
    with one-line reasons.

  Raises:
    InputError(pattern_or_dir, ...): nothing matched, or nothing readable.
  """
  pattern = os.fspath(pattern_or_dir)
  if os.path.isdir(pattern):
    files = sorted(os.path.join(pattern, f) for f in os.listdir(pattern)
                   if not f.startswith("."))
  else:
    files = sorted(glob.glob(pattern, recursive=True))
  files = [f for f in files if os.path.isfile(f)]
  if not files:
    raise InputError(pattern, "no files match")
  ids, atoms_list, skipped = [], [], []
  for file in files:
    try:
      images = structures_lib.read_structures(file)
    except InputError as e:
      skipped.append((file, e.reason))
      continue
    for k, atoms in enumerate(images):
      rid = file if len(images) == 1 else f"{file}@{k}"
      if validate:
        try:
          structures_lib.validate_atoms(atoms, rid, check_overlap=False)
        except InputError as e:
          skipped.append((rid, e.reason))
          continue
      ids.append(rid)
      atoms_list.append(atoms)
  if not ids:
    first = f"{skipped[0][0]}: {skipped[0][1]}" if skipped else ""
    raise InputError(pattern, f"none of the {len(files)} file(s) holds a "
                     f"usable structure (first: {first})")
  return RawDataset(ids=ids, structures=atoms_list, labels=None,
                    skipped=skipped, source=pattern)


# --------------------------------------------------------------------------
# Config-driven loading.


def _summarise_skipped(skipped: Sequence[tuple[str, str]], total: int,
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


def load_raw_dataset(data_config: Any) -> RawDataset:
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
  fmt = str(getattr(data_config, "format", "ase_db"))
  path = str(getattr(data_config, "path", "") or "")
  l_y = int(data_config.l_y)
  grid_start = float(getattr(data_config, "grid_start", 0.0))
  grid_stop = float(getattr(data_config, "grid_stop", float(l_y - 1)))
  config_grid = np.linspace(grid_start, grid_stop, l_y)
  if fmt == "ase_db":
    raw = read_ase_db(path or embedded_phdos_path(),
                      label_key=str(getattr(data_config, "label_key", "dos")),
                      l_y=l_y)
  elif fmt == "mat2spec":
    raw = read_mat2spec(path or embedded_edos_path(), l_y=l_y)
  elif fmt == "phonondos_csv":
    raw = read_phonondos_csv(path or embedded_dfpt_path(), config_grid)
  else:
    raise InputError("config.data.format", f"unknown format {fmt!r}; expected "
                     f"one of {', '.join(FORMATS)}")
  source = raw.source or path
  if raw.labels is None:
    raise InputError(source, "has no labels (config.data.label_key = "
                     f"{getattr(data_config, 'label_key', None)!r})")
  _check_label_shape(np.asarray(raw.labels), l_y, source, len(raw))

  bad: dict[int, str] = {}
  for i, (rid, atoms) in enumerate(zip(raw.ids, raw.structures)):
    try:
      structures_lib.validate_atoms(atoms, rid, check_overlap=False)
    except InputError as e:
      bad[i] = e.reason
  for i, reason in _label_row_problems(np.asarray(raw.labels)).items():
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
    logger.warning("%s", _summarise_skipped(skipped, total, source))
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


# --------------------------------------------------------------------------
# Splits.


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
