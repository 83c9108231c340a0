"""Hostile change events: each bad one fails alone, with one line, and the others still run.

Events files get lines nested 100,000 deep, 5,000-digit integers, invalid UTF-8, lone
surrogates, NUL characters and 500-deep nesting, between two ordinary events; the real
`flowd --once` must report the bad line by number and run the lines around it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from flowd.feeds.eventlog import MAX_TRIES
from tests.acceptance.test_daemon import start_flowd
from tests.conftest import frame
from tests.support.flowd_cli import Finished, RunningFlowd, run_flowd
from tests.support.flows import add_flow, executions
from tests.support.http_target import HttpTarget
from tests.support.realtime_server import RealtimeStandIn

_PLACEHOLDER = '"__ATTACK__"'


def _event_with(value: str) -> bytes:
    """An INSERT event whose record's `meta` is the raw JSON text `value`."""
    event = frame("insert_event")["payload"]["data"]
    event["record"] = {**event["record"], "id": 2, "meta": "__ATTACK__"}
    return json.dumps(event).replace(_PLACEHOLDER, value).encode()


ATTACKS = {
    "100000 deep": (_event_with("[" * 100_000 + "]" * 100_000), "nested deeper than 64"),
    "500 deep": (_event_with('{"a":' * 500 + "1" + "}" * 500), "nested deeper than 64"),
    "5000 digits": (_event_with("9" * 5000), "longer than 300 digits"),
    "bytes ff fe": (b"\xff\xfe" + _event_with("1"), "not UTF-8: byte 0xff"),
    "lone surrogate": (_event_with('"\\ud800"'), "lone surrogate"),
    "NUL": (_event_with('"a\\u0000b"'), "NUL"),
}


def _events_file(tmp_path: Path, attack: bytes) -> str:
    """Line 1 an ordinary INSERT, line 2 the attack, line 3 an ordinary DELETE."""
    path = tmp_path / "events.jsonl"
    lines = [json.dumps(frame("insert_event")).encode(), attack]
    lines.append(json.dumps(frame("delete_event")).encode())
    path.write_bytes(b"\n".join(lines) + b"\n")
    return str(path)


def _assert_line_2_refused(result: Finished, reason: str) -> None:
    assert result.code == 1, result.stderr
    [bad] = result.logged("event.bad_line")
    assert bad["line"] == 2
    assert reason in bad["error"]
    assert "Traceback" not in result.stdout + result.stderr
    assert "2 event(s), 1 bad line(s)" in result.stderr


@pytest.mark.parametrize("attack", ATTACKS, ids=list(ATTACKS))
async def test_bad_line_is_refused_and_the_lines_around_it_run(
    attack: str,
    db: asyncpg.Connection,
    database_url: str,
    http_target: HttpTarget,
    tmp_path: Path,
) -> None:
    line, reason = ATTACKS[attack]
    hook = {"url": http_target.url_for("/hook"), "method": "POST"}
    await add_flow(db, trigger_event="*", actions=[("API_CALL", hook)])
    result = await run_flowd(
        "--once",
        "--events",
        _events_file(tmp_path, line),
        env={"DATABASE_URL": database_url},
        timeout_s=30,
    )
    _assert_line_2_refused(result, reason)
    received = [json.loads(request.body)["type"] for request in http_target.requests_to("/hook")]
    assert received == ["INSERT", "DELETE"]
    statuses = await db.fetch("SELECT status FROM flow_executions ORDER BY execution_id")
    assert [row["status"] for row in statuses] == ["SUCCESS", "SUCCESS"]


@pytest.mark.parametrize("attack", ATTACKS, ids=list(ATTACKS))
async def test_dry_run_refuses_the_bad_line_and_classifies_the_others(
    attack: str, tmp_path: Path
) -> None:
    line, reason = ATTACKS[attack]
    flows = [{"flow_id": 1, "name": "any", "trigger_table": "tasks", "trigger_event": "*"}]
    (tmp_path / "flows.json").write_text(json.dumps(flows))
    result = await run_flowd(
        "--once",
        "--dry-run",
        "--flows",
        str(tmp_path / "flows.json"),
        "--events",
        _events_file(tmp_path, line),
        timeout_s=30,
    )
    _assert_line_2_refused(result, reason)
    assert [json.loads(printed) for printed in result.stdout.splitlines()] == [
        {"line": 1, "flows": [1]},
        {"line": 3, "flows": [1]},
    ]


# ---------------------------------------------------------------- Realtime


