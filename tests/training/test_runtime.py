"""runtime.split_cpu_into_devices and the binaries' --cpu_devices flag.

Each case runs in a fresh interpreter: the CPU device count is fixed when JAX first
initialises its backends.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from xtal2dos_jax.training import runtime

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CHILD = r"""
import json, sys
import jax
from xtal2dos_jax.training import runtime
count = None if sys.argv[1] == "default" else int(sys.argv[1])
set_to = runtime.split_cpu_into_devices(count)
print(json.dumps({"set": set_to, "devices": jax.device_count(),
                  "platforms": sorted({d.platform for d in jax.devices()})}))
"""


def _child(count: str, xla_flags: str = "") -> dict:
  env = dict(os.environ, PYTHONPATH=REPO, XLA_FLAGS=xla_flags, JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", CHILD, count], env=env, capture_output=True,
                       text=True, timeout=120, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_default_is_one_device_per_core_up_to_the_cap():
  expected = min(runtime.usable_cores(), runtime.MAX_DEFAULT_CPU_DEVICES)
  got = _child("default")
  assert got["devices"] == expected
  assert got["set"] == (expected if expected > 1 else None)
  assert got["platforms"] == ["cpu"]


def test_explicit_count_and_single_device():
  assert _child("3") == {"set": 3, "devices": 3, "platforms": ["cpu"]}
  assert _child("1") == {"set": None, "devices": 1, "platforms": ["cpu"]}


def test_xla_flags_device_count_wins():
  got = _child("3", xla_flags="--xla_force_host_platform_device_count=4")
  assert got == {"set": None, "devices": 4, "platforms": ["cpu"]}


def test_after_backend_start_it_refuses_instead_of_silently_ignoring(monkeypatch):
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  import jax
  jax.devices()  # this test process has started its backend
  with pytest.raises(RuntimeError):
    runtime.split_cpu_into_devices(2)


def test_cpu_devices_flag_rejects_a_non_count_in_one_line(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "experiments.evaluate", "--cpu_devices=0",
                         f"--workdir={tmp_path}"], cwd=REPO, capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert proc.stderr.strip().splitlines()[-1] == (
      "error: --cpu_devices: 0 is not a positive integer")
