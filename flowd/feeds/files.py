"""Events files: one JSON change event a line (`flowd --once --events FILE`, `-` is stdin).

Each line is decoded and checked alone (`read_events`); a bad line is counted, logged with
its number and skipped.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from flowd.errors import ConfigurationError
from flowd.feeds.events import read_events
from flowd.logs import get_logger
from flowd.models import ChangeEvent
from flowd.summary import Summary

log = get_logger()


@contextmanager
def open_events(path: str) -> Iterator[IO[bytes]]:
    """The events file as bytes: each line is decoded alone (`read_events`)."""
    if path == "-":
        yield sys.stdin.buffer
        return
    try:
        stream = Path(path).open("rb")  # noqa: SIM115 - closed below; open errors are ours
    except OSError as exc:
        raise ConfigurationError(f"cannot read events file {path}: {exc.strerror}") from None
    with stream:
        yield stream


def good_events(stream: IO[bytes], summary: Summary) -> Iterator[tuple[int, ChangeEvent]]:
    """The events of the stream, counted; bad lines are counted and logged, then skipped."""
    for line in read_events(stream):
        if line.event is None:
            summary.bad_lines += 1
            log.error("event.bad_line", line=line.number, error=line.error)
            continue
        summary.events += 1
        yield line.number, line.event
