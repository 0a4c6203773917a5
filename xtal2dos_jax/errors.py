"""Errors raised for bad user input.

Every error a user can cause is an `InputError` whose message is one line that
names the offending input (file, id, config key) and the reason.
"""


class InputError(ValueError):
  """Bad user input (structure, label, config, checkpoint); message is one line."""

  def __init__(self, name: str, reason: str):
    self.name = str(name)
    self.reason = " ".join(str(reason).split())
    super().__init__(f"{self.name}: {self.reason}")
