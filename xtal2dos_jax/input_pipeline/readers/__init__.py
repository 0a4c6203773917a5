"""Labelled crystal datasets from the layouts users have.

Readers return a `RawDataset`: structures as `ase.Atoms`, DoS labels in their
original scale (float32 [N, l_y]) and the x-axis grid. Inputs that cannot be
used are never dropped silently: they go to `RawDataset.skipped` as
(id or path, one-line reason), and `load_raw_dataset` logs one warning that
summarises them. Errors that make the whole input unusable (missing files,
label matrix / id count mismatch, label length != config, unknown format) are
`InputError`s naming the input.

Modules, one per concern (the README's "Use" section shows the config for each
format):
* `raw_dataset`: `RawDataset` and the paths of the embedded datasets.
* `ase_db`: `read_ase_db`, an ASE database with labels in
  `row.data[label_key]` (native format; the universal-potential phonon-DoS set).
* `mat2spec`: `read_mat2spec`, the Mat2Spec / Xtal2DoS layout
  (`label_edos/mpids.csv`, `label_edos/total_dos_*.npy`, structures as
  `materials_with_edos/dos_<id>.json` or one pickle; the eDoS sample).
* `phonondos_csv`: `read_phonondos_csv`, the phononDoS (e3nn tutorial) CSV,
  resampled onto the model grid (the DFPT benchmark set).
* `structure_folder`: `read_structure_folder`, unlabelled structure files, for
  prediction.
* `validation`: label checks and the summary of skipped crystals.
* `loading`: `load_raw_dataset`, `config.data` -> the reader, then the shared
  checks.

Splits of the crystals they read are `input_pipeline.data_splits`.
"""

from xtal2dos_jax.input_pipeline.readers.ase_db import read_ase_db
from xtal2dos_jax.input_pipeline.readers.loading import FORMATS, load_raw_dataset
from xtal2dos_jax.input_pipeline.readers.mat2spec import read_mat2spec
from xtal2dos_jax.input_pipeline.readers.phonondos_csv import read_phonondos_csv
from xtal2dos_jax.input_pipeline.readers.raw_dataset import (embedded_dfpt_path, embedded_edos_path,
                                                             embedded_phdos_path, RawDataset)
from xtal2dos_jax.input_pipeline.readers.structure_folder import read_structure_folder
from xtal2dos_jax.input_pipeline.readers.validation import validate_labels

__all__ = [
    "FORMATS", "RawDataset", "embedded_dfpt_path", "embedded_edos_path",
    "embedded_phdos_path", "load_raw_dataset", "read_ase_db",
    "read_mat2spec", "read_phonondos_csv", "read_structure_folder", "validate_labels",
]
