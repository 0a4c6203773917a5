"""Crystal structures in, `ase.Atoms` out: conversion, file reading, validation.

Everything downstream (featurisation, prediction) works on periodic `ase.Atoms`
(cell and positions in Angstrom). This module turns the structure formats users
have into that, and rejects structures the model cannot handle with a one-line
`InputError` that names the structure and the reason:

* `atoms_from_pymatgen_dict` / `atoms_from_dict`: a pymatgen
  `Structure.as_dict()` or an `ase.Atoms.todict()`-style dict (no pymatgen
  needed).
* `read_structure` / `read_structures`: any file `ase.io.read` understands
  (CIF, POSCAR, extxyz, ...) and `.json` files holding one of the dicts above.
* `validate_atoms`: empty, unknown elements, non-periodic / zero-volume cell,
  non-finite coordinates, overlapping atoms.

The structure strings of the phononDoS CSV are parsed by its reader,
`readers.phonondos_csv`.
"""

import json
import os
import warnings
from typing import Any, Mapping

import ase
import ase.data
import ase.io
import ase.io.formats
import ase.io.jsonio
import ase.neighborlist
import numpy as np
from ase.geometry import cellpar_to_cell
from ase.symbols import string2symbols

from xtal2dos_jax.core.errors import error_text, InputError

# Closest distance two atoms (or an atom and its own periodic image) may have.
MIN_DISTANCE = 0.1  # Angstrom
# Occupancies within this of 1 count as fully occupied.
_OCCU_TOL = 1e-3


def _as_array(value: Any, dtype=float) -> np.ndarray:
  """np.asarray that also understands ASE's JSON `{"__ndarray__": ...}`."""
  if isinstance(value, Mapping) and "__ndarray__" in value:
    shape, _, flat = value["__ndarray__"]
    return np.asarray(flat, dtype=dtype).reshape(shape)
  if isinstance(value, Mapping) and "array" in value:  # ase.cell.Cell.todict()
    return _as_array(value["array"], dtype)
  return np.asarray(value, dtype=dtype)


# --------------------------------------------------------------------------
# Dict conversion.


def atoms_from_pymatgen_dict(d: Mapping[str, Any],
                             name: str = "structure") -> ase.Atoms:
  """Converts a pymatgen `Structure.as_dict()` to periodic `ase.Atoms`.

  Uses `lattice.matrix` (rows are lattice vectors, Angstrom) and, per site,
  the fractional `abc` (cartesian = abc @ matrix) or else the cartesian `xyz`.
  pymatgen itself is not needed.

  Args:
    d: the Structure dict (`{"lattice": {"matrix": ...}, "sites": [...]}`).
    name: how to refer to the structure in error messages (file, id).

  Returns:
    `ase.Atoms` with pbc=True.

  Raises:
    InputError: a Molecule, missing/malformed fields, an unknown element, or
      a disordered site (several species or occupancy < 1); the model needs
      ordered crystals.
  """
  if not isinstance(d, Mapping):
    raise InputError(name, f"expected a pymatgen Structure dict, got "
                     f"{type(d).__name__}")
  cls = str(d.get("@class", ""))
  if "Molecule" in cls:
    raise InputError(name, "is a pymatgen Molecule, not a periodic crystal "
                     "Structure")
  try:
    matrix = _as_array(d["lattice"]["matrix"])
    sites = d["sites"]
  except (KeyError, TypeError, ValueError) as e:
    raise InputError(name, "not a pymatgen Structure dict (needs "
                     f"lattice.matrix and sites): {error_text(e)}") from None
  if matrix.shape != (3, 3):
    raise InputError(name, f"lattice.matrix has shape {matrix.shape}, "
                     "expected (3, 3)")
  numbers, frac, cart = [], [], []
  for i, site in enumerate(sites):
    try:
      species = site["species"]
      if len(species) != 1:
        desc = ", ".join(f"{s.get('element')}:{s.get('occu')}" for s in species)
        raise InputError(name, f"site {i} is disordered ({desc}); only "
                         "ordered crystals are supported")
      sp = species[0]
      symbol = str(sp["element"])
      occu = float(sp.get("occu", 1.0))
      if abs(occu - 1.0) > _OCCU_TOL:
        raise InputError(name, f"site {i} ({symbol}) is partially occupied "
                         f"(occu={occu:g}); only ordered crystals are "
                         "supported")
      if symbol not in ase.data.atomic_numbers:
        raise InputError(name, f"site {i} has unknown element {symbol!r}")
      numbers.append(ase.data.atomic_numbers[symbol])
      if "abc" in site:
        frac.append(_as_array(site["abc"]))
      elif "xyz" in site:
        cart.append((i, _as_array(site["xyz"])))
      else:
        raise InputError(name, f"site {i} has neither 'abc' nor 'xyz' "
                         "coordinates")
    except InputError:
      raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
      raise InputError(name, f"malformed site {i}: {error_text(e)}") from None
  positions = np.zeros((len(numbers), 3))
  frac_idx = [i for i, s in enumerate(sites) if "abc" in s]
  if frac:
    positions[frac_idx] = np.stack(frac) @ matrix
  for i, xyz in cart:
    positions[i] = xyz
  return ase.Atoms(numbers=numbers, positions=positions, cell=matrix,
                   pbc=True)


