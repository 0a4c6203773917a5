"""Tests for xtal2dos_jax.core.errors: one-line InputError messages and `check_choice`."""
from __future__ import annotations

import pytest

from xtal2dos_jax.core.errors import check_choice, InputError


def test_check_choice_returns_a_valid_value():
  assert check_choice("b", ("a", "b"), "config.x.y") == "b"
  assert check_choice("b", {"a": 1, "b": 2}, "config.x.y") == "b"   # a dict's keys


@pytest.mark.parametrize("value", ["c", "A", None, ["a"], 1])
def test_check_choice_names_the_input_and_the_choices(value):
  with pytest.raises(InputError) as info:
    check_choice(value, {"a": 1, "b": 2}, "config.model.position_embedding")
  assert info.value.name == "config.model.position_embedding"
  assert str(info.value) == (f"config.model.position_embedding: unknown position embedding "
                             f"{value!r}; expected one of a, b")


def test_check_choice_noun_can_be_given():
  with pytest.raises(InputError, match=r"^split: unknown split name 'x'; expected one of a$"):
    check_choice("x", ("a",), "split", what="split name")
