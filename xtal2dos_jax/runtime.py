"""Process-wide JAX settings shared by the binaries and the tests."""
from __future__ import annotations

import os

import jax


def default_compilation_cache_dir() -> str:
  root = os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache"))
  return os.path.join(root, "xtal2dos_jax", "jax_compilation_cache")


def enable_compilation_cache(path: str | None = None) -> str:
  """Persists compiled XLA executables on disk, so a rerun (a resumed or repeated run,
  evaluate, predict) skips most compilation. Returns the directory used."""
  path = path or default_compilation_cache_dir()
  os.makedirs(path, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
  return path
