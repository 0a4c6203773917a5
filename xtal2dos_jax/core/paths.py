"""Where the package keeps the files it ships: the embedded data sets and element
features (`DATA_DIR`, `xtal2dos_jax/data/`) and the exported models (`PRETRAINED_DIR`,
`xtal2dos_jax/pretrained/`)."""
import os

PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_DIR = os.path.join(PACKAGE_ROOT, "data")
PRETRAINED_DIR = os.path.join(PACKAGE_ROOT, "pretrained")
