"""Scheduled flows against the real database: real ticks through the real engine.

Tick runners and the scheduler run in-process with an injected clock (no sleeping through
minutes); the real `flowd --once --schedule` and `flowd run`: tests/acceptance/.
Assertions are what an operator sees: `flow_executions`, `flow_ticks`, requests received.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from structlog.testing import capture_logs

from flowd.app import App, open_app
from flowd.commands.run import tick_runner
from flowd.config import Settings
from flowd.feeds.schedule import Scheduler
from flowd.flows import FlowSet
from flowd.secrets import Secrets
from tests.support.flows import add_flow, executions
from tests.support.http_target import HttpTarget, Reply

TICK = datetime(2026, 1, 10, 9, 0, tzinfo=UTC)
OVERDUE_IDS = [2, 3, 5, 8, 9]


class FakeClock:
    """A clock the test moves: sleepers wake once it reaches their instant."""

    def __init__(self, now: datetime) -> None:
        self._now = now
        self._moved = asyncio.Condition()

    def now(self) -> datetime:
        return self._now

    async def sleep_until(self, instant: datetime) -> None:
        async with self._moved:
            await self._moved.wait_for(lambda: self._now >= instant)

    async def set(self, now: datetime) -> None:
        async with self._moved:
            self._now = now
            self._moved.notify_all()


@contextlib.asynccontextmanager
async def flowd_app(database_url: str, **settings: Any) -> AsyncIterator[App]:
    """flowd's services in-process, on a pool of their own (one "replica")."""
    configured = Settings.model_validate(
        {"DATABASE_URL": database_url, "FLOWD_RETRY_BACKOFF_S": 0.01, **settings}
    )
    async with open_app(configured, Secrets({}), database=True) as app:
        yield app


async def overdue_tasks(db: asyncpg.Connection) -> None:
    """Ten tasks: 2, 3, 5, 8, 9 are overdue at TICK and not done; the rest are not yet
    due, done, or have no due date."""
    rows = []
    for task_id in range(1, 11):
        due = TICK - timedelta(hours=task_id) if task_id in (2, 3, 5, 8, 9, 4) else None
        if task_id in (6, 7):
            due = TICK + timedelta(hours=1)
        rows.append((task_id, f"task {task_id}", due, task_id == 4))
    await db.executemany(
        "INSERT INTO tasks (id, title, due_at, done) VALUES ($1, $2, $3, $4)", rows
    )


async def overdue_flow(db: asyncpg.Connection, target: HttpTarget, **fields: Any) -> int:
    flow_id = await add_flow(
        db,
        name="Notify owners of overdue tasks",
        trigger_event="SCHEDULE",
        rules=[("due_at", "<", "now"), ("done", "=", "false")],
        actions=[
            (
                "API_CALL",
                {
                    "url": target.url_for("/notify"),
                    "body": {"id": "{{ new.id }}", "tick": "{{ event.commit_timestamp }}"},
                },
            )
        ],
    )
    schedule = fields.get("schedule", "*/5 * * * *")
    await db.execute("UPDATE flows SET schedule = $2 WHERE flow_id = $1", flow_id, schedule)
    return flow_id


def notified(target: HttpTarget) -> Counter[tuple[str, str]]:
    return Counter((r.json()["id"], r.json()["tick"]) for r in target.requests_to("/notify"))


async def executions_per_row(db: asyncpg.Connection) -> Counter[tuple[int, str]]:
    return Counter(
        (e["event"]["record"]["id"], e["event"]["commit_timestamp"]) for e in await executions(db)
    )


