"""SIGTERM (a preemption) as a request to checkpoint and stop.

Training runs inside `StopFlag`; the loop polls `requested` after every step, saves a
mid-epoch checkpoint when it is set and raises `Preempted`. Rerunning the same command
resumes from that checkpoint.
"""
from __future__ import annotations

import signal

from absl import logging


class StopFlag:
  """Context manager: while inside, SIGTERM sets `requested` instead of ending the
  process; the previous handler comes back on exit. Outside the main thread (where
  signal handlers cannot be installed) it never fires."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self) -> "StopFlag":
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread: no signal handling
      self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM received: saving a checkpoint and stopping")
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


class Preempted(Exception):
  """Raised after a SIGTERM-triggered checkpoint; rerun the command to resume."""
