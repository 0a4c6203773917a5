"""Errors raised for bad user input.

Every error a user can cause is an `InputError` whose message is one line that
names the offending input (file, id, config key) and the reason.
"""


def one_line(text) -> str:
  """`text` with all whitespace runs (newlines included) collapsed to single spaces."""
  return " ".join(str(text).split())


def error_text(exc: BaseException) -> str:
  """`Type: message` of an exception on one line, for use as an InputError reason."""
  msg = one_line(exc)
  return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


class InputError(ValueError):
  """Bad user input (structure, label, config, checkpoint); message is one line."""

  def __init__(self, name: str, reason: str):
    self.name = str(name)
    self.reason = one_line(reason)
    super().__init__(f"{self.name}: {self.reason}")
