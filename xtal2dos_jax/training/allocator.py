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

The training binaries (experiments/train.py, compare.py, benchmark.py) call it first
thing in `main()`: absl's flag parsing, which runs before, imports neither numpy nor jax,
so the process has one thread then (`threads_when_applied`, logged by
`workflows.cli.setup_runtime`). Evaluate and predict do not call it: their step
buffers are small, and their threads (one JAX device per core,
`runtime.split_cpu_into_devices`) would contend for the single arena, costing ~10% of
prediction throughput (docs/results.md §3). `XTAL2DOS_KEEP_FREED_MEMORY=0` turns it off.
Only the standard library is imported here, so calling it costs no thread.

Only a process whose JAX runs on the CPU is tuned: a GPU or TPU keeps the step buffers
in device memory, and the host's threads (input pipeline, driver) would only contend for
the single arena. jax cannot be asked before it has started its threads, so the backend
is judged as JAX will pick it (`_jax_uses_cpu`).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import importlib.metadata
import importlib.util
import os

# mallopt parameters (glibc malloc.h).
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8

ENV_VAR = "XTAL2DOS_KEEP_FREED_MEMORY"

applied = False  # whether keep_freed_memory() has taken effect in this process
# Threads of the process when it took effect (None: not applied, or no /proc): threads
# that had malloc'ed before keep their own arenas.
threads_when_applied: int | None = None


def _os_threads() -> int | None:
  """Threads of this process, native ones (BLAS, XLA) included; None without /proc."""
  try:
    return len(os.listdir("/proc/self/task"))
  except OSError:
    return None


def _jax_uses_cpu() -> bool:
  """Whether JAX will run on its CPU backend, judged without importing jax: the first
  platform of JAX_PLATFORMS where that is set, else whether no GPU/TPU plugin is
  installed (`pip install -e ".[cuda]"` installs one; JAX prefers it whenever its device
  is there, and a host with the plugin but no GPU is taken for a GPU host)."""
  platforms = os.environ.get("JAX_PLATFORMS", "").strip()
  if platforms:
    return platforms.split(",")[0].strip() == "cpu"
  return not (importlib.metadata.entry_points(group="jax_plugins")
              or importlib.util.find_spec("jax_plugins") or importlib.util.find_spec("libtpu"))


def keep_freed_memory() -> bool:
  """Applies the settings above; returns True if glibc accepted all of them.

  A no-op returning False without glibc (macOS, musl), when `XTAL2DOS_KEEP_FREED_MEMORY`
  is "0" and when JAX will not run on the CPU (`_jax_uses_cpu`). Call it before
  numpy/jax start their threads: a thread that already has its own malloc arena keeps it.
  """
  if os.environ.get(ENV_VAR, "1") == "0" or not _jax_uses_cpu():
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
  global applied, threads_when_applied
  if all([mallopt(param, value) == 1 for param, value in settings]) and not applied:
    applied, threads_when_applied = True, _os_threads()
  return applied
