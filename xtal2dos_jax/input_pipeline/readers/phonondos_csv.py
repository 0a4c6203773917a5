"""Reader for the phononDoS CSV of the e3nn phonon-DoS tutorial (the DFPT benchmark set).

One row per crystal: the structure as a string (an `Atoms(...)` repr, an
`Atoms.todict()` repr or JSON), the DoS as two array strings `phfreq` / `phdos`
on the row's own frequency points, and an optional id column. The structure
strings are parsed with `ast`, evaluating only literals and a few whitelisted
constructors, so a CSV cannot run code; the DoS is resampled onto the model grid.
"""

import ast
import csv
import functools
import os
import re
import sys
from typing import Any

import ase
import ase.io.jsonio
import numpy as np

from xtal2dos_jax.core.errors import error_text, InputError
from xtal2dos_jax.input_pipeline import structures as structures_lib
from xtal2dos_jax.input_pipeline.readers.raw_dataset import RawDataset

# --------------------------------------------------------------------------
# Structure strings: Atoms(...) / dict reprs, parsed without eval.

# Calls evaluated as their first argument (numpy arrays, ASE cells; dtype=... ignored).
_ARRAY_CALLS = {"array", "np.array", "numpy.array", "asarray", "np.asarray"}
_PASS_CALLS = {"Cell", "ase.cell.Cell"}
# Calls evaluated as their keyword dict (a positional argument is `symbols`).
_ATOMS_CALLS = {"Atoms", "ase.Atoms", "ase.atoms.Atoms"}
# The bare names a repr may hold.
_NAMES = {"True": True, "False": False, "None": None, "nan": float("nan"),
          "inf": float("inf")}


class _Unsupported:
  """Value of a call we do not evaluate (e.g. a calculator); never used."""

  def __init__(self, what: str):
    self.what = what


def _dotted(node: ast.AST) -> str:
  """The dotted name of a call's function (`np.array`), "?" for anything else."""
  if isinstance(node, ast.Name):
    return node.id
  if isinstance(node, ast.Attribute):
    return f"{_dotted(node.value)}.{node.attr}"
  return "?"


def _safe_eval(node: ast.AST) -> Any:
  """Evaluates literals, containers and a few whitelisted constructors."""
  if isinstance(node, ast.Expression):
    return _safe_eval(node.body)
  if isinstance(node, ast.Constant):
    return node.value
  if isinstance(node, (ast.List, ast.Tuple)):
    return [_safe_eval(e) for e in node.elts]
  if isinstance(node, ast.Dict):
    if any(k is None for k in node.keys):
      raise ValueError("'**' in a dict is not supported")
    return {_safe_eval(k): _safe_eval(v) for k, v in zip(node.keys,
                                                          node.values)}
  if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub,
                                                            ast.UAdd)):
    value = _safe_eval(node.operand)
    if not isinstance(value, (int, float)):
      raise ValueError("unary sign on a non-number")
    return -value if isinstance(node.op, ast.USub) else value
  if isinstance(node, ast.Name) and node.id in _NAMES:
    return _NAMES[node.id]
  if isinstance(node, ast.Call):
    fn = _dotted(node.func)
    if fn in _ARRAY_CALLS or fn in _PASS_CALLS:
      if not node.args:
        raise ValueError(f"{fn}() without arguments")
      return _safe_eval(node.args[0])  # dtype=... etc. are ignored
    if fn in _ATOMS_CALLS:
      if node.args:
        if len(node.args) > 1:
          raise ValueError("Atoms(...) with several positional arguments")
        kwargs = {"symbols": _safe_eval(node.args[0])}
      else:
        kwargs = {}
      for kw in node.keywords:
        if kw.arg is None:
          raise ValueError("'**' in Atoms(...) is not supported")
        kwargs[kw.arg] = _safe_eval(kw.value)
      return kwargs
    return _Unsupported(fn)
  raise ValueError(f"unsupported expression {type(node).__name__}")


