"""The Realtime supervisor in-process, against the stand-in and the real `realtime` client.

These reproduce the silent failures of PROTOCOL.md §9 that need a hand inside the
process (a raising callback, a dead receive loop, a server gone silent) and check that
changes committed after the repair still arrive.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import asyncpg
import pytest
from structlog.testing import capture_logs

from flowd.feeds.realtime_client import RealtimeSource, Timing
from tests.support.realtime_server import RealtimeStandIn

FAST = Timing(ready_timeout=3, heartbeat=0.3, stall=1.5, backoff=0.05, max_backoff=0.2)
TASKS = ("public", "tasks", "INSERT")


class Supervised:
    """A RealtimeSource running in the background, collecting the records it receives."""

    def __init__(self, url: str, sink: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.received: list[dict[str, Any]] = []
        self.stopping = asyncio.Event()

        async def room() -> None:
            return None

        self.source = RealtimeSource(
            url=url, key="service-key", sink=sink or self.received.append, room=room, timing=FAST
        )
        self.source.set_bindings({TASKS})
        self.task: asyncio.Task[None] | None = None

    async def wait_for(self, predicate: Callable[[], bool], timeout_s: float = 10) -> None:
        async def poll() -> None:
            while not predicate():  # noqa: ASYNC110 - the state lives in other objects
                await asyncio.sleep(0.02)

        await asyncio.wait_for(poll(), timeout_s)


@pytest.fixture
async def standin(database_url: str) -> AsyncIterator[RealtimeStandIn]:
    async with RealtimeStandIn(database_url, poll_interval_s=0.02) as server:
        yield server


@contextlib.asynccontextmanager
async def supervised(
    standin: RealtimeStandIn, sink: Callable[[dict[str, Any]], None] | None = None
) -> AsyncIterator[Supervised]:
    running = Supervised(standin.url, sink)
    running.task = asyncio.create_task(running.source.run(running.stopping))
    try:
        await asyncio.wait_for(running.source.live.wait(), 10)
        yield running
    finally:
        running.stopping.set()
        await asyncio.wait_for(running.task, 10)


async def insert(db: asyncpg.Connection, *ids: int) -> None:
    for task_id in ids:
        await db.execute("INSERT INTO tasks (id, title) VALUES ($1, 'x')", task_id)


async def test_a_raising_callback_does_not_kill_the_receive_loop(
    db: asyncpg.Connection, standin: RealtimeStandIn
) -> None:
    """§9 hazard 2: a callback that raises is logged; the next changes still arrive."""
    received: list[int] = []

    def sink(data: dict[str, Any]) -> None:
        if data["record"]["id"] == 1:
            raise RuntimeError("bug in a callback")
        received.append(data["record"]["id"])

    with capture_logs() as logs:
        async with supervised(standin, sink) as running:
            await insert(db, 1, 2, 3)
            await running.wait_for(lambda: received == [2, 3])
    assert [log["event"] for log in logs].count("realtime.callback_failed") == 1
    assert not [log for log in logs if log["event"] == "realtime.lost"]


async def test_a_dead_receive_loop_is_noticed_and_rebuilt(
    db: asyncpg.Connection, standin: RealtimeStandIn
) -> None:
    """A receive loop that ended while the socket looks alive is found; a new session delivers."""
    with capture_logs() as logs:
        async with supervised(standin) as running:
            client = running.source.client
            assert client is not None
            assert client._listen_task is not None
            client._listen_task.cancel()
            await running.wait_for(lambda: _count(logs, "realtime.live") == 2)
            await insert(db, 7)
            await running.wait_for(lambda: [r["record"]["id"] for r in running.received] == [7])
    [lost] = [log for log in logs if log["event"] == "realtime.lost"]
    assert lost["reason"] == "receive loop ended"


async def test_a_silent_server_is_detected_by_unanswered_heartbeats(
    db: asyncpg.Connection, standin: RealtimeStandIn
) -> None:
    """§9 hazard 5: no frame (not even a heartbeat reply) for `stall` s → rebuilt, delivers."""
    with capture_logs() as logs:
        async with supervised(standin) as running:
            standin.mute = True
            await running.wait_for(lambda: _count(logs, "realtime.lost") == 1)
            standin.mute = False
            await running.wait_for(lambda: _count(logs, "realtime.live") == 2)
            await insert(db, 9)
            await running.wait_for(lambda: [r["record"]["id"] for r in running.received] == [9])
    [lost] = [log for log in logs if log["event"] == "realtime.lost"]
    assert lost["reason"].startswith("no frame for")


async def test_bindings_change_make_before_break(
    db: asyncpg.Connection, standin: RealtimeStandIn
) -> None:
    """A new binding set is subscribed before the old session closes: no gap for `tasks`."""
    await db.execute("ALTER PUBLICATION supabase_realtime ADD TABLE projects")
    async with supervised(standin) as running:
        running.source.set_bindings({TASKS, ("public", "projects", "*")})
        await standin.wait_until_live("public", "projects")
        await running.wait_for(lambda: running.source.live.is_set())
        await insert(db, 11)
        await db.execute("INSERT INTO projects (id, name) VALUES (1, 'p')")
        await running.wait_for(
            lambda: {r["table"] for r in running.received} == {"tasks", "projects"}
        )


def _count(logs: Sequence[Mapping[str, Any]], event: str) -> int:
    return sum(1 for log in logs if log["event"] == event)
