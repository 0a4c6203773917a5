"""Xtal2DoS on the embedded universal-potential phonon-DoS set (1,024 crystals).

Phonons computed for this project with the CHGNet universal potential and phonopy
(`xtal2dos_jax/data/phdos/README.md`): absolute DoS in states per cm^-1 per cell on
0..1000 cm^-1 (51 points) and a `cv300` heat-capacity label per crystal. Same model and
recipe as `configs/phdos.py`; only the data differ.
"""
from configs import phdos


def get_config():
  config = phdos.get_config()
  config.data.format = "ase_db"
  config.data.path = ""           # "" = the embedded universal-potential db
  config.data.label_key = "dos"
  return config
