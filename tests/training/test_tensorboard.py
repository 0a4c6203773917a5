"""TensorBoard event files of a run: what a reader sees after appends and resumed-run
truncation.

The files are read back by TensorBoard's own `EventAccumulator` where TensorBoard is
installed (it is not a dependency), and otherwise by the small reader here: TFRecord
framing with its CRC-32C checked independently of the writer, `Event` protos parsed with
tensorboardX's message classes, and TensorBoard's purge rule applied (a
`SessionLog.START` at step s drops the steps >= s read before it).
"""
import os
import struct

import pytest

from xtal2dos_jax.training import tensorboard
from xtal2dos_jax.training import workdir as workdir_lib

tensorboardX = pytest.importorskip("tensorboardX")
from tensorboardX.proto import event_pb2  # noqa: E402


def _crc32c(data: bytes) -> int:
  crc = 0xFFFFFFFF
  for b in data:
    crc ^= b
    for _ in range(8):
      crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
  return crc ^ 0xFFFFFFFF


def _masked_crc32c(data: bytes) -> int:
  crc = _crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_events(path: str) -> list:
  """The `Event` protos of one file, every record's two CRCs checked."""
  with open(path, "rb") as f:
    data = f.read()
  events, i = [], 0
  while i < len(data):
    length = data[i:i + 8]
    assert struct.unpack("<I", data[i + 8:i + 12])[0] == _masked_crc32c(length)
    n = struct.unpack("<Q", length)[0]
    payload = data[i + 12:i + 12 + n]
    assert struct.unpack("<I", data[i + 12 + n:i + 16 + n])[0] == _masked_crc32c(payload)
    events.append(event_pb2.Event.FromString(payload))
    i += 16 + n
  return events


def visible(logdir: str) -> dict[int, dict]:
  """step -> {"wall_time", "scalars"} as TensorBoard shows them: files in name order, a
  session start at step s discarding the steps >= s read so far."""
  steps: dict[int, dict] = {}
  for path in tensorboard.event_files(logdir):
    events = read_events(path)
    assert events[0].file_version == "brain.Event:2"
    for event in events[1:]:
      if event.HasField("session_log"):
        assert event.session_log.status == event_pb2.SessionLog.START
        steps = {s: v for s, v in steps.items() if s < event.step}
      else:
        assert event.step not in steps
        steps[event.step] = {"wall_time": event.wall_time, "scalars": {
            v.tag: v.simple_value for v in event.summary.value}}
  return steps


def _record(epoch: int) -> dict:
  return {"epoch": epoch, "step": 13 * epoch, "train_loss": 1.0 / epoch, "val_loss": 0.5,
          "val": {"normalized": {"r2": 0.1 * epoch, "count": 103}}, "learning_rate": 1e-3,
          "wall_time": 1000.0 + epoch}


@pytest.fixture(autouse=True)
def _close_event_file():
  yield
  tensorboard.close()


def test_epochs_are_scalars_at_the_epoch_step(tmp_path):
  run = workdir_lib.Workdir(str(tmp_path))
  for epoch in (1, 2, 3):
    run.append_metrics(_record(epoch))
  files = tensorboard.event_files(str(tmp_path))
  assert len(files) == 1 and files[0].endswith(".000.xtal2dos_jax")   # one file per process
  steps = visible(str(tmp_path))
  assert list(steps) == [1, 2, 3]
  assert steps[2]["scalars"] == pytest.approx(
      {"train_loss": 0.5, "val_loss": 0.5, "val/normalized/r2": 0.2, "learning_rate": 1e-3})
  assert steps[3]["wall_time"] == 1003.0


def test_resume_truncation_shows_only_the_kept_epochs(tmp_path):
  run = workdir_lib.Workdir(str(tmp_path))
  for epoch in (1, 2, 3):
    run.append_metrics(_record(epoch))
  # A resumed run (a new process) that checkpointed after epoch 2 drops epoch 3, then
  # redoes it with other values.
  tensorboard.close()
  run.truncate_metrics(2)
  assert list(visible(str(tmp_path))) == [1, 2]
  redone = dict(_record(3), train_loss=7.0)
  run.append_metrics(redone)
  steps = visible(str(tmp_path))
  assert list(steps) == [1, 2, 3] and steps[3]["scalars"]["train_loss"] == 7.0
  assert len(tensorboard.event_files(str(tmp_path))) == 2
  run.truncate_metrics(0)                                 # no checkpoint: everything redone
  assert visible(str(tmp_path)) == {}


def test_the_single_file_of_an_older_run_is_moved_on_truncation(tmp_path):
  """Runs written before tensorboardX kept one file, `events.out.tfevents.xtal2dos_jax`,
  which sorts after the time-stamped names: its kept epochs move into the new file."""
  run = workdir_lib.Workdir(str(tmp_path))
  for epoch in (1, 2, 3):
    run.append_metrics(_record(epoch))
  tensorboard.close()
  [path] = tensorboard.event_files(str(tmp_path))
  os.rename(path, tmp_path / "events.out.tfevents.xtal2dos_jax")
  run.truncate_metrics(2)
  [path] = tensorboard.event_files(str(tmp_path))
  assert os.path.basename(path) != "events.out.tfevents.xtal2dos_jax"
  run.append_metrics(_record(3))
  assert list(visible(str(tmp_path))) == [1, 2, 3]


def test_a_run_started_afresh_removes_the_event_files(tmp_path):
  run = workdir_lib.Workdir(str(tmp_path))
  run.append_metrics(_record(1))
  tensorboard.remove(str(tmp_path))
  assert tensorboard.event_files(str(tmp_path)) == []
  run.append_metrics(_record(1))              # a file removed under the writer is reopened
  assert list(visible(str(tmp_path))) == [1]


def test_tensorboard_reads_the_files(tmp_path):
  event_accumulator = pytest.importorskip(
      "tensorboard.backend.event_processing.event_accumulator")
  run = workdir_lib.Workdir(str(tmp_path))
  for epoch in (1, 2, 3):
    run.append_metrics(_record(epoch))
  tensorboard.close()
  run.truncate_metrics(2)
  run.append_metrics(dict(_record(3), train_loss=7.0))
  run.append_metrics(_record(4))
  reader = event_accumulator.EventAccumulator(str(tmp_path))
  reader.Reload()
  assert "val/normalized/r2" in reader.Tags()["scalars"]
  scalars = reader.Scalars("train_loss")
  assert [s.step for s in scalars] == [1, 2, 3, 4]
  assert [s.value for s in scalars] == pytest.approx([1.0, 0.5, 7.0, 0.25])
  assert scalars[0].wall_time == 1001.0


def test_without_tensorboardx_training_logs_once_and_writes_none(tmp_path, monkeypatch):
  monkeypatch.setattr(tensorboard, "RecordWriter", None)
  monkeypatch.setattr(tensorboard, "_warned_unavailable", False)
  warnings = []
  monkeypatch.setattr(tensorboard.logging, "warning", lambda *a: warnings.append(a))
  run = workdir_lib.Workdir(str(tmp_path))
  for epoch in (1, 2):
    run.append_metrics(_record(epoch))
  run.truncate_metrics(1)
  assert tensorboard.event_files(str(tmp_path)) == [] and len(warnings) == 1
  assert "tensorboardX is not installed" in warnings[0][0]