def _atoms_from_ase_dict(d: Mapping[str, Any], name: str) -> ase.Atoms:
  """`ase.Atoms.todict()` / `Atoms(...)` keyword dict -> `ase.Atoms`."""
  try:
    if "numbers" in d:
      numbers = _as_array(d["numbers"], dtype=int).reshape(-1)
    elif "symbols" in d:
      symbols = d["symbols"]
      if isinstance(symbols, str):
        symbols = string2symbols(symbols)
      numbers = np.asarray([
          s if isinstance(s, (int, np.integer)) else
          ase.data.atomic_numbers[str(s)] for s in symbols], dtype=int)
    else:
      raise InputError(name, "structure dict has neither 'numbers' nor "
                       "'symbols'")
    cell = _as_array(d.get("cell", np.zeros((3, 3))))
    if cell.shape == (3,):
      cell = np.diag(cell)
    elif cell.shape == (6,):
      cell = cellpar_to_cell(cell)
    if cell.shape != (3, 3):
      raise InputError(name, f"cell has shape {cell.shape}, expected (3, 3)")
    if "positions" in d:
      positions = _as_array(d["positions"]).reshape(-1, 3)
    elif "scaled_positions" in d:
      positions = _as_array(d["scaled_positions"]).reshape(-1, 3) @ cell
    else:
      raise InputError(name, "structure dict has neither 'positions' nor "
                       "'scaled_positions'")
    if len(positions) != len(numbers):
      raise InputError(name, f"{len(numbers)} species but {len(positions)} "
                       "positions")
    if "pbc" in d:
      pbc = _as_array(d["pbc"], dtype=bool)
    else:
      # A crystal dataset without an explicit pbc: periodic iff it has a cell.
      pbc = abs(np.linalg.det(cell)) > 1e-8
    return ase.Atoms(numbers=numbers, positions=positions, cell=cell, pbc=pbc)
  except InputError:
    raise
  except (KeyError, TypeError, ValueError, IndexError) as e:
    raise InputError(name, "malformed ASE structure dict: "
                     f"{error_text(e)}") from None


