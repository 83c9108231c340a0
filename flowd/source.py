"""Source: turn raw input into `ChangeEvent`s.

A line of an events file (or a Realtime callback payload) is the `data` object of a
`postgres_changes` frame, the supabase-js shape, or a whole frame whose
`payload.data` is taken. Anything else is an `EventError` saying why.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

import pydantic

from flowd.errors import EventError, first_problem
from flowd.models import ChangeEvent


def parse_event(raw: Any) -> ChangeEvent:
    """A change event from a decoded JSON value; EventError when it is not one."""
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


def read_events(stream: IO[str]) -> Iterator[EventLine]:
    """Events of a JSON-lines stream, numbered from 1; blank lines are skipped."""
    for number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            yield EventLine(number, parse_event(json.loads(line)))
        except json.JSONDecodeError as exc:
            yield EventLine(number, None, f"not JSON: {exc.msg} at column {exc.colno}")
        except EventError as exc:
            yield EventLine(number, None, str(exc))
