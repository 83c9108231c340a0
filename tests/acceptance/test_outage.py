"""Database outages end to end: a durable `flowd run` across a stop and a restart of
Postgres, on a cluster of this module's own (other tests keep theirs)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest

from flowd.local_postgres import TemporaryCluster
from tests.conftest import Databases
from tests.support.flowd_cli import RunningFlowd
from tests.support.flows import STATUS_AUDIT_SQL, add_flow
from tests.support.http_target import HttpTarget, Reply


@pytest.fixture(scope="module")
async def outage_databases(own_cluster: TemporaryCluster) -> Databases:
    databases = Databases(own_cluster.dsn)
    await databases.build_template()
    return databases


@pytest.fixture
async def outage_db_url(outage_databases: Databases) -> AsyncIterator[str]:
    """A migrated database (flowd's tables, `tasks`) on the module's server."""
    name = await outage_databases.clone()
    yield outage_databases.url(name)
    await outage_databases.drop(name)


# ------------------------------------------------------------- a durable burst, interrupted

CONCURRENCY = 8
TASKS = 400


async def _prepare_burst(url: str, target: HttpTarget) -> None:
    """A flow that calls the target, then writes the row (`now` differs per run)."""
    db = await asyncpg.connect(url)
    try:
        await db.execute(STATUS_AUDIT_SQL)
        await add_flow(
            db,
            rules=[("priority", "=", "high")],
            actions=[
                ("API_CALL", {"url": target.url_for("/hook"), "body": {"id": "{{ new.id }}"}}),
                ("DB_UPDATE", {"table": "tasks", "field": "status", "value": "seen {{ now }}"}),
            ],
        )
    finally:
        await db.close()


async def _insert_burst(url: str) -> None:
    db = await asyncpg.connect(url)
    try:
        await db.executemany(
            "INSERT INTO tasks (id, title, priority, status) VALUES ($1, $2, 'high', 'open')",
            [(task_id, f"task {task_id}") for task_id in range(1, TASKS + 1)],
        )
    finally:
        await db.close()


async def _finished(url: str) -> bool:
    try:
        db = await asyncpg.connect(url)
    except (OSError, asyncpg.PostgresError):
        return False
    try:
        done: bool = await db.fetchval(
            "SELECT (SELECT count(*) FROM flow_executions WHERE status <> 'RUNNING') = $1"
            " AND NOT EXISTS (SELECT 1 FROM flow_events WHERE handled_at IS NULL)",
            TASKS,
        )
        return done
    finally:
        await db.close()


async def _until(check: Callable[[], Awaitable[bool]], what: str, flowd: RunningFlowd) -> None:
    """A hang guard: `check()` within a minute."""
    deadline = time.monotonic() + 60
    while not await check():
        assert time.monotonic() < deadline, f"not within 60 s: {what}\n{flowd.tail()}"
        await asyncio.sleep(0.2)


async def _burst_across(
    url: str, target: HttpTarget, outage: Callable[[], None]
) -> tuple[RunningFlowd, float, float]:
    """Run the burst with `outage` (blocking) once a tenth of it is done; return flowd and
    the monotonic times the outage was complete and over."""
    await _prepare_burst(url, target)
    flowd = await RunningFlowd(
        env={
            "DATABASE_URL": url,
            "FLOWD_DELIVERY": "durable",
            "FLOWD_POLL_INTERVAL_S": "0.2",
            "FLOWD_CONCURRENCY": str(CONCURRENCY),
        }
    ).start()
    await flowd.wait_for_log("eventlog.started")
    await _insert_burst(url)
    await target.wait_for_requests("/hook", TASKS // 10, timeout_s=30)
    down_at = time.monotonic()
    await asyncio.to_thread(outage)
    back_at = time.monotonic()
    await _until(lambda: _finished(url), "every execution finished", flowd)
    assert await flowd.stop() == 0, flowd.tail()
    return flowd, down_at, back_at


async def _assert_each_ran_once(url: str, target: HttpTarget, flowd: RunningFlowd) -> None:
    db = await asyncpg.connect(url)
    try:
        statuses = Counter(
            row["status"] for row in await db.fetch("SELECT status FROM flow_executions")
        )
        writes = Counter(
            row["task_id"] for row in await db.fetch("SELECT task_id FROM status_writes")
        )
    finally:
        await db.close()
    assert statuses == {"SUCCESS": TASKS}
    assert set(writes) == set(range(1, TASKS + 1))
    assert max(writes.values()) == 1, "a DB_UPDATE applied twice"
    keys = Counter(request.headers["idempotency-key"] for request in target.requests_to("/hook"))
    assert len(keys) == TASKS
    assert max(keys.values()) == 1, "a call sent again"
    assert flowd.logged("eventlog.unavailable")
    assert flowd.logged("eventlog.available")
    assert not flowd.logged("event.crashed")
    assert not [line for line in flowd.raw_output if "Traceback" in line]


@pytest.fixture
async def slow_target() -> AsyncIterator[HttpTarget]:
    """Answers after a moment, so calls are in flight when the database goes."""
    async with HttpTarget(default=Reply(delay_s=0.1)) as target:
        yield target


async def test_postgres_stopped_for_3_s_mid_burst_loses_and_repeats_nothing(
    own_cluster: TemporaryCluster, outage_db_url: str, slow_target: HttpTarget
) -> None:
    """Every execution SUCCESS, each call and update once, and no call starts while the
    database is down."""

    def stop_for_3_s() -> None:
        own_cluster.pause()
        stopped[0] = time.monotonic()
        time.sleep(3)
        stopped[1] = time.monotonic()
        own_cluster.resume()

    stopped = [0.0, 0.0]
    flowd, _, _ = await _burst_across(outage_db_url, slow_target, stop_for_3_s)
    await _assert_each_ran_once(outage_db_url, slow_target, flowd)
    arrivals = [request.received_at for request in slow_target.requests_to("/hook")]
    assert not [t for t in arrivals if stopped[0] < t < stopped[1]], "a call while down"
    assert [t for t in arrivals if t > stopped[1]], "the burst ended before the outage"


async def test_a_postgres_restart_mid_burst_loses_and_repeats_nothing(
    own_cluster: TemporaryCluster, outage_db_url: str, slow_target: HttpTarget
) -> None:
    flowd, _, back_at = await _burst_across(outage_db_url, slow_target, own_cluster.restart)
    await _assert_each_ran_once(outage_db_url, slow_target, flowd)
    arrivals = [request.received_at for request in slow_target.requests_to("/hook")]
    assert [t for t in arrivals if t > back_at], "the burst ended before the restart"
