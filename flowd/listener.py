"""The daemon's one LISTEN connection: a notice on a channel calls what was registered for it.

The migrations' triggers `pg_notify` on `flowd_flows` when a flow, rule or action changes,
and on `flowd_events` when the event log gains a change. A notice is a wake-up only: what
it wakes also runs on a timer (the periodic re-read, the event log's poll), so a notice
lost while the connection was down costs time, never work. Each (re)connect calls every
callback once, for what was notified while nobody listened.

LISTEN needs a session of its own: through a transaction-mode pooler (Supabase's port
6543) a notice would go to whichever client holds the server connection, so there flowd
does not listen and the timers are the only path
(`Settings.through_transaction_pooler`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import asyncpg

from flowd.backoff import Backoff
from flowd.db import DATABASE_ERRORS
from flowd.errors import describe
from flowd.logs import get_logger
from flowd.waits import first_of

log = get_logger()

FLOWS_CHANNEL = "flowd_flows"  # a flow, rule or action changed
EVENTS_CHANNEL = "flowd_events"  # the event log gained a change
_CHECK_S = 10.0  # a connection cut off silently hears nothing: ask it this often
_CLOSE_TIMEOUT_S = 5.0

Heard = Callable[[], None]  # called on the event loop; must not block or raise


class Listener:
    """LISTEN on a direct (or session-mode) connection, reconnecting with backoff forever."""

    def __init__(self, database_url: str) -> None:
        self._url = database_url
        self._heard: dict[str, list[Heard]] = {}
        self.listening = False  # connected and listening right now
        self.tried = asyncio.Event()  # the first connection attempt has succeeded or failed

    def on(self, channel: str, heard: Heard) -> None:
        """Call `heard` on each notice on `channel` (and once on each connect)."""
        self._heard.setdefault(channel, []).append(heard)

    async def run(self) -> None:
        """Listen until cancelled; losing the connection is logged and repaired."""
        backoff = Backoff(initial=1.0, maximum=30.0)
        while True:
            try:
                connection = await asyncpg.connect(
                    self._url, server_settings={"application_name": "flowd"}
                )
            except DATABASE_ERRORS as exc:
                self.tried.set()
                pause = backoff.next()
                log.warning("listener.failed", error=describe(exc), retry_in_s=pause)
                await asyncio.sleep(pause)
                continue
            backoff.reset()
            try:
                await self._listen(connection)
            except DATABASE_ERRORS as exc:
                # Its own connection: losing it says nothing of the pool's.
                log.warning("listener.lost", error=describe(exc))
            finally:
                self.listening = False
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(connection.close(), _CLOSE_TIMEOUT_S)

    async def _listen(self, connection: asyncpg.Connection) -> None:
        closed = asyncio.Event()
        connection.add_termination_listener(lambda _: closed.set())
        for channel in self._heard:
            await connection.add_listener(channel, self._notified)
        self.listening = True
        self.tried.set()
        log.info("listener.listening", channels=sorted(self._heard))
        for channel in self._heard:
            self._call(channel)  # what was notified while nobody listened
        while True:
            # A connection the server closed says so; one cut off silently must be asked.
            await first_of(asyncio.sleep(_CHECK_S), closed.wait())
            await connection.fetchval("SELECT 1")

    def _notified(self, _connection: object, _pid: int, channel: str, _payload: object) -> None:
        self._call(channel)

    def _call(self, channel: str) -> None:
        for heard in self._heard.get(channel, ()):
            heard()