async def test_a_tick_runs_the_flow_once_for_each_matching_row(
    database_url: str, db: asyncpg.Connection, http_target: HttpTarget
) -> None:
    """Rows are read in pages (three here); the overdue, not-done ones get one SUCCESS
    execution and one request each; the same tick again runs nothing; the next tick
    runs them again, under keys of its own."""
    await overdue_tasks(db)
    flow_id = await overdue_flow(db, http_target)
    async with flowd_app(database_url) as app:
        flows = await app.load_flows()
        scheduled = flows.schedules[flow_id]
        runner = tick_runner(app, page_size=3)
        first = await runner.run(scheduled, TICK, flows)
        assert await runner.run(scheduled, TICK, flows) is None  # finished: not again
        second = await runner.run(scheduled, TICK + timedelta(minutes=5), flows)
    assert first is not None
    assert second is not None
    assert (first.rows_done, first.rows_matched) == (10, 5)
    rows = await executions(db)
    assert {e["status"] for e in rows} == {"SUCCESS"}
    assert {e["event"]["type"] for e in rows} == {"SCHEDULE"}
    assert len({e["event_key"] for e in rows}) == 10
    ticks = ["2026-01-10T09:00:00.000Z", "2026-01-10T09:05:00.000Z"]
    assert notified(http_target) == Counter(
        {(str(task_id), tick): 1 for task_id in OVERDUE_IDS for tick in ticks}
    )
    tick_rows = await db.fetch(
        "SELECT scheduled_for, rows_done, rows_matched, finished_at FROM flow_ticks"
        " ORDER BY scheduled_for"
    )
    assert [(r["scheduled_for"], r["rows_done"], r["rows_matched"]) for r in tick_rows] == [
        (TICK, 10, 5),
        (TICK + timedelta(minutes=5), 10, 5),
    ]
    assert all(r["finished_at"] is not None for r in tick_rows)


async def test_now_minus_one_day_selects_rows_relative_to_the_tick(
    database_url: str, db: asyncpg.Connection, http_target: HttpTarget
) -> None:
    """`due_at > now-1d` with `due_at < now`: only rows due in the day before the tick's
    time (long past on the wall clock) match."""
    await db.executemany(
        "INSERT INTO tasks (id, title, due_at) VALUES ($1, $2, $3)",
        [
            (1, "two days ago", TICK - timedelta(days=2)),
            (2, "twelve hours ago", TICK - timedelta(hours=12)),
            (3, "an hour ago", TICK - timedelta(hours=1)),
            (4, "in an hour", TICK + timedelta(hours=1)),
        ],
    )
    flow_id = await add_flow(
        db,
        trigger_event="SCHEDULE",
        rules=[("due_at", ">", "now-1d"), ("due_at", "<", "now")],
        actions=[("API_CALL", {"url": http_target.url_for("/notify"), "body": {}})],
    )
    await db.execute("UPDATE flows SET schedule = '0 9 * * *' WHERE flow_id = $1", flow_id)
    async with flowd_app(database_url) as app:
        flows = await app.load_flows()
        await tick_runner(app).run(flows.schedules[flow_id], TICK, flows)
    assert sorted(e["event"]["record"]["id"] for e in await executions(db)) == [2, 3]


async def test_two_replicas_run_a_tick_once(
    database_url: str, db: asyncpg.Connection, http_target: HttpTarget
) -> None:
    """Two runners on pools of their own race for the same tick: one claims it, the
    other does nothing; each row has one execution and one request."""
    await overdue_tasks(db)
    flow_id = await overdue_flow(db, http_target)
    async with flowd_app(database_url) as one, flowd_app(database_url) as two:
        flows_one, flows_two = await one.load_flows(), await two.load_flows()
        results = await asyncio.gather(
            tick_runner(one, page_size=2).run(flows_one.schedules[flow_id], TICK, flows_one),
            tick_runner(two, page_size=2).run(flows_two.schedules[flow_id], TICK, flows_two),
        )
    assert sorted(result is None for result in results) == [False, True]
    assert set((await executions_per_row(db)).values()) == {1}
    assert len(await executions(db)) == len(OVERDUE_IDS)
    assert set(notified(http_target).values()) == {1}
    assert len(notified(http_target)) == len(OVERDUE_IDS)


class Crash(Exception):
    """The worker dies here."""


def crash_after(rows: int) -> Callable[[int], None]:
    def row_done(done: int) -> None:
        if done == rows:
            raise Crash

    return row_done


