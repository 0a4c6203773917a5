"""Errors raised for bad user input.

Every error a user can cause is an `InputError` whose message is one line that
names the offending input (file, id, config key) and the reason.
"""
from __future__ import annotations

import difflib
from typing import Any, Iterable


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


def check_choice(value: Any, choices: Iterable[str], name: str, what: str | None = None) -> str:
  """`value` if it is one of `choices`, else an InputError naming the input and the choices.

  The message reads `<name>: unknown <what> <value!r>; expected one of <a>, <b>, ...`,
  followed by `; did you mean <c!r>?` when one choice is close to a misspelt string.

  Args:
    value: the given value; anything but one of the strings in `choices` (None, a list)
      is refused with the InputError.
    choices: the valid names, in the order the message lists them (a tuple or a dict's keys).
    name: the input, e.g. 'config.data.scaling'.
    what: the noun of the message; default: the last dotted part of `name` with
      underscores as spaces ('config.model.position_embedding' -> 'position embedding').

  Returns:
    `value`, so a lookup reads `TABLE[check_choice(key, TABLE, name)]`.
  """
  choices = tuple(choices)
  if isinstance(value, str) and value in choices:
    return value
  what = what or name.rsplit(".", 1)[-1].replace("_", " ")
  close = difflib.get_close_matches(value, choices, n=1) if isinstance(value, str) else []
  hint = f"; did you mean {close[0]!r}?" if close else ""
  raise InputError(name, f"unknown {what} {value!r}; expected one of {', '.join(choices)}{hint}")
