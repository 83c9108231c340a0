"""Pipeline: work on events `concurrency` at a time, in arrival order per row, in bounded memory.

Events of one row (same key) form a lane and run one after another; different rows
run side by side. At most `capacity` events are held (queued, parked in a lane, or
running); `room()` waits while the pipeline is full, which is how backpressure
reaches the Realtime socket instead of memory growing without bound.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from flowd.logs import get_logger

log = get_logger()

T = TypeVar("T")


class Pipeline(Generic[T]):
    def __init__(
        self,
        work: Callable[[T], Awaitable[object]],
        key: Callable[[T], Hashable],
        *,
        concurrency: int,
        capacity: int,
    ) -> None:
        self._work = work
        self._key = key
        self._capacity = capacity
        self._incoming: asyncio.Queue[T] = asyncio.Queue()
        self._slots = asyncio.Semaphore(concurrency)
        self._lanes: dict[Hashable, deque[T]] = {}
        self._running: dict[asyncio.Task[None], T] = {}
        self._held = 0
        self._changed = asyncio.Event()

    @property
    def held(self) -> int:
        """Events accepted and not yet finished."""
        return self._held

    def put(self, item: T) -> None:
        """Accept an event (never blocks; call `room()` first to respect the capacity)."""
        self._held += 1
        self._incoming.put_nowait(item)

    async def room(self) -> None:
        """Wait until the pipeline holds fewer than `capacity` events."""
        while self._held >= self._capacity:
            self._changed.clear()
            await self._changed.wait()

    async def idle(self) -> None:
        """Wait until every accepted event has finished."""
        while self._held:
            self._changed.clear()
            await self._changed.wait()

    async def run(self) -> None:
        """Dispatch events to lanes until cancelled."""
        while True:
            item = await self._incoming.get()
            key = self._key(item)
            lane = self._lanes.get(key)
            if lane is not None:
                lane.append(item)
                continue
            # In the lane before waiting for a slot, so `stop` finds it if that wait is cut.
            self._lanes[key] = deque([item])
            await self._slots.acquire()
            task = asyncio.create_task(self._run_lane(key))
            task.add_done_callback(self._running.pop)

    async def _run_lane(self, key: Hashable) -> None:
        task = asyncio.current_task()
        assert task is not None
        lane = self._lanes[key]
        try:
            while lane:
                item = self._running[task] = lane.popleft()
                try:
                    await self._work(item)
                except Exception:  # one event's failure must not stop its row's lane
                    log.exception("event.crashed")
                self._finished()
            del self._lanes[key]
        finally:
            self._slots.release()

    def _finished(self) -> None:
        self._held -= 1
        self._changed.set()

    async def stop(self) -> list[T]:
        """Cancel what still runs; return the events cut short, then those never started."""
        running = dict(self._running)
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        unfinished = list(running.values())
        unfinished += [item for lane in self._lanes.values() for item in lane]
        while not self._incoming.empty():
            unfinished.append(self._incoming.get_nowait())
        self._lanes.clear()
        self._held = 0
        return unfinished
