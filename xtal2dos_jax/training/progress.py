"""Per-epoch progress of the training loop, drawn by tqdm.

    epoch 3/60 [##########..............] 12/17, loss 0.0123 val 0.0101 val R^2 0.612, 41 crystals/s

On a terminal the line is redrawn in place as the steps finish; elsewhere (CI, log files)
nothing is drawn until the epoch ends, and then its final line is printed once, so logs
keep one line per epoch.
"""
from __future__ import annotations

import math
import sys
from typing import TextIO

import tqdm

_FORMAT = "{desc} [{bar:24}] {n_fmt}/{total_fmt}{postfix}"


class ProgressBar:
  """One epoch's bar: `update` after every training step, `close` at the end of the epoch.

  Args:
    total: training steps of the epoch.
    desc: the text before the bar, e.g. `epoch 3/60`.
    enabled: False draws and prints nothing (config.train.progress, non-lead processes).
    stream: where to draw (default stderr); redrawn in place only if it is a terminal.
  """

  def __init__(self, total: int, desc: str, enabled: bool = True, stream: TextIO | None = None):
    self.stream = stream or sys.stderr
    self.enabled = enabled
    self.interactive = enabled and self.stream.isatty()
    self.crystals = 0
    # Off a terminal an infinite `delay` keeps tqdm from ever drawing; `close` prints.
    self._bar = tqdm.tqdm(total=max(total, 1), desc=desc, file=self.stream,
                          disable=not enabled, delay=0 if self.interactive else math.inf,
                          bar_format=_FORMAT, ascii=".#", leave=True)

  @property
  def count(self) -> int:
    """Steps done, starting from the steps a resumed epoch had done before."""
    return self._bar.n

  @count.setter
  def count(self, steps: int) -> None:
    self._bar.n = steps

  def _postfix(self, postfix: str) -> str:
    """`postfix` and the crystals per second since the bar was made."""
    elapsed = self._bar.format_dict["elapsed"]
    rate = f"{self.crystals / max(elapsed, 1e-9):.0f} crystals/s"
    return f"{postfix}, {rate}" if postfix else rate

  def update(self, crystals: int, postfix: str = "") -> None:
    """One step done, over `crystals` crystals; `postfix` goes after the step count."""
    if not self.enabled:
      return
    self.crystals += crystals
    self._bar.set_postfix_str(self._postfix(postfix), refresh=False)
    self._bar.update(1)

  def close(self, postfix: str = "") -> None:
    """Ends the epoch's line with `postfix` (e.g. the epoch's losses)."""
    if not self.enabled:
      return
    self._bar.set_postfix_str(self._postfix(postfix), refresh=False)
    if not self.interactive:
      self.stream.write(str(self._bar) + "\n")
      self.stream.flush()
    self._bar.close()
