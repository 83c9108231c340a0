"""Durable delivery end to end: real rows → capture trigger → event log → the real daemon.

Each test runs the real `flowd` command with FLOWD_DELIVERY=durable against the test
database and a real HTTP target, and kills, stops, restarts and duplicates it the way
production does (SIGKILL, SIGTERM, a PostgreSQL restart, two replicas). Assertions are
what an operator sees: `flow_executions`, rows written, requests received, log lines.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest

from flowd.local_postgres import TemporaryCluster
from flowd.migrate import migrate
from tests.support.flowd_cli import RunningFlowd, run_flowd
from tests.support.flows import STATUS_AUDIT_SQL, add_flow, executions
from tests.support.http_target import HttpTarget, Reply

DURABLE = {
    "FLOWD_DELIVERY": "durable",
    "FLOWD_POLL_INTERVAL_S": "0.2",
    "FLOWD_LEASE_S": "3",
    "FLOWD_RELOAD_INTERVAL_S": "60",
}
CONCURRENCY = 16
QUEUE_SIZE = 1000  # FLOWD_QUEUE_SIZE's default


@pytest.fixture
async def slow_target() -> AsyncIterator[HttpTarget]:
    """A receiver that takes a moment per request, so requests are in flight when flowd dies."""
    async with HttpTarget(default=Reply(delay_s=0.01)) as target:
        yield target


async def start_durable(database_url: str, **env: str) -> RunningFlowd:
    running = await RunningFlowd(
        env={"DATABASE_URL": database_url, **DURABLE, "FLOWD_CONCURRENCY": str(CONCURRENCY), **env}
    ).start()
    await running.wait_for_log("eventlog.started")
    return running


async def insert_tasks(db: asyncpg.Connection, ids: range, per_transaction: int = 100) -> None:
    """Commit one INSERT per id, `per_transaction` to a transaction."""
    for start in range(ids.start, ids.stop, per_transaction):
        chunk = range(start, min(start + per_transaction, ids.stop))
        async with db.transaction():
            await db.executemany(
                "INSERT INTO tasks (id, title, priority, status) VALUES ($1, $2, 'high', 'open')",
                [(task_id, f"task {task_id}") for task_id in chunk],
            )


async def eventually(
    check: Callable[[], Awaitable[bool]],
    what: str,
    timeout_s: float = 60,
    *watched: RunningFlowd,
) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            logs = "\n".join(
                json.dumps(line)
                for flowd in watched
                for line in flowd.logs
                if line.get("level") != "info"
                and line["event"] != "event.crashed"  # the stop after the timeout
            )
            raise AssertionError(f"not within {timeout_s} s: {what}\n{logs}")
        await asyncio.sleep(0.1)


async def count(db: asyncpg.Connection, sql: str, *args: object) -> int:
    value: int = await db.fetchval(sql, *args)
    return value


async def successes(db: asyncpg.Connection) -> int:
    return await count(db, "SELECT count(*) FROM flow_executions WHERE status = 'SUCCESS'")


async def pending_events(db: asyncpg.Connection) -> int:
    return await count(db, "SELECT count(*) FROM flow_events WHERE handled_at IS NULL")


async def no_pending(db: asyncpg.Connection) -> bool:
    return await pending_events(db) == 0


async def notify_flow(db: asyncpg.Connection, target: HttpTarget, *, event: str = "INSERT") -> int:
    return await add_flow(
        db,
        trigger_event=event,
        rules=[("priority", "=", "high")],
        actions=[("API_CALL", {"url": target.url_for("/hook"), "body": {"id": "{{ new.id }}"}})],
    )


async def test_a_committed_change_runs_its_flow_with_an_idempotency_key(
    database_url: str, db: asyncpg.Connection, http_target: HttpTarget
) -> None:
    """No Realtime at all: the trigger logs the change, flowd claims and runs it."""
    flow_id = await notify_flow(db, http_target)
    flowd = await start_durable(database_url)
    try:
        await insert_tasks(db, range(1, 2))
        [request] = await http_target.wait_for_requests("/hook", 1)
        await eventually(lambda: no_pending(db), "every event handled")
    finally:
        assert await flowd.stop() == 0
    assert request.json() == {"id": "1"}
    [execution] = await executions(db)
    assert (execution["flow_id"], execution["status"]) == (flow_id, "SUCCESS")
    assert execution["event"]["record"]["title"] == "task 1"
    assert execution["event"]["commit_timestamp"].endswith("Z")
    key = request.headers["idempotency-key"]
    assert len(key) == 32
    assert flowd.logged("capture.synced")[0]["attached"] == ["public.tasks"]
    handled = await db.fetchrow("SELECT handled_at, worker FROM flow_events")
    assert handled is not None
    assert handled["handled_at"] is not None


async def _burst_across_a_kill(
    database_url: str, db: asyncpg.Connection, start: Callable[[], Awaitable[RunningFlowd]]
) -> tuple[RunningFlowd, range]:
    """Commit 1,500 changes, SIGKILL flowd mid-way, commit 500 more while it is dead, restart."""
    flowd = await start()
    await insert_tasks(db, range(1, 1501))
    await eventually(lambda: _at_least(successes(db), 300), "300 executions before the kill")
    flowd.signal(signal.SIGKILL)
    assert await flowd.wait() == -signal.SIGKILL
    down = range(1501, 2001)
    await insert_tasks(db, down)  # committed while no flowd runs
    return await start(), down


async def _at_least(value: Awaitable[int], minimum: int) -> bool:
    return await value >= minimum


async def _equals(value: Awaitable[int], expected: int) -> bool:
    return await value == expected


async def test_an_event_leased_here_whose_claim_reply_was_lost_runs_at_once(
    database_url: str, db: asyncpg.Connection, http_target: HttpTarget
) -> None:
    """A claim that committed while its reply was lost (an outage) leaves an event leased to
    this worker that it does not know of: after the failed claim, the next claim takes it at
    once, not after the lease (an hour here)."""
    await notify_flow(db, http_target)
    flowd = await start_durable(database_url, FLOWD_LEASE_S="3600")
    try:
        [started] = flowd.logged("eventlog.started")
        async with db.transaction():  # committed already leased to flowd: it never saw it
            await db.execute(
                "INSERT INTO tasks (id, title, priority, status) VALUES (1, 'lost', 'high', 'open')"
            )
            await db.execute(
                "UPDATE flow_events SET worker = $1, lease_until = now() + interval '1 hour'",
                started["worker"],
            )
        await asyncio.sleep(1.0)  # claims that do not look for it: it stays leased
        assert http_target.requests_to("/hook") == []
        await db.execute("ALTER TABLE flow_events RENAME TO flow_events_away")  # a claim fails
        await flowd.wait_for_log("eventlog.claim_failed")
        await db.execute("ALTER TABLE flow_events_away RENAME TO flow_events")
        await http_target.wait_for_requests("/hook", 1, timeout_s=20)
        await eventually(lambda: no_pending(db), "every event handled")
    finally:
        assert await flowd.stop() == 0
    assert [row["status"] for row in await executions(db)] == ["SUCCESS"]


async def test_kill_9_mid_burst_loses_nothing_and_applies_each_update_once(
    database_url: str, db: asyncpg.Connection, slow_target: HttpTarget
) -> None:
    """SIGKILL in a burst of 2,000 changes, then a restart: every change has exactly its
    execution; each DB_UPDATE took effect once; HTTP repeats only what was in flight, with
    the same Idempotency-Key."""
    await db.execute(STATUS_AUDIT_SQL)
    flow_id = await add_flow(
        db,
        rules=[("priority", "=", "high")],
        actions=[
            ("API_CALL", {"url": slow_target.url_for("/hook"), "body": {"id": "{{ new.id }}"}}),
            # `now` differs per run: a second application would write a second status.
            ("DB_UPDATE", {"table": "tasks", "field": "status", "value": "seen {{ now }}"}),
        ],
    )
    flowd, _ = await _burst_across_a_kill(database_url, db, lambda: start_durable(database_url))
    try:
        await eventually(lambda: _at_least(successes(db), 2000), "2,000 executions", 120, flowd)
        await eventually(lambda: no_pending(db), "every event handled", 60, flowd)
    finally:
        assert await flowd.stop() == 0

    rows = await db.fetch(
        "SELECT event_key, status, runs FROM flow_executions WHERE flow_id = $1", flow_id
    )
    assert len(rows) == 2000
    assert {row["status"] for row in rows} == {"SUCCESS"}
    executed_ids = {
        json.loads(r)["record"]["id"]
        for r in await db.fetchval(
            "SELECT array_agg(event::text) FROM flow_executions WHERE flow_id = $1", flow_id
        )
    }
    assert executed_ids == set(range(1, 2001))
    writes = Counter(row["task_id"] for row in await db.fetch("SELECT task_id FROM status_writes"))
    assert set(writes) == set(range(1, 2001))
    assert max(writes.values()) == 1, [task for task, n in writes.items() if n > 1]
    assert await count(db, "SELECT count(*) FROM tasks WHERE status LIKE 'seen %'") == 2000

    requests = slow_target.requests_to("/hook")
    by_key: dict[str, list[bytes]] = defaultdict(list)
    for request in requests:
        by_key[request.headers["idempotency-key"]].append(request.body)
    assert len(by_key) == 2000
    assert len(requests) - 2000 <= CONCURRENCY, "repeats beyond what was in flight"
    assert all(len(set(bodies)) == 1 for bodies in by_key.values())
    # Claimed before the kill, unfinished: resumed (`runs` 2), at most the events held; only
    # those whose actions had begun (at most CONCURRENCY) repeated a request (above).
    resumed = [row for row in rows if row["runs"] > 1]
    assert 0 < len(resumed) <= QUEUE_SIZE


async def test_the_same_kill_in_realtime_mode_loses_changes(
    database_url: str, db: asyncpg.Connection, http_target: HttpTarget
) -> None:
    """What durable mode prevents: changes committed while flowd is dead never arrive."""
    from tests.acceptance.test_daemon import start_flowd
    from tests.support.realtime_server import RealtimeStandIn

    await notify_flow(db, http_target)
    async with RealtimeStandIn(database_url, poll_interval_s=0.02) as realtime:
        flowd, down = await _burst_across_a_kill(
            database_url, db, lambda: start_flowd(database_url, realtime)
        )
        try:
            await insert_tasks(db, range(2001, 2002))  # a change after the restart arrives
            await http_target.wait_for_requests("/hook", 1, timeout_s=30)
            after_restart = (
                "SELECT count(*) FROM flow_executions WHERE event->'record'->>'id' = '2001'"
            )
            await eventually(
                lambda: _at_least(count(db, after_restart), 1), "the change after the restart"
            )
        finally:
            assert await flowd.stop() == 0
    executed = {
        int(row["id"])
        for row in await db.fetch("SELECT event->'record'->>'id' AS id FROM flow_executions")
    }
    lost_while_down = set(down) - executed
    assert lost_while_down == set(down)
    assert len(executed) < 2001


async def test_changes_committed_while_flowd_is_stopped_are_handled_on_start(
    database_url: str, db: asyncpg.Connection, http_target: HttpTarget
) -> None:
    await notify_flow(db, http_target)
    flowd = await start_durable(database_url)
    assert await flowd.stop() == 0  # the trigger stays attached
    await insert_tasks(db, range(1, 501))
    flowd = await start_durable(database_url)
    try:
        await eventually(lambda: _at_least(successes(db), 500), "500 executions")
        await eventually(lambda: no_pending(db), "every event handled")
    finally:
        assert await flowd.stop() == 0
    assert len(http_target.requests_to("/hook")) == 500
    backlog = flowd.logged("eventlog.backlog")[0]
    assert backlog["pending"] == 500
    assert backlog["oldest_pending_age_s"] > 0


async def test_two_replicas_share_the_log_and_run_every_event_once(
    database_url: str, db: asyncpg.Connection, http_target: HttpTarget
) -> None:
    await notify_flow(db, http_target)
    replicas = [await start_durable(database_url), await start_durable(database_url)]
    try:
        await insert_tasks(db, range(1, 1001), per_transaction=20)
        await eventually(lambda: _at_least(successes(db), 1000), "1,000 executions")
        await eventually(lambda: no_pending(db), "every event handled")
    finally:
        for replica in replicas:
            assert await replica.stop() == 0
    assert await count(db, "SELECT count(*) FROM flow_executions") == 1000
    requests = http_target.requests_to("/hook")
    assert len(requests) == 1000
    assert len({r.headers["idempotency-key"] for r in requests}) == 1000
    workers = await db.fetch("SELECT worker, count(*) FROM flow_events GROUP BY worker")
    assert len(workers) == 2, "both replicas should have handled events"


async def test_one_rows_changes_run_in_commit_order_across_replicas(
    database_url: str, db: asyncpg.Connection, http_target: HttpTarget
) -> None:
    """A counter updated 200 times, two replicas of 16 workers: the webhook sees 1..200."""
    await add_flow(
        db,
        trigger_event="UPDATE",
        actions=[
            ("API_CALL", {"url": http_target.url_for("/count"), "body": "{{ new.estimate }}"})
        ],
    )
    await db.execute("INSERT INTO tasks (id, title, estimate) VALUES (1, 'counter', 0)")
    replicas = [await start_durable(database_url), await start_durable(database_url)]
    try:
        for _ in range(200):
            await db.execute("UPDATE tasks SET estimate = estimate + 1 WHERE id = 1")
        await http_target.wait_for_requests("/count", 200, timeout_s=60)
    finally:
        for replica in replicas:
            assert await replica.stop() == 0
    seen = [int(request.text()) for request in http_target.requests_to("/count")]
    assert seen == list(range(1, 201))


async def test_a_postgres_restart_mid_run_loses_nothing(
    tmp_path: Path, http_target: HttpTarget
) -> None:
    cluster = TemporaryCluster(tmp_path)
    await asyncio.to_thread(cluster.start)
    try:
        url = cluster.dsn
        db = await asyncpg.connect(url)
        try:
            await migrate(db, "public")
            schema = Path(__file__).parents[1] / "support" / "schema.sql"
            await db.execute(schema.read_text())
            await notify_flow(db, http_target)
        finally:
            await db.close()
        flowd = await start_durable(url)
        try:
            db = await asyncpg.connect(url)
            await insert_tasks(db, range(1, 101), per_transaction=10)
            await db.close()
            await http_target.wait_for_requests("/hook", 20)
            await asyncio.to_thread(cluster.restart)
            db = await asyncpg.connect(url)
            await insert_tasks(db, range(101, 201), per_transaction=10)
            await eventually(lambda: _at_least(successes(db), 200), "200 executions", 90, flowd)
            await eventually(lambda: no_pending(db), "every event handled", 60, flowd)
            assert await count(db, "SELECT count(*) FROM flow_executions") == 200
            await db.close()
        finally:
            assert await flowd.stop() == 0
    finally:
        await asyncio.to_thread(cluster.stop)
    ids = {int(request.json()["id"]) for request in http_target.requests_to("/hook")}
    assert ids == set(range(1, 201))


async def test_once_drains_what_is_pending_and_exits_with_the_usual_codes(
    database_url: str, db: asyncpg.Connection, http_target: HttpTarget
) -> None:
    http_target.script("/hook", *[Reply(status=400)] * 1)
    await notify_flow(db, http_target)
    env = {"DATABASE_URL": database_url, **DURABLE}
    first = await run_flowd("--once", env=env)  # attaches the trigger; nothing pending yet
    assert first.code == 0, first.stderr
    assert "0 event(s)" in first.stderr
    await insert_tasks(db, range(1, 4))
    second = await run_flowd("--once", env=env)
    assert second.code == 1, second.stderr  # the first request was refused with 400
    assert "3 event(s)" in second.stderr
    assert "2 SUCCESS, 1 FAILURE" in second.stderr
    assert await pending_events(db) == 0
    third = await run_flowd("--once", env=env)
    assert third.code == 0
    assert "0 event(s)" in third.stderr


async def test_validate_reports_a_watched_table_without_its_capture_trigger(
    database_url: str, db: asyncpg.Connection, http_target: HttpTarget
) -> None:
    await notify_flow(db, http_target)
    env = {"DATABASE_URL": database_url, **DURABLE}
    before = await run_flowd("validate", env=env)
    assert before.code == 1
    assert "no capture trigger" in before.stdout
    assert "flowd run" in before.stdout
    assert (await run_flowd("--once", env=env)).code == 0
    after = await run_flowd("validate", env=env)
    assert after.code == 0, after.stdout


async def test_handled_events_are_deleted_after_the_retention(
    database_url: str, db: asyncpg.Connection, http_target: HttpTarget
) -> None:
    await notify_flow(db, http_target)
    flowd = await start_durable(
        database_url, FLOWD_EVENT_RETENTION="1s", FLOWD_MAINTENANCE_INTERVAL_S="0.5"
    )
    try:
        await insert_tasks(db, range(1, 51))
        await eventually(lambda: _at_least(successes(db), 50), "50 executions")
        await eventually(
            lambda: _equals(count(db, "SELECT count(*) FROM flow_events"), 0), "purged"
        )
        await flowd.wait_for_log("eventlog.purged")
    finally:
        assert await flowd.stop() == 0
    assert sum(line["events"] for line in flowd.logged("eventlog.purged")) == 50
    assert await count(db, "SELECT count(*) FROM flow_executions") == 50


async def test_a_loop_of_flowd_writes_stops_at_the_chain_depth(
    database_url: str, db: asyncpg.Connection
) -> None:
    """Each run writes the row again; the capture trigger records who wrote it, so the
    chain is cut after FLOWD_MAX_CHAIN_DEPTH writes even across workers and restarts."""
    flow_id = await add_flow(
        db,
        trigger_event="UPDATE",
        rules=[("estimate", "IS_NOT_NULL", None)],
        actions=[
            (
                "DB_UPDATE",
                {"table": "tasks", "field": "estimate", "value": "{{ new.estimate + 1 }}"},
            )
        ],
    )
    await db.execute("INSERT INTO tasks (id, title, estimate) VALUES (1, 'loop', 0)")
    flowd = await start_durable(database_url, FLOWD_MAX_CHAIN_DEPTH="3")
    try:
        await db.execute("UPDATE tasks SET estimate = 1 WHERE id = 1")
        await flowd.wait_for_log("flow.loop_detected")
        await eventually(lambda: no_pending(db), "every event handled")
    finally:
        assert await flowd.stop() == 0
    assert await count(db, "SELECT count(*) FROM flow_executions WHERE flow_id = $1", flow_id) == 4
    assert await count(db, "SELECT estimate::int FROM tasks WHERE id = 1") == 5
    [detected] = flowd.logged("flow.loop_detected")
    assert detected["chain_flow_ids"] == [flow_id] * 4


async def test_capture_follows_the_flows_as_they_come_and_go(
    database_url: str, db: asyncpg.Connection, http_target: HttpTarget
) -> None:
    """Flow edits reach the daemon by NOTIFY: a new watched table gets the trigger, a table
    no enabled flow watches any more loses it, and its changes are no longer logged."""
    flow_id = await notify_flow(db, http_target)
    flowd = await start_durable(database_url)
    try:
        await add_flow(
            db,
            trigger_table="projects",
            rules=[("name", "=", "flowd")],
            actions=[("API_CALL", {"url": http_target.url_for("/projects")})],
        )
        await flowd.wait_for_log("capture.synced", count=2)
        await db.execute("INSERT INTO projects (id, name) VALUES (1, 'flowd')")
        await http_target.wait_for_requests("/projects", 1)
        await db.execute("UPDATE flows SET is_enabled = false WHERE flow_id = $1", flow_id)
        await flowd.wait_for_log("capture.synced", count=3)
        await insert_tasks(db, range(1, 2))
        await eventually(lambda: no_pending(db), "every event handled", 30, flowd)
    finally:
        assert await flowd.stop() == 0
    synced = flowd.logged("capture.synced")
    assert synced[1]["attached"] == ["public.projects"]
    assert synced[2]["detached"] == ["public.tasks"]
    logged = await db.fetch("SELECT DISTINCT table_name FROM flow_events")
    assert [row["table_name"] for row in logged] == ["projects"]
    assert http_target.requests_to("/hook") == []


async def test_once_drains_many_rows_side_by_side_and_each_row_in_order(
    database_url: str, db: asyncpg.Connection, http_target: HttpTarget
) -> None:
    await add_flow(
        db,
        trigger_event="*",
        actions=[
            (
                "API_CALL",
                {"url": http_target.url_for("/rows"), "body": "{{ new.id }}:{{ new.estimate }}"},
            )
        ],
    )
    env = {"DATABASE_URL": database_url, **DURABLE}
    assert (await run_flowd("--once", env=env)).code == 0  # attaches the trigger
    await db.execute(
        "INSERT INTO tasks (id, title, estimate) SELECT n, 'row', 0 FROM generate_series(1, 5) n"
    )
    for _ in range(20):
        await db.execute("UPDATE tasks SET estimate = estimate + 1")
    result = await run_flowd("--once", env=env)
    assert result.code == 0, result.stderr
    assert "105 event(s)" in result.stderr
    seen: dict[int, list[int]] = defaultdict(list)
    for request in http_target.requests_to("/rows"):
        row, estimate = request.text().split(":")
        seen[int(row)].append(int(estimate))
    assert seen == {row: list(range(21)) for row in range(1, 6)}
