"""Reader for unlabelled structure files (CIF, POSCAR, extxyz, JSON, ...), for prediction.

A folder or glob pattern of files that `structures.read_structures` reads; each
file may hold several structures. Files and structures that cannot be used are
skipped with their reason, so one bad file does not stop a prediction run.
"""

import glob
import os

from xtal2dos_jax.core.errors import InputError
from xtal2dos_jax.input_pipeline import structures as structures_lib
from xtal2dos_jax.input_pipeline.readers.raw_dataset import RawDataset


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
