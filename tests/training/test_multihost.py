"""Multi-host data parallelism through the real training binary, and what a
multi-process run does when its processes drift apart or one of them is lost.

Two processes on localhost with 2 CPU devices each (gloo collectives) must end with
the parameters of one process with 4 devices on the same global batches.
"""
import os
import socket
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from xtal2dos_jax.training import distributed

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ARGS = ["--config=configs/smoke.py", "--config.data.limit=60", "--config.train.num_epochs=2",
        "--config.train.optimizer=sgd", "--config.train.learning_rate=0.05"]
# What the coordinator prints (before crashing) when its port was taken meanwhile.
_PORT_TAKEN = "Failed to add port to server"


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _env(devices: int) -> dict:
  return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO,
              XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} "
                        f"{os.environ['XLA_FLAGS']}")


def _start_two(command, env, attempts: int = 3):
  """Starts `command + [--coordinator_address=localhost:PORT, --num_processes=2,
  --process_id=i]` for i = 0, 1 and returns the two Popen objects.

  The port is free when `_free_port` picks it but may be taken before process 0's
  coordination service binds it; process 0 then fails at once (`_PORT_TAKEN`), and
  both are started again on another port."""
  for _ in range(attempts):
    port = _free_port()
    procs = [subprocess.Popen(
        [*command, f"--coordinator_address=localhost:{port}", "--num_processes=2",
         f"--process_id={i}"], cwd=REPO, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True) for i in range(2)]
    deadline = time.time() + 30       # the service binds within seconds of the start
    while time.time() < deadline and procs[0].poll() is None:
      time.sleep(0.2)
    if procs[0].poll() is None or procs[0].returncode == 0:
      return procs
    out, err = procs[0].communicate()
    if _PORT_TAKEN not in err:
      procs[1].kill()
      procs[1].communicate()
      return [_Finished(procs[0].returncode, out, err), procs[1]]
    procs[1].kill()
    procs[1].communicate()
  raise AssertionError(f"the coordinator port was taken {attempts} times in a row")


class _Finished:
  """A process that already ended, with the Popen methods the tests use."""

  def __init__(self, returncode, out, err):
    self.returncode, self._out = returncode, (out, err)

  def communicate(self, timeout=None):
    return self._out

  def poll(self):
    return self.returncode


def _latest_params(workdir: str):
  manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints", "latest"))
  step = manager.latest_step()
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(), progress=ocp.args.JsonRestore()))
  manager.close()
  return step, restored.state["params"]


@pytest.mark.slow
@pytest.mark.long
def test_two_processes_match_one_process_with_four_devices(tmp_path):
  train = [sys.executable, "-m", "experiments.train", *ARGS]
  one = subprocess.run([*train, f"--workdir={tmp_path / 'one'}"], cwd=REPO, env=_env(4),
                       capture_output=True, text=True, timeout=600)
  assert one.returncode == 0, one.stderr[-3000:]

  procs = _start_two([*train, f"--workdir={tmp_path / 'two'}"], _env(2))
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


# A two-process program set up as the training binary is (cli.run, setup_runtime,
# lost_processes), doing psums over all devices; `MODE` says what process 1 does.
_CHILD = textwrap.dedent("""
    import os, sys, time
    from xtal2dos_jax.training import distributed
    from xtal2dos_jax.workflows import cli

    def main(argv):
      cli.setup_runtime()
      import jax, numpy as np
      psum = jax.pmap(lambda x: jax.lax.psum(x, "i"), axis_name="i")
      ones = np.ones(jax.local_device_count(), np.float32)
      mode, me = os.environ["MODE"], jax.process_index()
      with distributed.lost_processes(os.environ["WORKDIR"]):
        open(os.path.join(os.environ["WORKDIR"], f"ready{me}"), "w").close()
        if me == 1 and mode == "late":
          time.sleep(float(os.environ["DELAY"]))
        if me == 1 and mode == "killed":
          time.sleep(600)                                # killed here by the test
        if me == 1 and mode == "fails":
          raise RuntimeError("process 1 fails")
        for _ in range(3 if mode == "late" else 10**9):
          total = jax.block_until_ready(psum(ones))
      print("sum", float(total[0]))

    cli.run(main)
    """)


def _start_children(tmp_path, mode: str, **env):
  script = tmp_path / "child.py"
  script.write_text(_CHILD)
  workdir = tmp_path / "run"
  # A run whose last checkpoint is epoch 2 (the step names Checkpoints.save uses).
  os.makedirs(workdir / "checkpoints" / "latest" / "2000000")
  env = dict(_env(2), MODE=mode, WORKDIR=str(workdir), **env)
  return _start_two([sys.executable, str(script)], env), workdir


@pytest.mark.slow
@pytest.mark.long
def test_processes_far_apart_at_their_first_collective_still_connect(tmp_path):
  """Gloo gives up on a peer that is not at the first collective within 30 s, which
  process 1 may miss while it compiles what process 0 loads from the persistent
  cache; setup_runtime connects the processes while they are in step."""
  procs, _ = _start_children(tmp_path, "late", DELAY="35")
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
    assert out.strip().splitlines()[-1] == "sum 4.0"   # after gloo's connection notes


def _wait_for(paths, timeout: float = 120):
  deadline = time.time() + timeout
  while time.time() < deadline and not all(os.path.exists(p) for p in paths):
    time.sleep(0.1)
  assert all(os.path.exists(p) for p in paths), "the processes did not start"


@pytest.mark.slow
@pytest.mark.long
def test_killed_process_is_reported_in_one_line(tmp_path):
  """kill -9 of process 1 while process 0 waits for it in a collective: process 0
  names the lost process and how to resume in one line, exit status 75, well before
  the coordination service's heartbeat timeout would abort it."""
  procs, workdir = _start_children(tmp_path, "killed")
  _wait_for([workdir / "ready0", workdir / "ready1"])
  time.sleep(1)
  start = time.time()
  procs[1].kill()
  _, err = procs[0].communicate(timeout=distributed.HEARTBEAT_TIMEOUT_S + 60)
  procs[1].communicate()
  assert procs[0].returncode == distributed.LOST_PROCESS_EXIT, err[-3000:]
  last = err.strip().splitlines()[-1]
  assert last.startswith("error: lost process 1 of 2 ("), err[-3000:]
  assert last.endswith("); process 0 stops. Nothing is lost: rerun the same command on "
                       "every host to resume from epoch 2")
  assert time.time() - start < distributed.HEARTBEAT_TIMEOUT_S


@pytest.mark.slow
@pytest.mark.long
def test_process_that_fails_stops_its_peers(tmp_path):
  """A process that ends with an error tells its peers, which otherwise would wait for
  it in their next collective until the heartbeat timeout aborts them."""
  procs, _ = _start_children(tmp_path, "fails")
  outs = [p.communicate(timeout=distributed.HEARTBEAT_TIMEOUT_S + 60) for p in procs]
  # Process 1 prints its own error (its exit status may then be jax's abort once
  # process 0, which holds the coordination service, has gone).
  assert procs[1].returncode != 0 and "RuntimeError: process 1 fails" in outs[1][1]
  assert procs[0].returncode == distributed.LOST_PROCESS_EXIT, outs[0][1][-3000:]
  assert outs[0][1].strip().splitlines()[-1] == (
      "error: lost process 1 of 2 (it stopped: an error or a preemption, see its log); "
      "process 0 stops. Nothing is lost: rerun the same command on every host to resume "
      "from epoch 2")