@pytest.fixture
async def realtime(database_url: str) -> AsyncIterator[RealtimeStandIn]:
    async with RealtimeStandIn(database_url, poll_interval_s=0.02) as standin:
        yield standin


async def test_realtime_change_past_the_limits_is_skipped_and_the_next_runs(
    db: asyncpg.Connection, database_url: str, realtime: RealtimeStandIn, http_target: HttpTarget
) -> None:
    """Realtime sends a row whose jsonb is nested 300 deep: one `event.unreadable`, and the
    change after it runs."""
    hook = {"url": http_target.url_for("/hook"), "method": "POST"}
    await add_flow(db, trigger_event="INSERT", actions=[("API_CALL", hook)])
    flowd = await start_flowd(database_url, realtime)
    try:
        await db.execute(
            "INSERT INTO tasks (id, title, meta) VALUES (1, 'poison', $1::jsonb)",
            '{"a":' * 300 + "1" + "}" * 300,
        )
        await db.execute("INSERT INTO tasks (id, title) VALUES (2, 'after')")
        [request] = await http_target.wait_for_requests("/hook", 1)
        assert request.json()["record"]["id"] == 2
        [unreadable] = await flowd.wait_for_log("event.unreadable")
        assert "nested deeper than 64" in unreadable["error"]
    finally:
        assert await flowd.stop() == 0
    assert "Traceback" not in flowd.tail(1000)
    assert [row["status"] for row in await executions(db)] == ["SUCCESS"]


# ---------------------------------------------------------------- durable event log

DURABLE = {"FLOWD_DELIVERY": "durable", "FLOWD_POLL_INTERVAL_S": "0.2", "FLOWD_LEASE_S": "3"}


# jsonb values any application writer can store (Postgres takes both).
ROW_ATTACKS = {
    "300 deep": ('{"a":' * 300 + "1" + "}" * 300, "nested deeper than 64"),
    "5000 digits": ('{"n": ' + "9" * 5000 + "}", "longer than 300 digits"),
}


@pytest.mark.parametrize("attack", ROW_ATTACKS, ids=list(ROW_ATTACKS))
async def test_poison_row_is_set_aside_and_the_events_beside_it_run(
    attack: str, db: asyncpg.Connection, database_url: str, http_target: HttpTarget
) -> None:
    """An application writes a poison jsonb value in the same batch as ordinary rows: the
    ordinary events run; the poison one is tried MAX_TRIES times, then set aside with its
    reason, shown by --failed and the backlog line, and --once exits 1."""
    value, reason = ROW_ATTACKS[attack]
    hook = {"url": http_target.url_for("/hook"), "method": "POST"}
    await add_flow(db, trigger_event="INSERT", actions=[("API_CALL", hook)])
    env = {"DATABASE_URL": database_url, **DURABLE}
    assert (await run_flowd("--once", env=env)).code == 0  # attaches the capture trigger
    async with db.transaction():
        await db.execute("INSERT INTO tasks (id, title) VALUES (1, 'ordinary')")
        await db.execute(
            "INSERT INTO tasks (id, title, meta) VALUES (2, 'poison', $1::jsonb)",
            value,
        )
        await db.execute("INSERT INTO tasks (id, title) VALUES (3, 'after')")
    poison_id = await db.fetchval("SELECT max(event_id) - 1 FROM flow_events")

    drained = await run_flowd("--once", env=env, timeout_s=30)

    assert drained.code == 1, drained.stderr
    assert "Traceback" not in drained.stdout + drained.stderr
    assert "2 event(s); 2 execution(s): 2 SUCCESS" in drained.stderr
    assert "1 event(s) set aside" in drained.stderr
    received = sorted(
        request.json()["record"]["id"] for request in http_target.requests_to("/hook")
    )
    assert received == [1, 3]
    assert [row["status"] for row in await executions(db)] == ["SUCCESS", "SUCCESS"]
    assert [line["tries"] for line in drained.logged("event.try_failed")] == [1, 2]
    [set_aside] = drained.logged("event.set_aside")
    assert (set_aside["event_id"], set_aside["tries"]) == (poison_id, MAX_TRIES)
    assert reason in set_aside["reason"]
    row = await db.fetchrow(
        "SELECT tries, failure, failed_at IS NOT NULL AS failed FROM flow_events"
        " WHERE event_id = $1",
        poison_id,
    )
    assert row is not None
    assert (row["tries"], row["failed"]) == (MAX_TRIES, True)
    assert reason in row["failure"]

    again = await run_flowd("--once", env=env, timeout_s=30)
    assert again.code == 0, again.stderr  # set aside: no longer claimed, nothing else pending
    assert "0 event(s)" in again.stderr

    failed = await run_flowd("--once", "--failed", env=env, timeout_s=30)
    assert failed.code == 1, failed.stderr
    [listed] = failed.logged("event.set_aside")
    assert (listed["event_id"], listed["table"], listed["type"]) == (
        poison_id,
        "public.tasks",
        "INSERT",
    )
    assert reason in listed["reason"]
    assert "1 event(s) set aside" in failed.stderr

    daemon = await RunningFlowd(env={**env, "FLOWD_MAINTENANCE_INTERVAL_S": "60"}).start()
    try:
        await daemon.wait_for_log("eventlog.started")
        [backlog] = daemon.logged("eventlog.backlog")  # logged at start
        assert (backlog["pending"], backlog["set_aside"]) == (0, 1)
    finally:
        code = await daemon.stop()
        assert code == 0, daemon.tail(40)
    assert len(http_target.requests_to("/hook")) == 2  # nothing ran twice


