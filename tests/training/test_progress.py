"""ProgressBar: redrawn on a terminal, one line per epoch elsewhere, silent when disabled."""
import io

from xtal2dos_jax.training.progress import ProgressBar


class _Terminal(io.StringIO):
  def isatty(self) -> bool:
    return True


def _epoch(stream, enabled: bool = True, resumed_at: int = 0) -> str:
  bar = ProgressBar(17, "epoch 3/60", enabled=enabled, stream=stream)
  bar.count = resumed_at
  for _ in range(17 - resumed_at):
    bar.update(32, "loss 0.1")
  bar.close("loss 0.0123 val 0.0101")
  return stream.getvalue()


def test_off_a_terminal_each_epoch_is_one_line():
  text = _epoch(io.StringIO(), resumed_at=5)
  assert text.count("\n") == 1 and text.endswith("\n") and "\r" not in text
  assert text.startswith("epoch 3/60 [########################] 17/17, loss 0.0123 val 0.0101, ")
  assert text.rstrip().endswith(" crystals/s")


def test_on_a_terminal_the_line_is_redrawn_in_place():
  text = _epoch(_Terminal())
  assert text.startswith("\repoch 3/60 [") and text.endswith("\n") and text.count("\n") == 1
  assert "17/17, loss 0.0123 val 0.0101, " in text.splitlines()[-1].split("\r")[-1]


def test_disabled_prints_nothing():
  assert _epoch(io.StringIO(), enabled=False) == ""
  assert _epoch(_Terminal(), enabled=False) == ""
