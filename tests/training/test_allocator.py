"""keep_freed_memory: large blocks freed on one thread are reused without new page faults.

Each case runs in a fresh interpreter (malloc settings are per process and must be set
before threads get their arenas). The child mimics an XLA:CPU step: a worker thread
mallocs a 256 MiB block, touches every page, frees it; repeated, counting minor page
faults after the first round.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from xtal2dos_jax.training import allocator

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CHILD = r"""
import ctypes, ctypes.util, json, resource, sys, threading
from xtal2dos_jax.training.allocator import keep_freed_memory
applied = keep_freed_memory()
libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
SIZE = 256 << 20

def step():
  p = libc.malloc(SIZE)
  ctypes.memset(p, 1, SIZE)
  libc.free(p)

def on_new_thread():
  t = threading.Thread(target=step)
  t.start()
  t.join()

on_new_thread()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
  on_new_thread()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"applied": applied, "faults": faults}))
"""


def _run_child(keep: str, platforms: str = "cpu") -> dict:
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS=platforms, **{allocator.ENV_VAR: keep})
  out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True,
                       text=True, timeout=120, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_freed_blocks_are_reused_without_page_faults():
  default = _run_child("0")
  kept = _run_child("1")
  assert not default["applied"]
  if not kept["applied"]:
    pytest.skip("libc without glibc mallopt")
  # 4 rounds x 256 MiB: glibc's default mmap/munmap re-faults every page each round
  # (65,536 per round with 4 KiB pages; fewer with transparent huge pages).
  assert default["faults"] >= 4 * 100, default
  assert kept["faults"] < 0.05 * default["faults"], (kept, default)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_a_gpu_process_is_left_alone():
  got = _run_child("1", platforms="cuda")
  assert not got["applied"] and got["faults"] >= 4 * 100, got


def test_opt_out_is_a_no_op(monkeypatch):
  monkeypatch.setenv(allocator.ENV_VAR, "0")
  assert allocator.keep_freed_memory() is False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
@pytest.mark.parametrize("binary,expected", [
    ("evaluate", "off"), ("train", "on (set with 1 thread(s) running)")])
def test_binary_set_up_training_vs_inference(
    tmp_path, binary, expected):
  """Training calls keep_freed_memory first thing in main(), while the process has one
  thread; evaluate/predict skip it (arena contention between their per-core device
  threads) and run one CPU device per core, training one device. The binaries log both,
  then fail fast here."""
  from xtal2dos_jax.training import runtime
  devices = min(runtime.usable_cores(), runtime.MAX_DEFAULT_CPU_DEVICES)
  devices = devices if binary == "evaluate" else 1
  args = {"evaluate": [f"--workdir={tmp_path}"],
          "train": ["--config=configs/smoke.py", f"--workdir={tmp_path / 'run'}",
                    f"--config.data.path={tmp_path / 'missing'}"]}[binary]
  env = {k: v for k, v in os.environ.items() if k not in (allocator.ENV_VAR, "XLA_FLAGS")}
  env["JAX_PLATFORMS"] = "cpu"
  proc = subprocess.run([sys.executable, "-m", f"experiments.{binary}", *args], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  assert f"{devices} local / {devices} global devices (cpu); keep_freed_memory {expected}" \
      in proc.stderr, proc.stderr[-2000:]