_REFUSE_SQL = """
CREATE FUNCTION refuse_unrecordable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.event -> 'record' ->> 'title' = 'unrecordable' THEN
        RAISE EXCEPTION 'refused by a check of the database';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER refuse_unrecordable BEFORE INSERT ON flow_executions
    FOR EACH ROW EXECUTE FUNCTION refuse_unrecordable();
"""


async def test_event_that_cannot_be_recorded_is_set_aside_and_its_batch_runs(
    db: asyncpg.Connection, database_url: str, http_target: HttpTarget
) -> None:
    """The database refuses one event's execution row (no outage): its claim is written in
    the same group as its neighbours', which must land all the same."""
    hook = {"url": http_target.url_for("/hook"), "method": "POST"}
    await add_flow(db, trigger_event="INSERT", actions=[("API_CALL", hook)])
    await db.execute(_REFUSE_SQL)
    env = {"DATABASE_URL": database_url, **DURABLE}
    assert (await run_flowd("--once", env=env)).code == 0  # attaches the capture trigger
    await db.execute(
        "INSERT INTO tasks (id, title) VALUES (1, 'ordinary'), (2, 'unrecordable'), (3, 'after')"
    )

    drained = await run_flowd("--once", env=env, timeout_s=30)

    assert drained.code == 1, drained.stderr
    assert "Traceback" not in drained.stdout + drained.stderr
    received = sorted(
        request.json()["record"]["id"] for request in http_target.requests_to("/hook")
    )
    assert received == [1, 3]
    assert [row["status"] for row in await executions(db)] == ["SUCCESS", "SUCCESS"]
    [set_aside] = drained.logged("event.set_aside")
    assert "refused by a check of the database" in set_aside["reason"]
    assert "3 event(s); 2 execution(s): 2 SUCCESS" in drained.stderr
    assert "1 event(s) set aside" in drained.stderr
    pending = await db.fetchval("SELECT count(*) FROM flow_events WHERE handled_at IS NULL")
    assert pending == 0


async def test_daemon_sets_aside_an_unrecordable_event_and_keeps_serving(
    db: asyncpg.Connection, database_url: str, http_target: HttpTarget
) -> None:
    """`flowd run` in durable mode: the same poison event, tried MAX_TRIES times by the
    daemon, is set aside while the changes around it (and after it, on its row) run."""
    hook = {"url": http_target.url_for("/hook"), "method": "POST"}
    await add_flow(db, trigger_event="*", actions=[("API_CALL", hook)])
    await db.execute(_REFUSE_SQL)
    env = {"DATABASE_URL": database_url, **DURABLE, "FLOWD_MAINTENANCE_INTERVAL_S": "0.5"}
    daemon = await RunningFlowd(env=env).start()
    try:
        await daemon.wait_for_log("eventlog.started")
        await db.execute(
            "INSERT INTO tasks (id, title) VALUES (1, 'ordinary'), (2, 'unrecordable'), (3, 'x')"
        )
        await db.execute("UPDATE tasks SET title = 'recordable' WHERE id = 2")
        [set_aside] = await daemon.wait_for_log("event.set_aside")
        assert set_aside["tries"] == MAX_TRIES
        requests = await http_target.wait_for_requests("/hook", 3)
        received = sorted((r.json()["type"], r.json()["record"]["id"]) for r in requests)
        assert received == [("INSERT", 1), ("INSERT", 3), ("UPDATE", 2)]
        await daemon.wait_for_log("eventlog.backlog", set_aside=1, pending=0)
    finally:
        code = await daemon.stop()
        assert code == 0, daemon.tail(40)
    assert "Traceback" not in daemon.tail(1000)