def atoms_from_dict(d: Any, name: str = "structure") -> ase.Atoms:
  """Converts a structure dict of any supported kind to `ase.Atoms`.

  Dispatches on the keys: `{"structure": ...}` (Mat2Spec json) is unwrapped;
  `lattice` + `sites` is a pymatgen Structure dict; `numbers`/`symbols` with
  `positions`/`scaled_positions` is an `ase.Atoms.todict()`-style dict. An
  `ase.Atoms` is passed through (copied).

  Raises:
    InputError: naming `name`, for anything that is not one of those.
  """
  if isinstance(d, ase.Atoms):
    return d.copy()
  if not isinstance(d, Mapping):
    raise InputError(name, "expected a structure dict (pymatgen Structure or "
                     f"ASE Atoms), got {type(d).__name__}")
  if "structure" in d and not ("sites" in d or "numbers" in d):
    return atoms_from_dict(d["structure"], name)
  if "sites" in d or "lattice" in d or "@class" in d:
    return atoms_from_pymatgen_dict(d, name)
  if "numbers" in d or "symbols" in d:
    return _atoms_from_ase_dict(d, name)
  if not d:
    raise InputError(name, "empty structure dict")
  keys = ", ".join(sorted(map(str, d))[:8])
  raise InputError(name, f"unrecognised structure dict (keys: {keys}); "
                   "expected a pymatgen Structure dict or an ASE Atoms dict")


# --------------------------------------------------------------------------
# Files.


def _check_occupancy(atoms: ase.Atoms, name: str) -> None:
  """Rejects CIF structures that ASE read from disordered sites.

  ASE's CIF reader silently keeps one species per partially occupied site
  (and records the occupancies in `atoms.info['occupancy']`).
  """
  occupancy = atoms.info.get("occupancy")
  if not isinstance(occupancy, Mapping):
    return
  for tag, occ in occupancy.items():
    if not isinstance(occ, Mapping):
      continue
    total = sum(float(v) for v in occ.values())
    if len(occ) > 1 or abs(total - 1.0) > _OCCU_TOL:
      desc = ", ".join(f"{k}:{float(v):g}" for k, v in occ.items())
      kind = "disordered" if len(occ) > 1 else "partially occupied"
      raise InputError(name, f"{kind} site ({desc}); only ordered crystals "
                       "are supported")


def _read_json_structures(path: str) -> list[ase.Atoms]:
  try:
    with open(path, "r", encoding="utf-8") as f:
      text = f.read()
  except (OSError, UnicodeDecodeError) as e:
    raise InputError(path, f"cannot read file: {error_text(e)}") from None
  try:
    value = json.loads(text)
  except json.JSONDecodeError as e:
    raise InputError(path, f"invalid JSON: {error_text(e)}") from None
  if isinstance(value, Mapping) and any(
      k in value for k in ("structure", "sites", "lattice", "numbers",
                           "symbols")):
    try:
      return [ase.io.jsonio.decode(text)
              if "__ase_objtype__" in value else atoms_from_dict(value, path)]
    except InputError:
      raise
    except (ValueError, TypeError, KeyError) as e:
      raise InputError(path, f"bad structure JSON: {error_text(e)}") from None
  # Otherwise maybe ASE's JSON database format.
  return _ase_read(path, index=":")


def _ase_read(path: str, index: Any) -> list[ase.Atoms]:
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      images = ase.io.read(path, index=index)
  except ase.io.formats.UnknownFileTypeError as e:
    raise InputError(path, "not a structure file in a format ASE recognises "
                     f"({error_text(e)})") from None
  except Exception as e:  # ase raises anything from its many parsers.
    kind = os.path.splitext(path)[1].lstrip(".") or "structure"
    raise InputError(path, f"could not be read as a {kind} file (truncated, "
                     f"corrupt or unsupported format?): "
                     f"{error_text(e)}") from None
  if isinstance(images, ase.Atoms):
    images = [images]
  images = list(images)
  if not images:
    raise InputError(path, "holds no structure")
  return images