async def test_a_restart_mid_tick_finishes_it_without_repeating_rows(
    database_url: str, db: asyncpg.Connection, http_target: HttpTarget
) -> None:
    """A worker dies after the fourth row (pages of three: it recorded the position after
    row 3); another resumes the tick from there. Row 4's execution is found done, nothing
    runs twice, and the tick ends with every row read once."""
    await overdue_tasks(db)
    flow_id = await overdue_flow(db, http_target)
    async with flowd_app(database_url) as one:
        flows = await one.load_flows()
        dying = tick_runner(one, page_size=3, row_done=crash_after(4))
        with pytest.raises(Crash):
            await dying.run(flows.schedules[flow_id], TICK, flows)
    before = await db.fetchrow("SELECT last_key, rows_done, finished_at FROM flow_ticks")
    assert before is not None
    assert (before["last_key"], before["rows_done"], before["finished_at"]) == (["3"], 3, None)
    assert len(await executions(db)) == 2  # rows 2 and 3

    async with flowd_app(database_url) as two:
        flows = await two.load_flows()
        with capture_logs() as logs:
            result = await tick_runner(two, page_size=3).run(flows.schedules[flow_id], TICK, flows)
    assert result is not None
    assert (result.rows_done, result.rows_matched) == (10, 5)
    assert [run.status for run in result.runs] == ["SUCCESS"] * 3  # 5, 8, 9
    assert any(log["event"] == "schedule.tick_resumed" for log in logs)
    assert set((await executions_per_row(db)).values()) == {1}
    assert len(await executions(db)) == len(OVERDUE_IDS)
    assert set(notified(http_target).values()) == {1}
    assert len(notified(http_target)) == len(OVERDUE_IDS)
    tick = await db.fetchrow("SELECT claims, finished_at, rows_done FROM flow_ticks")
    assert tick is not None
    assert (tick["claims"], tick["rows_done"]) == (2, 10)
    assert tick["finished_at"] is not None


async def test_a_tick_stops_at_the_row_limit(
    database_url: str, db: asyncpg.Connection, http_target: HttpTarget
) -> None:
    """FLOWD_SCHEDULE_MAX_ROWS=3: three rows run, the tick ends and says why."""
    await overdue_tasks(db)
    flow_id = await overdue_flow(db, http_target)
    async with flowd_app(database_url, FLOWD_SCHEDULE_MAX_ROWS=3) as app:
        flows = await app.load_flows()
        with capture_logs() as logs:
            result = await tick_runner(app).run(flows.schedules[flow_id], TICK, flows)
    assert result is not None
    assert result.rows_matched == 3
    assert [log["max_rows"] for log in logs if log["event"] == "schedule.max_rows"] == [3]
    assert len(await executions(db)) == 3
    assert await db.fetchval("SELECT stopped FROM flow_ticks") == (
        "more than FLOWD_SCHEDULE_MAX_ROWS (3)"
    )


async def _ticks(db: asyncpg.Connection) -> list[datetime]:
    return [
        row["scheduled_for"]
        for row in await db.fetch(
            "SELECT scheduled_for FROM flow_ticks WHERE finished_at IS NOT NULL"
            " ORDER BY scheduled_for"
        )
    ]


async def _until(check: Callable[[], Any], timeout_s: float = 20) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "not within the time allowed"
        await asyncio.sleep(0.05)


def _scheduler(app: App, flows: FlowSet, clock: FakeClock) -> Scheduler:
    return Scheduler(tick_runner(app), lambda: flows, clock=clock)


