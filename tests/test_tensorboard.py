"""TensorBoard event files written without TensorFlow: framing, encoding, workdir hooks."""
import os
import struct

import pytest

from xtal2dos_jax import tensorboard, workdir as workdir_lib


def _varint(data: bytes, i: int) -> tuple[int, int]:
  shift = value = 0
  while True:
    b = data[i]
    value |= (b & 0x7F) << shift
    i, shift = i + 1, shift + 7
    if not b & 0x80:
      return value, i


def _fields(data: bytes):
  """(field number, value) pairs of a protobuf message (varint, fixed64, bytes, fixed32)."""
  i = 0
  while i < len(data):
    key, i = _varint(data, i)
    field, wire = key >> 3, key & 7
    if wire == 0:
      value, i = _varint(data, i)
    elif wire == 1:
      value, i = data[i:i + 8], i + 8
    elif wire == 2:
      n, i = _varint(data, i)
      value, i = data[i:i + n], i + n
    elif wire == 5:
      value, i = data[i:i + 4], i + 4
    else:
      raise ValueError(f"wire type {wire}")
    yield field, value


def read_events(path: str) -> list[dict]:
  with open(path, "rb") as f:
    return decode_events(f.read())


def decode_events(data: bytes) -> list[dict]:
  """Decodes TFRecord-framed events independently of the writer, checking every CRC."""
  events, i = [], 0
  while i < len(data):
    length = data[i:i + 8]
    assert struct.unpack("<I", data[i + 8:i + 12])[0] == tensorboard.masked_crc32c(length)
    n = struct.unpack("<Q", length)[0]
    payload = data[i + 12:i + 12 + n]
    assert struct.unpack("<I", data[i + 12 + n:i + 16 + n])[0] == \
        tensorboard.masked_crc32c(payload)
    i += 16 + n
    event = {"scalars": {}}
    for field, value in _fields(payload):
      if field == 1:
        event["wall_time"] = struct.unpack("<d", value)[0]
      elif field == 2:
        event["step"] = value
      elif field == 3:
        event["file_version"] = value.decode()
      elif field == 5:
        for _, v in _fields(value):
          parts = dict(_fields(v))
          event["scalars"][parts[1].decode()] = struct.unpack("<f", parts[2])[0]
    events.append(event)
  return events


def test_crc32c_matches_the_standard_check_value():
  assert tensorboard.crc32c(b"123456789") == 0xE3069283
  assert tensorboard.crc32c(b"") == 0


def test_event_encodes_step_time_and_scalars():
  payload = tensorboard.encode_event(1234.5, 300, scalars={"val/r2": 0.25, "loss": -1.5})
  fields = list(_fields(payload))
  assert fields[0] == (1, struct.pack("<d", 1234.5)) and fields[1] == (2, 300)
  assert decode_events(tensorboard.tfrecord(payload))[0]["scalars"] == {"val/r2": 0.25,
                                                                         "loss": -1.5}


def _record(epoch: int) -> dict:
  return {"epoch": epoch, "step": 13 * epoch, "train_loss": 1.0 / epoch, "val_loss": 0.5,
          "val": {"normalized": {"r2": 0.1 * epoch, "count": 103}}, "learning_rate": 1e-3,
          "wall_time": 1000.0 + epoch}


def test_workdir_metrics_are_mirrored_and_truncated_on_resume(tmp_path):
  run = workdir_lib.Workdir(str(tmp_path))
  for epoch in (1, 2, 3):
    run.append_metrics(_record(epoch))
  path = os.path.join(str(tmp_path), tensorboard.EVENTS_FILE)
  events = read_events(path)
  assert events[0]["file_version"] == "brain.Event:2"
  assert [e["step"] for e in events[1:]] == [1, 2, 3]
  assert events[2]["scalars"] == pytest.approx(
      {"train_loss": 0.5, "val_loss": 0.5, "val/normalized/r2": 0.2,
       "learning_rate": 1e-3})
  assert events[3]["wall_time"] == 1003.0
  # A resumed run that checkpointed after epoch 2 drops epoch 3 here too, then redoes it.
  run.truncate_metrics(2)
  assert [e["step"] for e in read_events(path)[1:]] == [1, 2]
  run.append_metrics(_record(3))
  assert [e["step"] for e in read_events(path)[1:]] == [1, 2, 3]
