"""TensorBoard scalar event files of a run, written with tensorboardX (no TensorFlow).

A run's per-epoch metrics records (the lines of `workdir/metrics.jsonl`) also go to event
files in the workdir, so `tensorboard --logdir=runs/` shows every run under `runs/` side
by side. The step of every scalar is the epoch, its wall time the record's.

Each process that writes a run opens one new file,
`events.out.tfevents.<unix time>.<host>.<n>.xtal2dos_jax` (`n` counts the run's files,
so the names sort in the order they were written even within one second), and flushes
it after every epoch, so a killed run loses no epoch it logged. A resumed run drops
the epochs after its last checkpoint (`truncate`) by starting its file with the marker
that tensorboardX's `SummaryWriter(purge_step=...)` writes, a `SessionLog.START` event
at the first epoch it redoes: TensorBoard then discards the steps from there on that
it read from earlier files, so it shows exactly the epochs of metrics.jsonl.

The events go through tensorboardX's `RecordWriter` (TFRecord framing, CRC-32C) and
protocol buffers rather than its `SummaryWriter`, whose file writer queues events to a
thread that writes them to disk every `flush_secs` (its `flush()` does not wait for the
queue), which would lose the last epochs of a killed run.

tensorboardX is an optional dependency (`pip install -e ".[tensorboard]"`): without it
no event file is written, and the first epoch logs a warning saying so.
"""
from __future__ import annotations

import dataclasses
import glob
import os
import socket
import time
from typing import Any, Iterable, Iterator

from absl import logging

try:
  from tensorboardX import RecordWriter
  from tensorboardX.proto import event_pb2, summary_pb2
except ImportError:  # the optional extra is not installed
  RecordWriter = None

# Every event file of a run matches this (the single file of runs written before
# tensorboardX was used, `events.out.tfevents.xtal2dos_jax`, included).
EVENTS_GLOB = "events.out.tfevents.*xtal2dos_jax"
# That single file: it sorts after the time-stamped names, so `truncate` moves its kept
# epochs into the new file.
_SINGLE_FILE = "events.out.tfevents.xtal2dos_jax"
_FILE_VERSION = "brain.Event:2"
_SKIPPED_KEYS = ("epoch", "step", "wall_time", "count")


@dataclasses.dataclass
class _OpenFile:
  logdir: str     # absolute path of the run's directory
  path: str       # the event file
  writer: Any     # tensorboardX.RecordWriter


# The event file this process is writing. One run at a time (a process trains its runs
# one after another): opening another run's file closes this one.
_open: _OpenFile | None = None
_warned_unavailable = False


def available() -> bool:
  """Whether tensorboardX is installed, i.e. event files are written."""
  return RecordWriter is not None


def event_files(logdir: str) -> list[str]:
  """Paths of the run's event files, in the order TensorBoard reads them (by name)."""
  return sorted(glob.glob(os.path.join(glob.escape(logdir), EVENTS_GLOB)))


def record_scalars(record: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, float]]:
  """(tag, value) for every number in a metrics record, nested keys
  joined by '/' (e.g. `val/normalized/r2`); the epoch, step, time and crystal counts
  are bookkeeping, not curves."""
  for key, value in record.items():
    if key in _SKIPPED_KEYS:
      continue
    if isinstance(value, dict):
      yield from record_scalars(value, f"{prefix}{key}/")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
      yield f"{prefix}{key}", float(value)


def _epoch_event(record: dict[str, Any]):
  values = [summary_pb2.Summary.Value(tag=tag, simple_value=value)
            for tag, value in record_scalars(record)]
  return event_pb2.Event(wall_time=record.get("wall_time", time.time()),
                         step=int(record["epoch"]), summary=summary_pb2.Summary(value=values))


def close() -> None:
  """Closes the event file being written, if any."""
  global _open
  if _open is not None:
    _open.writer.close()
  _open = None


def _open_new(logdir: str):
  """Starts a new event file of the run in `logdir` (its file version event first)."""
  global _open
  close()
  name = (f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}."
          f"{len(event_files(logdir)):03d}.xtal2dos_jax")
  path = os.path.join(logdir, name)
  writer = RecordWriter(path)
  writer.write(event_pb2.Event(wall_time=time.time(),
                               file_version=_FILE_VERSION).SerializeToString())
  _open = _OpenFile(os.path.abspath(logdir), path, writer)
  return writer


def _writer(logdir: str):
  """The file this process writes the run in `logdir` to, opened on first use (and
  again if the file was removed since, e.g. by an overwriting run)."""
  if _open and _open.logdir == os.path.abspath(logdir) and os.path.exists(_open.path):
    return _open.writer
  return _open_new(logdir)


def append_epoch(logdir: str, record: dict[str, Any]) -> None:
  """Adds one epoch's metrics record (with an `epoch`, optionally a `wall_time` in
  seconds since the epoch) to the run's event file, on disk when this returns."""
  global _warned_unavailable
  if not available():
    if not _warned_unavailable:
      logging.warning("tensorboardX is not installed, so no TensorBoard event files are "
                      "written (pip install -e '.[tensorboard]'); metrics.jsonl has the "
                      "same metrics")
      _warned_unavailable = True
    return
  writer = _writer(logdir)
  writer.write(_epoch_event(record).SerializeToString())
  writer.flush()


def truncate(logdir: str, kept: Iterable[dict[str, Any]]) -> None:
  """Makes TensorBoard show only the epochs of `kept`, the metrics records of metrics.jsonl
  that a resumed run keeps (the epochs after its checkpoint are redone): a new event file
  starts with a purge marker at the epoch after the last kept one. A run with no event
  file yet gets none here; its first epoch opens one."""
  kept = list(kept)
  files = event_files(logdir)
  if not available() or not files:
    return
  writer = _open_new(logdir)
  single = os.path.join(logdir, _SINGLE_FILE)
  if single in files:
    # The run's one older file would be read after the new one: its kept epochs move.
    for record in kept:
      writer.write(_epoch_event(record).SerializeToString())
  else:
    purge_step = kept[-1]["epoch"] + 1 if kept else 1
    writer.write(event_pb2.Event(
        wall_time=time.time(), step=purge_step,
        session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)
    ).SerializeToString())
  writer.flush()
  if single in files:
    os.remove(single)


def remove(logdir: str) -> None:
  """Deletes the run's event files (a run started afresh in `logdir`)."""
  if _open and _open.logdir == os.path.abspath(logdir):
    close()
  for path in event_files(logdir):
    os.remove(path)
