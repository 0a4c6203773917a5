"""xtal2dos_jax: predict phonon / electronic density of states from crystal structures.

A JAX/Flax reimplementation of Xtal2DoS (UniMP graph encoder + masked-causal
transformer decoder). See README.md for the command-line entry points.

`from xtal2dos_jax import Predictor` is the Python API for prediction
(`xtal2dos_jax.inference.predictor`). It is imported on first use, so
`import xtal2dos_jax.training.allocator` still runs before numpy and JAX are loaded. The
subpackages are the pipeline's stages (BUILD_NOTES.md, "Layout").
"""

__version__ = "0.1.0"
__all__ = ["Predictor", "Prediction"]


def __getattr__(name: str):
  if name in ("Predictor", "Prediction"):
    from xtal2dos_jax.inference import predictor
    return getattr(predictor, name)
  raise AttributeError(f"module 'xtal2dos_jax' has no attribute {name!r}")
