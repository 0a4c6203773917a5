"""Multi-host data parallelism through the real training binary.

Two processes on localhost with 2 CPU devices each (gloo collectives) must end with
the parameters of one process with 4 devices on the same global batches.
"""
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARGS = ["--config=configs/smoke.py", "--config.data.limit=60", "--config.train.num_epochs=2",
        "--config.train.optimizer=sgd", "--config.train.learning_rate=0.05"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _env(devices: int) -> dict:
  return dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
              JAX_PLATFORMS="cpu", PYTHONPATH=REPO)


def _latest_params(workdir: str):
  manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints", "latest"))
  step = manager.latest_step()
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(), progress=ocp.args.JsonRestore()))
  manager.close()
  return step, restored.state["params"]


@pytest.mark.slow
def test_two_processes_match_one_process_with_four_devices(tmp_path):
  train = [sys.executable, "-m", "experiments.train", *ARGS]
  one = subprocess.run([*train, f"--workdir={tmp_path / 'one'}"], cwd=REPO, env=_env(4),
                       capture_output=True, text=True, timeout=600)
  assert one.returncode == 0, one.stderr[-3000:]

  port = _free_port()
  multi = [*train, f"--workdir={tmp_path / 'two'}", f"--coordinator_address=localhost:{port}",
           "--num_processes=2"]
  procs = [subprocess.Popen([*multi, f"--process_id={i}"], cwd=REPO, env=_env(2),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  # Both processes report the same final table (metrics are psum-ed globally).
  tables = [out.strip().splitlines()[-6:-1] for out, _ in outs]
  assert tables[0] == tables[1] and tables[0][0].startswith("split")

  step_one, params_one = _latest_params(str(tmp_path / "one"))
  step_two, params_two = _latest_params(str(tmp_path / "two"))
  assert step_one == step_two
  for a, b in zip(jax.tree.leaves(params_one), jax.tree.leaves(params_two)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  # metrics.jsonl is written once (process 0), not once per process.
  lines = open(tmp_path / "two" / "metrics.jsonl").read().strip().splitlines()
  assert len(lines) == 2
