"""The event checks every feed shares: bounded depth and numbers, text jsonb accepts."""

from __future__ import annotations

from typing import Any

import pytest

from flowd.errors import EventError
from flowd.feeds.events import MAX_DEPTH, MAX_INTEGER_DIGITS, check_value, decode_json


def load_json(text: str | bytes) -> Any:
    value = decode_json(text)
    check_value(value)
    return value


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("[" * 100_000 + "]" * 100_000, "nested deeper than 64"),
        ("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), "nested deeper than 64"),
        ("9" * 5000, "longer than 300 digits"),
        ("-" + "9" * (MAX_INTEGER_DIGITS + 1), "longer than 300 digits"),
        (b'{"a": "\xff\xfe"}', "not UTF-8: byte 0xff at offset 7"),
        ('"\\ud800"', "lone surrogate"),
        ('{"\\udfff": 1}', "lone surrogate"),
        ('{"a": "x\\u0000"}', "NUL"),
        ("1e999", "out of range"),
        ("NaN", "not a JSON number"),
        ("{not json", "not JSON"),
    ],
)
def test_hostile_json_is_one_event_error(text: str | bytes, reason: str) -> None:
    with pytest.raises(EventError, match=reason):
        load_json(text)


def test_values_at_the_limits_are_accepted() -> None:
    deepest = "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1)  # inside the object: 64 levels
    longest = "9" * MAX_INTEGER_DIGITS
    assert load_json(f'{{"a": {deepest}, "b": {longest}, "c": "\\ud83d\\ude00 é"}}')["c"] == "😀 é"


def test_decoded_values_are_checked_too() -> None:
    """Realtime frames arrive decoded: the same limits hold for them."""
    nested: list[object] = []
    for _ in range(MAX_DEPTH):
        nested = [nested]
    with pytest.raises(EventError, match="nested deeper"):
        check_value({"record": nested})
    with pytest.raises(EventError, match="longer than"):
        check_value({"record": {"n": 10**MAX_INTEGER_DIGITS}})
    with pytest.raises(EventError, match="NUL"):
        check_value({"record": {"a\x00": 1}})
