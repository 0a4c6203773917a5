"""The container every reader returns, and where the embedded datasets live.

`RawDataset` holds crystals as `ase.Atoms` with their DoS labels in the source's
scale, before featurisation and scaling; the readers in this package build one and
`load_raw_dataset` filters it. The `embedded_*_path` functions locate the datasets
shipped in `xtal2dos_jax/data/` (each folder's README.md says how it was made and what to cite).
"""

import dataclasses
import os
from typing import Sequence

import ase
import numpy as np

from xtal2dos_jax.core import paths


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
  return os.path.join(paths.DATA_DIR, "phdos_dfpt", "data.csv")


def embedded_phdos_path() -> str:
  """Path of the universal-potential phonon-DoS ASE database shipped inside the package."""
  return os.path.join(paths.DATA_DIR, "phdos", "phdos.db")


def embedded_edos_path() -> str:
  """Path of the eDoS sample (Mat2Spec layout) shipped inside the package."""
  return os.path.join(paths.DATA_DIR, "edos_mat2spec")
