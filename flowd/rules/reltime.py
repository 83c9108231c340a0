"""Relative time in rules: `now`, `now-7d`, `now+2h`, and the instant `now` stands for.

A rule's value is compiled once, but `now` must be read when an event is classified:
the compiled rule keeps the offset, and `evaluation_time()` says what `now` is. The
engine pins it once per change event, a scheduled tick once for all its rows (the
tick's scheduled time); unpinned, it is the wall clock.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime, timedelta
from typing import Final

from flowd.durations import parse_duration

_RELATIVE: Final = re.compile(r"\s*now\s*(?:([+-])\s*(\S.*?))?\s*", re.IGNORECASE)
_pinned: ContextVar[datetime | None] = ContextVar("flowd_evaluation_time", default=None)


def parse_relative(text: str) -> timedelta | None:
    """The offset from `now` that `text` names (`now` → 0, `now-1d` → -1 day), or None."""
    match = _RELATIVE.fullmatch(text)
    if match is None:
        return None
    sign, amount = match[1], match[2]
    if sign is None:
        return timedelta(0)
    try:
        seconds = parse_duration(amount)
    except ValueError:
        return None
    return timedelta(seconds=-seconds if sign == "-" else seconds)


def evaluation_time() -> datetime:
    """What `now` is in the rules being evaluated."""
    return _pinned.get() or datetime.now(UTC)


@contextmanager
def evaluated_at(instant: datetime) -> Iterator[None]:
    """Rules evaluated inside read `now` as `instant`."""
    token = _pinned.set(instant)
    try:
        yield
    finally:
        _pinned.reset(token)