def read_structures(path: str) -> list[ase.Atoms]:
  """Reads every structure in a file (several for multi-frame extxyz etc.).

  Args:
    path: any file `ase.io.read` reads (cif, POSCAR/CONTCAR/vasp, extxyz, ...)
      or a `.json` file with a pymatgen Structure dict (top level or under
      "structure") or an ASE Atoms dict.

  Returns:
    the structures, in file order. They are not validated (see
    `validate_atoms`), but disordered CIF sites are rejected here because the
    information is lost afterwards.

  Raises:
    InputError(path, reason): missing, empty, unreadable or garbage files.
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise InputError(path, "no such file")
  if os.path.isdir(path):
    raise InputError(path, "is a directory, not a structure file")
  if os.path.getsize(path) == 0:
    raise InputError(path, "file is empty")
  if path.lower().endswith(".json"):
    images = _read_json_structures(path)
  else:
    images = _ase_read(path, index=":")
  for i, atoms in enumerate(images):
    _check_occupancy(atoms, path if len(images) == 1 else f"{path}@{i}")
  return images


def read_structure(path: str) -> ase.Atoms:
  """Reads the one structure in `path` (formats as in `read_structures`).

  Raises:
    InputError(path, reason): unreadable file, or a file holding several
      structures (use `read_structures` for those).
  """
  images = read_structures(path)
  if len(images) != 1:
    raise InputError(path, f"holds {len(images)} structures, expected one "
                     "(use read_structures)")
  return images[0]


# --------------------------------------------------------------------------
# Validation.


def validate_atoms(atoms: ase.Atoms, name: str = "structure",
                   max_z: int = 100, check_overlap: bool = True) -> None:
  """Checks that a structure is something the model can featurise.

  Args:
    atoms: the crystal.
    name: how to refer to it in error messages (file, id).
    max_z: largest supported atomic number (the CGCNN element table has
      1..100).
    check_overlap: also look for overlapping atoms (about 2 ms per structure;
      `featurize.featurize_crystal` makes the same check for free, so the
      dataset loader skips it here).

  Raises:
    InputError(name, reason) for: no atoms; an element with Z outside
      1..max_z; non-finite positions or cell; a non-periodic or zero-volume
      cell; two atoms (periodic images included) closer than `MIN_DISTANCE`.
  """
  if not isinstance(atoms, ase.Atoms):
    raise InputError(name, f"expected ase.Atoms, got {type(atoms).__name__}")
  n = len(atoms)
  if n == 0:
    raise InputError(name, "structure has no atoms")
  numbers = atoms.numbers
  bad = np.flatnonzero((numbers < 1) | (numbers > max_z))
  if bad.size:
    z = int(numbers[bad[0]])
    symbol = (ase.data.chemical_symbols[z]
              if 0 <= z < len(ase.data.chemical_symbols) else "?")
    raise InputError(name, f"element {symbol} (Z={z}) at atom {bad[0]} is "
                     f"outside the supported range Z=1..{max_z}")
  cell = np.asarray(atoms.cell.array, dtype=float)
  if not (np.all(np.isfinite(cell)) and np.all(np.isfinite(atoms.positions))):
    raise InputError(name, "cell or positions contain NaN/inf")
  if not np.all(atoms.pbc):
    raise InputError(name, f"not periodic in all three directions "
                     f"(pbc={atoms.pbc.tolist()}); a crystal needs a 3-D "
                     "periodic cell")
  volume = abs(float(np.linalg.det(cell)))
  if volume < 1e-6:
    raise InputError(name, f"cell has zero volume ({volume:.3g} A^3)")
  if not check_overlap:
    return
  i, j, d = ase.neighborlist.neighbor_list("ijd", atoms, MIN_DISTANCE)
  if i.size:
    k = int(np.argmin(d))
    a, b = int(i[k]), int(j[k])
    syms = atoms.get_chemical_symbols()
    if a == b:
      raise InputError(name, f"atom {a} ({syms[a]}) is {d[k]:.3g} A from its "
                       f"own periodic image (cell too small; minimum "
                       f"{MIN_DISTANCE} A)")
    a, b = min(a, b), max(a, b)
    raise InputError(name, f"atoms {a} ({syms[a]}) and {b} ({syms[b]}) "
                     f"overlap: {d[k]:.3g} A apart (minimum {MIN_DISTANCE} A)")
