"""Reader for the Mat2Spec / Xtal2DoS data layout (the one their code reads eDoS from).

A folder with the ids in a CSV, the labels as one `.npy` matrix aligned with it, an
optional energy grid, and the structures as one pymatgen JSON per id or one pickle
(see `read_mat2spec` for the file names).
"""

import csv
import glob
import os
import pickle
from typing import Any, Mapping, Sequence

import ase
import numpy as np

from xtal2dos_jax.core.errors import error_text, InputError
from xtal2dos_jax.input_pipeline import structures as structures_lib
from xtal2dos_jax.input_pipeline.readers.raw_dataset import RawDataset
from xtal2dos_jax.input_pipeline.readers.validation import check_label_shape

# Column names that may hold crystal ids (CSV files).
_ID_COLUMNS = ("mpid", "mp_id", "material_id", "id", "mpids", "ids")


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
  """Raises InputError(name, ...) naming the first id that occurs twice."""
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

  Layout (`label_edos` may also be another `label_*` folder):

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
  check_label_shape(labels, l_y, npy_path)
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