def parse_atoms_string(text: str, name: str = "structure") -> ase.Atoms:
  """Parses a structure held in a string, without `eval`.

  Accepts JSON (a pymatgen / ASE dict, including ASE's own JSON encoding) and
  Python reprs: `Atoms(symbols='Si2', pbc=True, cell=[...], positions=[...])`
  or a dict like `{'numbers': array([14, 14]), 'positions': array(...), ...}`.
  The repr is parsed with `ast.parse` and only literals, lists/dicts and the
  constructors `array`/`Atoms`/`Cell` are evaluated, so no code runs. Used
  keys: symbols/numbers, positions/scaled_positions, cell, pbc.

  Raises:
    InputError: naming `name`, when the string is not such a structure (note
      that ASE's default `repr(atoms)` omits positions, which is rejected).
  """
  text = str(text).strip()
  if not text:
    raise InputError(name, "empty structure string")
  if text[0] in "{[":
    try:
      value = ase.io.jsonio.decode(text)
    except (ValueError, TypeError, KeyError):
      value = None
    else:
      if isinstance(value, ase.Atoms):
        return value
      return structures_lib.atoms_from_dict(value, name)
  try:
    tree = ast.parse(text, mode="eval")
    value = _safe_eval(tree)
  except (SyntaxError, ValueError, TypeError, RecursionError) as e:
    raise InputError(name, "structure string is neither JSON nor an "
                     f"Atoms(...)/dict repr: {error_text(e)}") from None
  if isinstance(value, _Unsupported):
    raise InputError(name, f"structure string calls {value.what}(...); only "
                     "Atoms(...) and dict reprs are supported")
  if not isinstance(value, dict):
    raise InputError(name, "structure string does not hold a structure "
                     f"(parsed to {type(value).__name__})")
  if "sites" not in value and "symbols" in value and not (
      "positions" in value or "scaled_positions" in value):
    raise InputError(name, "Atoms repr has no positions (repr(atoms) omits "
                     "them; store atoms.todict() or a file instead)")
  for key in ("numbers", "symbols", "positions", "scaled_positions", "cell",
              "pbc"):
    if isinstance(value.get(key), _Unsupported):
      raise InputError(name, f"cannot evaluate {key}={value[key].what}(...)")
  return structures_lib.atoms_from_dict(value, name)


# --------------------------------------------------------------------------
# The CSV.

# Removed from an array string before splitting it into numbers.
_ARRAY_STRIP = re.compile(r"array\(|dtype\s*=\s*\w+|[\[\](),]")


def _parse_array(text: str) -> np.ndarray:
  """'[0.1 0.2]', '[0.1, 0.2]', 'array([...])' -> float64 1-D array."""
  tokens = _ARRAY_STRIP.sub(" ", str(text)).split()
  if not tokens:
    raise ValueError("empty array")
  return np.asarray([float(t) for t in tokens], dtype=np.float64)


# A parsed row: (id, structure, frequencies, DoS), or (id, None, reason, None) when the
# row cannot be used.
_Row = tuple[str, Any, Any, Any]


def read_phonondos_csv(path: str, grid: np.ndarray) -> RawDataset:
  """Reads a phononDoS-tutorial CSV and resamples the DoS onto `grid`.

  Columns: `structure` (an `Atoms(...)` repr with positions, an
  `Atoms.todict()` repr or a JSON dict; parsed without eval), `phfreq` and
  `phdos` (arrays as strings), optional id column (`id`, `mp_id`,
  `material_id`, `mpid`; else the 0-based row index).

  The parsed rows of a file are kept for the process (keyed on its path, size and
  modification time), so the runs of a compare, a sweep or a fine-tuning study read the
  file once; every call returns structures of its own.

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
  stat = os.stat(path)
  rows = _parsed_rows(path, stat.st_size, stat.st_mtime_ns)
  ids, atoms_list, labels, skipped = [], [], [], []
  for rid, atoms, freq, dos in rows:
    if atoms is None:
      skipped.append((rid, freq))
      continue
    labels.append(np.interp(grid, freq, dos, left=0.0, right=0.0))
    ids.append(rid)
    atoms_list.append(atoms.copy())
  label_matrix = (np.stack(labels).astype(np.float32) if labels
                  else np.zeros((0, len(grid)), np.float32))
  return RawDataset(ids=ids, structures=atoms_list, labels=label_matrix,
                    grid=grid.astype(np.float32), skipped=skipped,
                    source=path)


def forget_parsed_files() -> None:
  """Drops the kept rows, so the next read parses its file again (the benchmark times a
  cold read)."""
  _parsed_rows.cache_clear()


@functools.lru_cache(maxsize=4)
def _parsed_rows(path: str, size: int, mtime_ns: int) -> tuple[_Row, ...]:
  """Every row of the CSV at `path` parsed (frequencies sorted ascending), in file order;
  `size` and `mtime_ns` key the cache, so a changed file is read again."""
  del size, mtime_ns
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
  out = []
  for i, row in enumerate(rows):
    rid = next((row[c].strip() for c in id_cols if (row.get(c) or "").strip()),
               str(i))
    out.append(_parse_row(path, i, rid, row))
  return tuple(out)


def _parse_row(path: str, i: int, rid: str, row: dict[str, str]) -> _Row:
  """Row `i` (id `rid`) as (id, structure, sorted frequencies, DoS), or (id, None,
  reason, None)."""
  try:
    atoms = parse_atoms_string(row.get("structure") or "", rid)
  except InputError as e:
    return rid, None, f"{path} row {i}: {e.reason}", None
  try:
    freq = _parse_array(row.get("phfreq") or "")
    dos = _parse_array(row.get("phdos") or "")
  except ValueError as e:
    return rid, None, f"{path} row {i}: cannot parse phfreq/phdos ({error_text(e)})", None
  if len(freq) != len(dos):
    return rid, None, f"{path} row {i}: phfreq has {len(freq)} values, phdos {len(dos)}", None
  if not np.all(np.isfinite(freq)):
    return rid, None, f"{path} row {i}: phfreq has NaN/inf", None
  order = np.argsort(freq, kind="stable")
  return rid, atoms, freq[order], dos[order]