async def test_the_scheduler_fires_at_the_right_instants(
    database_url: str, db: asyncpg.Connection, http_target: HttpTarget
) -> None:
    """`*/5 * * * *` seen first at 09:02: nothing until 09:05, a tick at 09:05, nothing
    at 09:09:59, a tick at 09:10; each matching row once per tick."""
    await overdue_tasks(db)
    flow_id = await overdue_flow(db, http_target)
    start = TICK + timedelta(minutes=2)
    clock = FakeClock(start)
    async with flowd_app(database_url) as app:
        flows = await app.load_flows()
        scheduler = _scheduler(app, flows, clock)
        running = asyncio.create_task(scheduler.run())
        try:
            await asyncio.sleep(0.2)
            await clock.set(TICK + timedelta(minutes=4, seconds=59))
            await asyncio.sleep(0.2)
            assert await _ticks(db) == []
            await clock.set(TICK + timedelta(minutes=5))
            await _until(lambda: _equal(_ticks(db), [TICK + timedelta(minutes=5)]))
            await clock.set(TICK + timedelta(minutes=9, seconds=59))
            await asyncio.sleep(0.2)
            await clock.set(TICK + timedelta(minutes=10))
            await _until(lambda: _length(_ticks(db), 2))
        finally:
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running
    assert await _ticks(db) == [TICK + timedelta(minutes=5), TICK + timedelta(minutes=10)]
    assert set((await executions_per_row(db)).values()) == {1}
    assert len(await executions(db)) == 2 * len(OVERDUE_IDS)
    assert flow_id in flows.schedules


async def _equal(value: Any, expected: Any) -> bool:
    return bool(await value == expected)


async def _length(value: Any, expected: int) -> bool:
    return len(await value) == expected


async def test_missed_ticks_collapse_to_one(
    database_url: str, db: asyncpg.Connection, http_target: HttpTarget
) -> None:
    """The last tick recorded is 09:00; flowd starts again at 09:31. Only 09:30 runs,
    and the log says five ticks were skipped."""
    await overdue_tasks(db)
    flow_id = await overdue_flow(db, http_target)
    await db.execute(
        "INSERT INTO flow_ticks (flow_id, scheduled_for, worker, lease_until, finished_at)"
        " VALUES ($1, $2, 'gone', $2, $2)",
        flow_id,
        TICK,
    )
    async with flowd_app(database_url) as app:
        flows = await app.load_flows()
        scheduler = _scheduler(app, flows, FakeClock(TICK + timedelta(minutes=31)))
        with capture_logs() as logs:
            await scheduler.start_due(TICK + timedelta(minutes=31))
            await asyncio.gather(*scheduler.running.values())
            await scheduler.start_due(TICK + timedelta(minutes=34))  # nothing new is due
            assert all(task.done() for task in scheduler.running.values())
    [missed] = [log for log in logs if log["event"] == "schedule.missed"]
    assert (missed["skipped"], missed["running"]) == (5, TICK + timedelta(minutes=30))
    assert await _ticks(db) == [TICK, TICK + timedelta(minutes=30)]
    assert len(await executions(db)) == len(OVERDUE_IDS)


async def test_a_tick_still_running_when_the_next_is_due_is_not_started_twice(
    database_url: str, db: asyncpg.Connection
) -> None:
    """A slow receiver keeps the 09:05 tick running past 09:10: 09:10 does not start beside
    it; once 09:05 ends, 09:10 runs, once."""
    async with HttpTarget(default=Reply(delay_s=0.2)) as slow:
        await overdue_tasks(db)
        flow_id = await overdue_flow(db, slow)
        async with flowd_app(database_url) as app:
            flows = await app.load_flows()
            scheduler = _scheduler(app, flows, FakeClock(TICK))
            await scheduler.start_due(TICK + timedelta(minutes=4))  # first sight: the baseline
            await scheduler.start_due(TICK + timedelta(minutes=5))
            first = scheduler.running[flow_id]
            await scheduler.start_due(TICK + timedelta(minutes=10))
            assert scheduler.running[flow_id] is first
            assert not first.done()
            await first
            await scheduler.start_due(TICK + timedelta(minutes=10, seconds=30))
            await scheduler.running[flow_id]
    assert await _ticks(db) == [TICK + timedelta(minutes=5), TICK + timedelta(minutes=10)]
    assert len(await executions(db)) == 2 * len(OVERDUE_IDS)
