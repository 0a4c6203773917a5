"""Multi-process (multi-host) training: start-up, and a lost process ending the run in one line.

`initialize` starts JAX's distributed runtime with the heartbeat timeout below;
`connect_collectives` sets up the processes' cross-process collectives while they are in
step; `start_peer_watch` starts a thread that watches the peers (`_PeerWatch`). Training
runs inside `lost_processes`, so that a lost peer ends the others with one line saying
which process was lost and that rerunning the same command on every host resumes (exit
status LOST_PROCESS_EXIT).

JAX is imported inside the functions, so the binaries can import this module before
`allocator.keep_freed_memory` runs.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
import time
from typing import Sequence

from xtal2dos_jax.core.errors import one_line

# How long processes wait for each other at start-up (the default of
# jax.distributed.initialize's initialization_timeout).
_START_UP_TIMEOUT_S = 300
# Each process of a multi-process run beats in the coordination service's key-value
# store every _BEAT_S; a peer whose beat has not changed for PEER_SILENCE_S is lost.
_BEAT_S = 1.0
PEER_SILENCE_S = 20.0
# The coordination service's own heartbeat timeout. Longer than PEER_SILENCE_S, so a
# lost peer is reported by `_PeerWatch` first: when the service notices, it aborts
# every process with a C++ stack trace ("Fatal Python error: Aborted"), and its error
# callback cannot be a Python function (jaxlib fails converting the status).
HEARTBEAT_TIMEOUT_S = 60
# Exit status of a process that lost a peer: a temporary failure (EX_TEMPFAIL), since
# rerunning the same command on every host resumes from the last checkpoint.
LOST_PROCESS_EXIT = 75
# Texts of the errors a collective raises when a peer process is gone (gloo on CPU).
_LOST_PEER_TEXT = re.compile(
    r"Gloo|Connection reset|Connection refused|Connection closed|Broken pipe|heartbeat|"
    r"unhealthy|[Cc]oordination ?[Ss]ervice|failed to connect")
# Key-value-store values of a process's beat besides its counter.
_FINISHED, _FAILED = "finished", "failed"
# The workdir of the run in progress, named in the lost-process message.
_lost_process_workdir: str | None = None
_peer_watch: "_PeerWatch | None" = None


def initialize(**kwargs) -> None:
  """`jax.distributed.initialize` with the `HEARTBEAT_TIMEOUT_S` heartbeat timeout."""
  import jax
  jax.distributed.initialize(heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_S, **kwargs)


def _process_ids() -> tuple[int, int]:
  """(this process's id, number of processes) of the distributed runtime."""
  from jax._src import distributed
  state = distributed.global_state
  return int(state.process_id or 0), int(state.num_processes or 1)


def _resume_text(workdir: str | None) -> str:
  if not workdir:
    return "from the last checkpoint"
  from xtal2dos_jax.training import workdir as workdir_lib
  last = workdir_lib.last_checkpoint(workdir_lib.Workdir(workdir).checkpoint_dir)
  if last is None:
    return "from the start (no checkpoint was saved yet)"
  epoch, step_in_epoch = last
  return (f"from epoch {epoch}" if not step_in_epoch
          else f"from epoch {epoch + 1} step {step_in_epoch}")


def lost_process_message(reason: str, lost: Sequence[int] | None = None,
                         workdir: str | None = None) -> str:
  """One line: which process was lost and why, that this one stops, and that rerunning
  the same command on every host resumes (from the last checkpoint in `workdir`).
  Without `lost`, with two processes, the lost one is the other."""
  me, count = _process_ids()
  if lost:
    who = f"process{'es' if len(lost) > 1 else ''} {', '.join(map(str, lost))} of {count}"
  elif count == 2:
    who = f"process {1 - me} of 2"
  else:
    who = f"another of the {count} processes"
  return (f"error: lost {who} ({one_line(reason)[:200]}); process {me} stops. Nothing is "
          f"lost: rerun the same command on every host to resume {_resume_text(workdir)}")


def _exit_lost_process(reason: str, lost: Sequence[int] | None = None) -> None:
  print(lost_process_message(reason, lost, _lost_process_workdir), file=sys.stderr,
        flush=True)
  # os._exit: a normal exit runs jax's shutdown barrier, which waits for the lost
  # process and then aborts.
  os._exit(LOST_PROCESS_EXIT)


class _PeerWatch(threading.Thread):
  """Beats for this process in the coordination service's key-value store and watches
  the other processes' beats; ends this process with one line (`_exit_lost_process`)
  when a peer goes silent for PEER_SILENCE_S, reports that it failed, or the service
  itself (process 0) cannot be reached. A peer that reports `finished` is no longer
  watched. Runs on its own thread, because the main thread of a process whose peer is
  gone waits inside a collective."""

  def __init__(self, client, me: int, count: int):
    super().__init__(name="xtal2dos_jax_peer_watch", daemon=True)
    self.client, self.me = client, me
    self.peers = [p for p in range(count) if p != me]
    self.halt = threading.Event()

  @staticmethod
  def key(process: int) -> str:
    return f"xtal2dos_jax/beat/{process}"

  def report(self, value: str) -> None:
    """Stops beating and leaves `value` (_FINISHED or _FAILED) for the peers."""
    self.halt.set()
    try:
      self.client.key_value_set(self.key(self.me), value, allow_overwrite=True)
    except Exception:  # the service is gone too; nothing to tell
      pass

  def run(self) -> None:
    beat = 0
    now = time.monotonic()
    seen = {p: (None, now) for p in self.peers}   # last value, when it last changed
    while not self.halt.wait(_BEAT_S):
      try:
        self.client.key_value_set(self.key(self.me), str(beat), allow_overwrite=True)
      except Exception as e:  # the coordination service (process 0) is unreachable
        if self.halt.is_set():
          return
        if self.me != 0:
          _exit_lost_process(f"the coordination service stopped answering: {e}", [0])
        return
      beat += 1
      now = time.monotonic()
      for peer in list(seen):
        try:
          value = self.client.key_value_try_get(self.key(peer))
        except Exception:  # not written yet
          value = None
        if value == _FINISHED:
          del seen[peer]
        elif value == _FAILED:
          _exit_lost_process("it stopped: an error or a preemption, see its log", [peer])
        elif value != seen[peer][0]:
          seen[peer] = (value, now)
        elif now - seen[peer][1] > PEER_SILENCE_S and not self.halt.is_set():
          _exit_lost_process(f"no sign of life for {PEER_SILENCE_S:g} s", [peer])


def start_peer_watch() -> None:
  global _peer_watch
  from jax._src import distributed  # the client is not public API
  client = distributed.global_state.client
  me, count = _process_ids()
  if client is None or count < 2 or _peer_watch is not None:
    return
  _peer_watch = _PeerWatch(client, me, count)
  _peer_watch.start()


def is_lost_peer_error(error: BaseException) -> bool:
  """Whether `error` (raised by a collective in a multi-process run) says that a peer
  process is gone rather than, e.g., that memory ran out."""
  import jax
  return (isinstance(error, jax.errors.JaxRuntimeError) and _process_ids()[1] > 1
          and bool(_LOST_PEER_TEXT.search(str(error))))


@contextlib.contextmanager
def lost_processes(workdir: str):
  """Ends a multi-process run whose peer is gone with one line on stderr (which process,
  and that rerunning the same command on every host resumes from the last checkpoint
  in `workdir`) and exit status LOST_PROCESS_EXIT, instead of a traceback followed by
  an abort: when a collective fails with a connection error here, or when `_PeerWatch`
  finds a peer silent. On leaving, tells the peers whether this process finished or
  failed, so that a peer waiting for it in a collective stops too."""
  global _lost_process_workdir
  _lost_process_workdir = workdir
  finished = False
  try:
    yield
    finished = True
  except Exception as e:  # jax.errors.JaxRuntimeError, checked below
    if is_lost_peer_error(e):
      _exit_lost_process(str(e).splitlines()[0] if str(e) else type(e).__name__)
    raise
  finally:
    if _peer_watch is not None:
      _peer_watch.report(_FINISHED if finished else _FAILED)
    _lost_process_workdir = None


def connect_collectives() -> None:
  """Sets up the cross-process collectives of a multi-process run while every process
  is at the same point: a key-value-store barrier, then one psum over all devices.

  XLA's CPU (gloo) collectives connect the processes at the first collective over a
  set of devices, and give up if a peer is not there within a fixed 30 s. Left to the
  first training step, that races with compilation: process 0 loads the step from the
  persistent compilation cache (only process 0 writes it) while the others compile it,
  which on a loaded machine takes longer than 30 s. Connected here, the training step
  reuses the connection, whose collectives wait for slower peers."""
  import jax
  import numpy as np
  from jax._src import distributed  # the client's barrier is not public API
  client = distributed.global_state.client
  if client is not None and hasattr(client, "wait_at_barrier"):
    client.wait_at_barrier("xtal2dos_jax_connect_collectives", _START_UP_TIMEOUT_S * 1000)
  ones = np.ones(jax.local_device_count(), np.float32)
  total = jax.pmap(lambda x: jax.lax.psum(x, "p"), axis_name="p")(ones)
  jax.block_until_ready(total)
