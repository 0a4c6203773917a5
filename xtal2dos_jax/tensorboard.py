"""TensorBoard scalar event files, written without TensorFlow (DESIGN 6).

A run's per-epoch metrics (the records of `workdir/metrics.jsonl`) also go to
`workdir/events.out.tfevents.xtal2dos_jax`, so `tensorboard --logdir=runs/` shows every
run under `runs/` side by side. The file is the TFRecord framing of `Event` protocol
buffers holding `Summary.Value.simple_value` scalars; both are encoded here by hand (a few
fields of a stable wire format), which keeps TensorFlow and protobuf out of our
dependencies. The step of every scalar is the epoch.
"""
from __future__ import annotations

import os
import struct
import time
from typing import Any, Iterable, Iterator

EVENTS_FILE = "events.out.tfevents.xtal2dos_jax"
_FILE_VERSION = b"brain.Event:2"
_SKIPPED_KEYS = ("epoch", "step", "wall_time", "count")


def _crc32c_table() -> list[int]:
  table = []
  for n in range(256):
    c = n
    for _ in range(8):
      c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
    table.append(c)
  return table


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
  """CRC-32C (Castagnoli), the checksum TFRecord framing uses."""
  crc = 0xFFFFFFFF
  for b in data:
    crc = _CRC32C_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord(data: bytes) -> bytes:
  """One TFRecord: length, its masked CRC, payload, the payload's masked CRC."""
  length = struct.pack("<Q", len(data))
  return (length + struct.pack("<I", masked_crc32c(length)) + data
          + struct.pack("<I", masked_crc32c(data)))


def _varint(n: int) -> bytes:
  out = bytearray()
  n &= (1 << 64) - 1
  while True:
    byte, n = n & 0x7F, n >> 7
    out.append(byte | (0x80 if n else 0))
    if not n:
      return bytes(out)


def _length_delimited(field: int, payload: bytes) -> bytes:
  return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def encode_event(wall_time: float, step: int = 0, *, scalars: dict[str, float] | None = None,
                 file_version: bytes | None = None) -> bytes:
  """Serialised `tensorflow.Event`: wall_time (1), step (2), file_version (3),
  summary (5) with one `Value{tag (1), simple_value (2)}` per scalar."""
  out = b"\x09" + struct.pack("<d", wall_time) + b"\x10" + _varint(int(step))
  if file_version is not None:
    out += _length_delimited(3, file_version)
  if scalars:
    values = b"".join(
        _length_delimited(1, _length_delimited(1, tag.encode()) + b"\x15"
                          + struct.pack("<f", value))
        for tag, value in scalars.items())
    out += _length_delimited(5, values)
  return out


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


def _epoch_event(record: dict[str, Any]) -> bytes:
  return tfrecord(encode_event(record.get("wall_time", time.time()), record["epoch"],
                               scalars=dict(record_scalars(record))))


def append_epoch(logdir: str, record: dict[str, Any]) -> None:
  """Adds one epoch's metrics record to the run's event file (created on first use)."""
  path = os.path.join(logdir, EVENTS_FILE)
  header = b"" if os.path.exists(path) else tfrecord(
      encode_event(record.get("wall_time", time.time()), file_version=_FILE_VERSION))
  with open(path, "ab") as f:
    f.write(header + _epoch_event(record))
    f.flush()


def rewrite(logdir: str, records: Iterable[dict[str, Any]]) -> None:
  """Replaces the event file with exactly `records` (after a resumed run drops the
  epochs it redoes), atomically."""
  records = list(records)
  start = records[0].get("wall_time", time.time()) if records else time.time()
  data = tfrecord(encode_event(start, file_version=_FILE_VERSION))
  data += b"".join(_epoch_event(r) for r in records)
  from xtal2dos_jax.workdir import mkstemp_like_open  # workdir imports this module
  fd, tmp = mkstemp_like_open(logdir, suffix=".tmp")
  with os.fdopen(fd, "wb") as f:
    f.write(data)
  os.replace(tmp, os.path.join(logdir, EVENTS_FILE))
