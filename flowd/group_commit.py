"""Group commit: many small writes made at once go to the database as one statement."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from flowd.db import is_outage

Request = TypeVar("Request")
Result = TypeVar("Result")


class GroupWriter(Generic[Request, Result]):
    """Group commit: requests made while writes are under way go together in the next write.

    `write(requests)` returns one result per request, in order. Up to `writers` writes run
    at once (on as many connections), so the database works on one group while the next
    is gathered. Each runs in its own task: a caller that is cancelled does not cut it
    short (its request still lands).
    """

    def __init__(
        self,
        write: Callable[[Sequence[Request]], Awaitable[Sequence[Result]]],
        max_batch: int = 500,
        writers: int = 2,
    ) -> None:
        self._write = write
        self._max_batch = max_batch
        self._writers = writers
        self._waiting: list[tuple[Request, asyncio.Future[Result]]] = []
        self._running: set[asyncio.Task[None]] = set()

    async def submit(self, request: Request) -> Result:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._waiting.append((request, future))
        if len(self._running) < self._writers:
            writer = asyncio.create_task(self._drain())
            self._running.add(writer)
            writer.add_done_callback(self._running.discard)
        return await future

    async def _drain(self) -> None:
        try:
            while self._waiting:
                batch = self._waiting[: self._max_batch]
                del self._waiting[: self._max_batch]
                try:
                    await self._write_group(batch)
                except BaseException:  # cancelled: so are the callers still waiting
                    for _, future in batch:
                        if not future.done():
                            future.cancel()
                    raise
        finally:
            # Out of `_running` in the same step that found nothing waiting: the done
            # callback comes a loop turn later, and a request made in between would find
            # every writer still counted, start none, and never be written.
            self._running.discard(asyncio.current_task())

    async def _write_group(self, batch: list[tuple[Request, asyncio.Future[Result]]]) -> None:
        """Write `batch` and give each caller its result or the failure of its own request."""
        try:
            results = await self._write([request for request, _ in batch])
        except Exception as exc:
            if len(batch) > 1 and not is_outage(exc):
                # One request the database refuses fails the statement of the whole group:
                # each is written alone, so that it fails by itself. (The failed statement
                # wrote nothing, so none is written twice.)
                for one in batch:
                    await self._write_group([one])
                return
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)
