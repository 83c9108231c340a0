"""Executions as they finish, for `flowd executions tail`: LISTEN, and a poll besides.

A statement trigger on `flow_executions` (migration 20261204010000) notifies
'flowd_executions' when a statement may have finished executions; the follower then
looks for those finished since its last look. Through a transaction-mode pooler (port
6543) LISTEN hears nothing, so it only polls; with LISTEN, the poll is the backstop.

`finished_at` is the writer's transaction start, and a transaction that started before a
look may commit after it: each look reaches `_OVERLAP` back before the previous one, and
what it already yielded (by id and finish time) is not yielded again. A re-run that
finishes (`--failed`, a durable resume) is a new finish and is yielded again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from datetime import datetime, timedelta

from flowd.backoff import Backoff
from flowd.config import is_transaction_pooler
from flowd.db import DATABASE_ERRORS
from flowd.errors import describe
from flowd.history.queries import Database, Execution, finished_between
from flowd.listener import Listener
from flowd.logs import get_logger

CHANNEL = "flowd_executions"
_OVERLAP = timedelta(seconds=5)  # flowd's outcome writes are single statements of milliseconds
_POLL_S = 1.0  # without LISTEN
_BACKSTOP_S = 5.0  # with LISTEN: notices wake the follower, this catches the rest
_SETTLE_S = 0.25  # after a notice: a burst of statements is one look
_CONNECT_TIMEOUT_S = 10.0

log = get_logger()
_Mark = tuple[int, datetime]  # an execution's id and finish time: one finish


class ExecutionFollower:
    """Yields each execution of `flow_id` (None: of every flow) that finishes from now on.

    `listen_url`: the connection string to LISTEN on (None: poll only).
    """

    def __init__(
        self,
        database: Database,
        schema: str,
        flow_id: int | None = None,
        *,
        listen_url: str | None = None,
    ) -> None:
        self._database = database
        self._schema = schema
        self._flow_id = flow_id
        self._listener = _listener_for(listen_url)
        self._wake = asyncio.Event()
        self.started = asyncio.Event()  # set after the first look: what finishes now is seen

    @property
    def listening(self) -> bool:
        return self._listener is not None and self._listener.listening

    async def follow(self) -> AsyncGenerator[Execution, None]:
        if self._listener is None:
            async for execution in self._looks():
                yield execution
            return
        self._listener.on(CHANNEL, self._wake.set)
        listening = asyncio.create_task(self._listener.run(), name="executions-listener")
        try:
            # Says truthfully whether it listens; the poll goes on either way.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._listener.tried.wait(), _CONNECT_TIMEOUT_S)
            async for execution in self._looks():
                yield execution
        finally:
            listening.cancel()
            await asyncio.gather(listening, return_exceptions=True)

    async def _looks(self) -> AsyncIterator[Execution]:
        start: datetime | None = None
        floor: datetime | None = None
        seen: set[_Mark] = set()
        backoff = Backoff(initial=1.0, maximum=30.0)
        while True:
            self._wake.clear()
            try:
                looked_at: datetime = await self._database.fetchval("SELECT now()")
                start = start or looked_at
                found = await finished_between(
                    self._database, self._schema, start, floor or start, self._flow_id
                )
            except DATABASE_ERRORS as exc:
                pause = backoff.next()
                log.warning("executions.poll_failed", error=describe(exc), retry_in_s=pause)
                await asyncio.sleep(pause)
                continue
            backoff.reset()
            if floor is None:
                log.info("executions.following", flow_id=self._flow_id, listening=self.listening)
                self.started.set()
            for execution in found:
                assert execution.finished_at is not None
                mark = (execution.execution_id, execution.finished_at)
                if mark not in seen:
                    seen.add(mark)
                    yield execution
            floor = looked_at - _OVERLAP
            seen = {mark for mark in seen if mark[1] >= floor}  # the next look reaches no further
            await self._pause()

    async def _pause(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), _BACKSTOP_S if self.listening else _POLL_S)
        await asyncio.sleep(_SETTLE_S)


def _listener_for(url: str | None) -> Listener | None:
    """A listener on `url`; None to poll only (no URL, or the transaction pooler)."""
    if url is None:
        return None
    if is_transaction_pooler(url):
        log.info("executions.polling_only", reason="LISTEN needs a direct connection")
        return None
    return Listener(url)
