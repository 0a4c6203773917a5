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


# One JAX device per core, up to this many, unless asked otherwise (`split_cpu_into_devices`).
MAX_DEFAULT_CPU_DEVICES = 8


def usable_cores() -> int:
  """CPU cores this process may run on (its affinity mask where the OS has one)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def split_cpu_into_devices(count: int | None = None) -> int | None:
  """Exposes the CPU as `count` JAX devices (default: one per usable core, at most
  MAX_DEFAULT_CPU_DEVICES); returns the count set, or None if the CPU was left as it is.

  Why: the steps are pmapped, so N CPU devices run N shards of each batch side by side,
  one per core, instead of one shard whose matmuls XLA splits across the cores. For
  prediction with the comparison model (matmuls like [32 x 51, 128] x [128, 512]) that
  split does not pay: on 2 cores, 2 devices predict ~40% more crystals/s than 1, so the
  evaluate and predict binaries use it (xtal2dos_jax/workflows/cli.py). Training gains nothing
  (the paper-size model loses), so it stays on one device. Results do not depend on the
  count (the global batch is split across devices; tests/training/test_parallel.py).

  Left alone when XLA_FLAGS already sets --xla_force_host_platform_device_count (the
  user's choice wins) and when `count` is 1. Only the CPU backend is affected, so GPU/TPU
  runs see no difference. Must run before JAX initialises its backends: afterwards it
  raises RuntimeError.
  """
  if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
    return None
  if count is None:
    count = min(usable_cores(), MAX_DEFAULT_CPU_DEVICES)
  if count < 1:
    raise ValueError(f"{count} is not a device count (>= 1)")
  if count == 1:
    return None
  jax.config.update("jax_num_cpu_devices", count)
  return count
