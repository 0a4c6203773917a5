"""xtal2dos_jax: predict phonon / electronic density of states from crystal structures.

A JAX/Flax reimplementation of Xtal2DoS (UniMP graph encoder + masked-causal
transformer decoder). See README.md for the command-line entry points.
"""

__version__ = "0.1.0"
