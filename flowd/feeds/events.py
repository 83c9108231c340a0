"""Source: turn raw input into `ChangeEvent`s.

A line of an events file (or a Realtime callback payload) is the `data` object of a
`postgres_changes` frame, the supabase-js shape, or a whole frame whose
`payload.data` is taken. Anything else is an `EventError` saying why.

Every feed (events files, Realtime frames, durable rows) decodes JSON with `decode_json`
and `parse_event` checks it (`check_value`): an event nested deeper than `MAX_DEPTH`,
with an integer longer than `MAX_INTEGER_DIGITS`, a NUL or a lone surrogate in a string
is refused with one line saying why, before it can reach a traceback in the parser, the
serialiser or the database (jsonb accepts none of NUL, lone surrogates and `NaN`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

import pydantic

from flowd.errors import EventError, first_problem
from flowd.models import ChangeEvent

MAX_DEPTH = 64
MAX_INTEGER_DIGITS = 300
_INTEGER_LIMIT = 10**MAX_INTEGER_DIGITS
_TOO_LONG = f"an integer longer than {MAX_INTEGER_DIGITS} digits"
_TOO_DEEP = f"nested deeper than {MAX_DEPTH} levels"


def _integer(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INTEGER_DIGITS:
        raise EventError(_TOO_LONG)
    return int(text)


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise EventError(f"a number out of range ({text[:20]})")
    return number


def _constant(text: str) -> Any:
    raise EventError(f"{text} is not a JSON number")


def _check_text(text: str) -> None:
    if "\x00" in text:
        raise EventError("a string holds a NUL character (\\u0000)")
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise EventError("a string holds a lone surrogate (\\ud800-\\udfff)") from None


def check_value(value: Any) -> None:
    """EventError when a decoded JSON value is too deep or holds text jsonb refuses."""
    pending: list[tuple[Any, int]] = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, str):
            _check_text(item)
        elif isinstance(item, int) and abs(item) >= _INTEGER_LIMIT:
            raise EventError(_TOO_LONG)
        elif isinstance(item, float) and not math.isfinite(item):
            raise EventError("a number out of range")
        elif isinstance(item, dict | list):
            if depth >= MAX_DEPTH:
                raise EventError(_TOO_DEEP)
            if isinstance(item, dict):
                for key in item:
                    _check_text(str(key))
            children = item.values() if isinstance(item, dict) else item
            pending.extend((child, depth + 1) for child in children)


def decode_json(text: str | bytes) -> Any:
    """The JSON value of `text`, numbers bounded but not checked otherwise (`check_value`);
    EventError saying why when it is not one."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            bad = f"byte {exc.object[exc.start]:#04x} at offset {exc.start}"
            raise EventError(f"not UTF-8: {bad}") from None
    try:
        return json.loads(text, parse_int=_integer, parse_float=_finite, parse_constant=_constant)
    except json.JSONDecodeError as exc:
        raise EventError(f"not JSON: {exc.msg} at column {exc.colno}") from None
    except RecursionError:
        raise EventError(_TOO_DEEP) from None


def parse_event(raw: Any) -> ChangeEvent:
    """A change event from a decoded JSON value; EventError when it is not one."""
    check_value(raw)
    if isinstance(raw, dict) and isinstance(raw.get("payload"), dict) and "data" in raw["payload"]:
        raw = raw["payload"]["data"]
    if not isinstance(raw, dict):
        raise EventError(f"expected a JSON object, got {type(raw).__name__}")
    try:
        return ChangeEvent.model_validate(raw)
    except pydantic.ValidationError as exc:
        where, problem = first_problem(exc, "event")
        raise EventError(f"{where}: {problem}") from None


@dataclass(frozen=True, slots=True)
class EventLine:
    """One line of an events file: the event, or why it is not one."""

    number: int
    event: ChangeEvent | None
    error: str | None = None


def read_events(stream: IO[bytes]) -> Iterator[EventLine]:
    """Events of a JSON-lines byte stream, numbered from 1; blank lines are skipped.

    Each line is decoded on its own: invalid UTF-8 spoils its line only."""
    for number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            yield EventLine(number, parse_event(decode_json(line)))
        except EventError as exc:
            yield EventLine(number, None, str(exc))
