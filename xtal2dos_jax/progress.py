"""A dependency-free per-epoch progress bar for the training loop."""
from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressBar:
  """`epoch 3/60 [######....] 12/17 loss 0.0123 41 crystals/s` on one line.

  Redraws in place on a terminal; elsewhere (CI, log files) prints only the final
  line of each epoch so logs stay short.
  """

  def __init__(self, total: int, desc: str, enabled: bool = True, stream: TextIO | None = None,
               width: int = 24):
    self.total, self.desc, self.enabled, self.width = max(total, 1), desc, enabled, width
    self.stream = stream or sys.stderr
    self.interactive = enabled and self.stream.isatty()
    self.start = time.perf_counter()
    self.count = 0
    self.crystals = 0

  def update(self, crystals: int, postfix: str = "") -> None:
    self.count += 1
    self.crystals += crystals
    if self.interactive:
      self.stream.write("\r" + self._line(postfix))
      self.stream.flush()

  def close(self, postfix: str = "") -> None:
    if not self.enabled:
      return
    self.stream.write(("\r" if self.interactive else "") + self._line(postfix) + "\n")
    self.stream.flush()

  def _line(self, postfix: str) -> str:
    done = int(self.width * min(self.count, self.total) / self.total)
    rate = self.crystals / max(time.perf_counter() - self.start, 1e-9)
    return (f"{self.desc} [{'#' * done}{'.' * (self.width - done)}] {self.count}/{self.total} "
            f"{postfix} {rate:.0f} crystals/s").rstrip()
