"""Outages: whether the database is there right now, as one gate the whole process shares.

Whoever first meets an outage (`db.is_outage`) calls `mark_lost`: that is logged once
(`eventlog.unavailable`, a one-line cause) and a probe reconnects with backoff until the
server answers, then `mark_back` logs the return once (`eventlog.available`). Meanwhile
no action starts (`ActionRunner` awaits `wait_available`), and finished outcomes wait in
memory to be written (`Recorder`): an outage is waited out, never a FAILURE.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from flowd.backoff import Backoff
from flowd.db import is_outage
from flowd.errors import describe
from flowd.logs import get_logger

log = get_logger()

T = TypeVar("T")

_FIRST_PROBE_S = 0.2
_MAX_PROBE_PAUSE_S = 1.0


class Availability:
    """The database is there (`up` set) or away (an outage, probed until it ends)."""

    def __init__(self, probe: Callable[[], Awaitable[object]]) -> None:
        self._probe = probe
        self.up = asyncio.Event()
        self.up.set()
        self._lost_at = 0.0
        self._prober: asyncio.Task[None] | None = None
        self._given_up = False

    def mark_lost(self, exc: BaseException) -> None:
        """An outage met `exc`: close the gate (logged on the change only) and probe."""
        if self._given_up or not self.up.is_set():
            return
        self.up.clear()
        self._lost_at = time.monotonic()
        # Outside the caller's context: the outage is the process's, not one event's.
        process = contextvars.Context()
        process.run(log.warning, "eventlog.unavailable", error=describe(exc))
        self._prober = asyncio.create_task(
            self._probe_until_back(), name="availability", context=process
        )

    def mark_back(self) -> None:
        if self.up.is_set():
            return
        self.up.set()
        log.info("eventlog.available", unavailable_s=round(time.monotonic() - self._lost_at, 3))

    async def wait_available(self) -> None:
        await self.up.wait()

    def give_up(self) -> None:
        """Shutting down after the drain: from now on an outage is raised, not waited out."""
        self._given_up = True
        self.up.set()

    def failed(self, exc: BaseException, event: str, **fields: object) -> None:
        """A database call failed: an outage closes the gate, anything else is logged `event`."""
        if is_outage(exc):
            self.mark_lost(exc)
        else:
            log.warning(event, error=describe(exc), **fields)

    async def until_done(self, call: Callable[[], Awaitable[T]]) -> T:
        """`call()` once the database is there, again after each outage, until it returns."""
        while True:
            await self.wait_available()
            try:
                return await call()
            except Exception as exc:
                if not is_outage(exc) or self._given_up:
                    raise
                self.mark_lost(exc)

    async def _probe_until_back(self) -> None:
        pauses = Backoff(_FIRST_PROBE_S, _MAX_PROBE_PAUSE_S)
        while True:
            await asyncio.sleep(pauses.next())
            try:
                await self._probe()
            except Exception as exc:
                if is_outage(exc):
                    continue
            # The server answered (even an error is an answer).
            self.mark_back()
            return
