"""glibc malloc settings that let XLA:CPU reuse its step buffers instead of re-faulting them.

XLA:CPU mallocs each executable call's temporary buffer (~250 MB for the comparison
config's training step, tens of MB for prediction) on its worker threads and frees it
when the call ends. glibc serves blocks that large with a fresh `mmap` and returns them
with `munmap`, so every step page-faults its whole working set in again: ~63,000 minor
faults per training step, 20-30% of the step's CPU time spent in the kernel.
`keep_freed_memory` makes glibc keep freed memory for reuse: one arena for all threads
(thread arenas are capped at 64 MB and would fall back to mmap), no mmap for large
blocks, no trimming of the heap top. The cost is that the process keeps its peak heap
size until it exits.

Imported before numpy and jax by `experiments/__init__.py`, so every binary gets it;
`XTAL2DOS_KEEP_FREED_MEMORY=0` turns it off. Only this module's ctypes and os imports
may run before it, hence no other dependencies here.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os

# mallopt parameters (glibc malloc.h).
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8

ENV_VAR = "XTAL2DOS_KEEP_FREED_MEMORY"

applied = False  # whether keep_freed_memory() has taken effect in this process


def keep_freed_memory() -> bool:
  """Applies the settings above; returns True if glibc accepted all of them.

  A no-op returning False without glibc (macOS, musl) or when `XTAL2DOS_KEEP_FREED_MEMORY`
  is "0". Call it before numpy/jax start their threads: a thread that already has its
  own malloc arena keeps it.
  """
  if os.environ.get(ENV_VAR, "1") == "0":
    return False
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return False
  mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
  mallopt.restype = ctypes.c_int
  settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1),
              (_M_TOP_PAD, 64 << 20))
  global applied
  applied = all([mallopt(param, value) == 1 for param, value in settings]) or applied
  return applied
