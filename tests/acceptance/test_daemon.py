"""`flowd run` end to end: real Postgres rows → Realtime stand-in → the real client → flows.

Each test starts the real daemon as a subprocess against a stand-in that speaks the
Realtime protocol and emits frames for rows committed to the test database, and
asserts what an operator sees: webhook requests, `flow_executions` rows, log lines,
exit codes.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.support.flowd_cli import RunningFlowd, run_flowd
from tests.support.flows import add_flow, executions
from tests.support.http_target import HttpTarget, Reply
from tests.support.realtime_server import RealtimeStandIn
from tests.support.wait import eventually

SERVICE_KEY = "service-role-key-for-tests"
# Fast supervision so failures are noticed and repaired within a test's patience.
FAST = {
    "FLOWD_REALTIME_HEARTBEAT_S": "0.5",
    "FLOWD_REALTIME_STALL_S": "3",
    "FLOWD_REALTIME_READY_TIMEOUT_S": "3",
    "FLOWD_REALTIME_BACKOFF_S": "0.1",
    "FLOWD_REALTIME_MAX_BACKOFF_S": "0.5",
    "FLOWD_RELOAD_INTERVAL_S": "60",
}


@pytest.fixture
async def realtime(database_url: str) -> AsyncIterator[RealtimeStandIn]:
    async with RealtimeStandIn(database_url, poll_interval_s=0.02) as standin:
        yield standin


def hook(target: HttpTarget, path: str, **extra: Any) -> tuple[str, dict[str, Any]]:
    return ("API_CALL", {"url": target.url_for(path), **extra})


async def start_flowd(
    database_url: str, realtime: RealtimeStandIn, *args: str, wait_live: bool = True, **env: str
) -> RunningFlowd:
    running = await RunningFlowd(
        *args,
        env={
            "DATABASE_URL": database_url,
            "SUPABASE_URL": realtime.url,
            "SUPABASE_SERVICE_ROLE_KEY": SERVICE_KEY,
            **FAST,
            **env,
        },
    ).start()
    if wait_live:
        await running.wait_for_log("realtime.live")
    return running


async def insert_task(db: asyncpg.Connection, task_id: int, **columns: Any) -> None:
    values = {"title": f"task {task_id}", "priority": "high", "status": "open", **columns}
    names = ", ".join(values)
    marks = ", ".join(f"${i}" for i in range(2, len(values) + 2))
    await db.execute(
        f"INSERT INTO tasks (id, {names}) VALUES ($1, {marks})", task_id, *values.values()
    )


async def test_insert_update_delete_reach_webhooks_and_executions(
    db: asyncpg.Connection, database_url: str, realtime: RealtimeStandIn, http_target: HttpTarget
) -> None:
    """An INSERT, an UPDATE with CHANGED_TO (REPLICA IDENTITY FULL) and a DELETE each run a flow."""
    await db.execute("ALTER TABLE tasks REPLICA IDENTITY FULL")
    inserted = await add_flow(
        db, rules=[("priority", "=", "high")], actions=[hook(http_target, "/insert")]
    )
    updated = await add_flow(
        db,
        trigger_event="UPDATE",
        rules=[("status", "CHANGED_TO", "done")],
        actions=[hook(http_target, "/update", body={"was": "{{ old.status }}"})],
    )
    deleted = await add_flow(db, trigger_event="DELETE", actions=[hook(http_target, "/delete")])
    flowd = await start_flowd(database_url, realtime)
    await insert_task(db, 1)
    await db.execute("UPDATE tasks SET status = 'done' WHERE id = 1")
    await db.execute("DELETE FROM tasks WHERE id = 1")
    [insert] = await http_target.wait_for_requests("/insert", 1)
    [update] = await http_target.wait_for_requests("/update", 1)
    [delete] = await http_target.wait_for_requests("/delete", 1)
    assert insert.json()["record"]["title"] == "task 1"
    assert update.json() == {"was": "open"}
    assert delete.json()["old_record"]["title"] == "task 1"
    await flowd.wait_for_log("flow.executed", count=3)
    assert await flowd.stop() == 0
    rows = await executions(db)
    assert {(r["flow_id"], r["status"]) for r in rows} == {
        (inserted, "SUCCESS"),
        (updated, "SUCCESS"),
        (deleted, "SUCCESS"),
    }
    assert [r["event"]["type"] for r in rows] == ["INSERT", "UPDATE", "DELETE"]


@pytest.mark.parametrize("fault", ["drop", "1000", "1001", "1012", "server_disconnect"])
async def test_connection_loss_is_repaired_and_later_changes_processed(
    fault: str,
    db: asyncpg.Connection,
    database_url: str,
    realtime: RealtimeStandIn,
    http_target: HttpTarget,
) -> None:
    """After a dropped or closed socket flowd subscribes again; changes after that all run."""
    await add_flow(db, actions=[hook(http_target, "/hook")])
    flowd = await start_flowd(database_url, realtime)
    if fault == "drop":
        await realtime.drop_connections()
    elif fault == "server_disconnect":
        await realtime.send_server_disconnect()
    else:
        await realtime.close_connections(int(fault))
    await flowd.wait_for_log("realtime.live", count=2)
    for task_id in range(1, 6):
        await insert_task(db, task_id)
    requests = await http_target.wait_for_requests("/hook", 5)
    assert sorted(r.json()["record"]["id"] for r in requests) == [1, 2, 3, 4, 5]
    assert flowd.logged("realtime.lost")
    assert await flowd.stop() == 0


@pytest.mark.parametrize("fault", ["phx_error", "system_error_and_close", "postgres_changes_error"])
async def test_channel_failures_are_repaired(
    fault: str,
    db: asyncpg.Connection,
    database_url: str,
    realtime: RealtimeStandIn,
    http_target: HttpTarget,
) -> None:
    """phx_error, a system error + phx_close, and a transient postgres_changes error (the
    client's rejoin on a live socket would get the channel closed, §9 hazard 1) are all
    followed by a fresh subscription that delivers."""
    await add_flow(db, actions=[hook(http_target, "/hook")])
    flowd = await start_flowd(database_url, realtime)
    if fault == "phx_error":
        await realtime.send_phx_error()
    elif fault == "system_error_and_close":
        await realtime.send_system_error_and_close()
    else:
        await realtime.send_postgres_changes_error('{:error, "Too many database timeouts"}')
    await flowd.wait_for_log("realtime.live", count=2)
    await asyncio.sleep(1.5)  # past the client's own 1 s rejoin, which must not fire
    await insert_task(db, 1)
    await insert_task(db, 2)
    requests = await http_target.wait_for_requests("/hook", 2)
    assert sorted(r.json()["record"]["id"] for r in requests) == [1, 2]
    assert len(flowd.logged("realtime.live")) == 2
    assert await flowd.stop() == 0


async def test_withheld_join_reply_and_refused_connections_are_outlasted(
    db: asyncpg.Connection, database_url: str, realtime: RealtimeStandIn, http_target: HttpTarget
) -> None:
    """A join that is never answered, then more failed connects than the client's own five
    retries (§9 hazard 3): flowd keeps rebuilding with backoff until it is live."""
    await add_flow(db, actions=[hook(http_target, "/hook")])
    realtime.withhold_join_replies = True
    flowd = await start_flowd(database_url, realtime, wait_live=False)
    await flowd.wait_for_log("realtime.rebuilding", reason="not subscribed in time")
    realtime.withhold_join_replies = False
    realtime.refuse_connections = 503
    await flowd.wait_for_log("realtime.rebuilding", count=8, timeout_s=60)
    realtime.refuse_connections = None
    await flowd.wait_for_log("realtime.live", timeout_s=30)
    await insert_task(db, 1)
    await http_target.wait_for_requests("/hook", 1)
    assert await flowd.stop() == 0


async def test_table_not_in_publication_is_a_configuration_error(
    db: asyncpg.Connection, database_url: str, realtime: RealtimeStandIn, http_target: HttpTarget
) -> None:
    """A flow on an unpublished table is reported once with the fix; other flows keep working
    and flowd does not rejoin in a loop."""
    await add_flow(db, trigger_table="projects", actions=[hook(http_target, "/projects")])
    await add_flow(db, actions=[hook(http_target, "/tasks")])
    flowd = await start_flowd(database_url, realtime)
    rejected = [r for r in flowd.logged("realtime.binding_rejected") if "projects" in r["table"]]
    assert len(rejected) == 1
    assert rejected[0]["table"] == "public.projects"
    assert "ALTER PUBLICATION supabase_realtime ADD TABLE" in rejected[0]["fix"]
    await insert_task(db, 1)
    await http_target.wait_for_requests("/tasks", 1)
    connects = len(flowd.logged("realtime.connecting"))
    await asyncio.sleep(2)
    assert len(flowd.logged("realtime.connecting")) == connects
    assert len(flowd.logged("realtime.binding_rejected")) == len(
        {r["table"] for r in flowd.logged("realtime.binding_rejected")}
    )
    assert await flowd.stop() == 0


async def test_slow_actions_do_not_block_the_connection(
    db: asyncpg.Connection, database_url: str, realtime: RealtimeStandIn, http_target: HttpTarget
) -> None:
    """While slow webhooks run, callbacks only enqueue: heartbeats still flow, nothing is
    rebuilt (§9 hazard 4), and every change is handled."""
    http_target.script("/slow", *[Reply(200, delay_s=1.0)] * 4)
    await add_flow(db, actions=[hook(http_target, "/slow")])
    flowd = await start_flowd(database_url, realtime, FLOWD_CONCURRENCY="1")
    for task_id in range(1, 5):
        await insert_task(db, task_id)
    await http_target.wait_for_requests("/slow", 1)
    before = sum(1 for f in realtime.received if f["event"] == "heartbeat")
    await asyncio.sleep(2)
    assert sum(1 for f in realtime.received if f["event"] == "heartbeat") >= before + 2
    await http_target.wait_for_requests("/slow", 4, timeout_s=15)
    assert flowd.logged("realtime.lost") == []
    assert await flowd.stop() == 0


async def test_new_flow_on_new_table_fires_without_restart_and_disabled_flow_stops(
    db: asyncpg.Connection, database_url: str, realtime: RealtimeStandIn, http_target: HttpTarget
) -> None:
    """Flow changes are picked up live (flowd's tables unpublished): a new table is
    subscribed, a disabled flow stops."""
    await db.execute("ALTER PUBLICATION supabase_realtime ADD TABLE projects")
    tasks_flow = await add_flow(db, actions=[hook(http_target, "/tasks")])
    flowd = await start_flowd(database_url, realtime)
    await add_flow(db, trigger_table="projects", actions=[hook(http_target, "/projects")])
    await flowd.wait_for_log("flows.reloaded")
    await realtime.wait_until_live("public", "projects")
    await db.execute("INSERT INTO projects (id, name) VALUES (1, 'flowd')")
    await http_target.wait_for_requests("/projects", 1)
    await db.execute("UPDATE flows SET is_enabled = false WHERE flow_id = $1", tasks_flow)
    await flowd.wait_for_log("flows.reloaded", count=2)
    await flowd.wait_for_log("realtime.live", count=3)
    assert ("public", "tasks", "INSERT") not in realtime.live_bindings()
    await insert_task(db, 1)
    await db.execute("INSERT INTO projects (id, name) VALUES (2, 'after')")
    await http_target.wait_for_requests("/projects", 2)
    assert http_target.requests_to("/tasks") == []
    assert await flowd.stop() == 0


async def test_invalid_new_definition_keeps_the_last_good_one(
    db: asyncpg.Connection, database_url: str, realtime: RealtimeStandIn, http_target: HttpTarget
) -> None:
    """A flow edited into something broken keeps running as it was, with an error logged."""
    flow_id = await add_flow(
        db, rules=[("priority", "=", "high")], actions=[hook(http_target, "/hook")]
    )
    flowd = await start_flowd(database_url, realtime)
    await db.execute("UPDATE rules SET operator = 'SOUNDS_LIKE' WHERE flow_id = $1", flow_id)
    [refused] = await flowd.wait_for_log("flow.refused", flow_id=flow_id)
    assert refused["kept_previous_definition"] is True
    await insert_task(db, 1)
    await http_target.wait_for_requests("/hook", 1)
    assert await flowd.stop() == 0


async def test_sighup_reloads_flows(
    db: asyncpg.Connection, database_url: str, realtime: RealtimeStandIn, http_target: HttpTarget
) -> None:
    """A flow written without the `flowd_flows` notice (its trigger off, as in a restore),
    with flowd's tables unpublished and a long re-read interval: SIGHUP reloads at once."""
    await add_flow(db, actions=[hook(http_target, "/first")])
    flowd = await start_flowd(database_url, realtime)
    await flowd.wait_for_log("listener.listening")
    await asyncio.sleep(1)  # past the reload the listener asks for as it connects
    await db.execute("SET session_replication_role = replica")  # no trigger fires
    await add_flow(db, actions=[hook(http_target, "/second")])
    await db.execute("RESET session_replication_role")
    await asyncio.sleep(1)
    assert flowd.logged("flows.reloaded") == []
    flowd.signal(signal.SIGHUP)
    [reloaded] = await flowd.wait_for_log("flows.reloaded")
    assert len(reloaded["added"]) == 1
    await insert_task(db, 1)
    await http_target.wait_for_requests("/first", 1)
    await http_target.wait_for_requests("/second", 1)
    assert await flowd.stop() == 0


async def test_ping_pong_flows_stop_at_the_chain_depth(
    db: asyncpg.Connection, database_url: str, realtime: RealtimeStandIn
) -> None:
    """Flow A sets ping→pong, B sets pong→ping: the chain of flowd-caused changes stops at
    FLOWD_MAX_CHAIN_DEPTH with one flow.loop_detected naming the flows."""
    await db.execute("ALTER TABLE tasks REPLICA IDENTITY FULL")
    ping = await add_flow(
        db,
        name="ping",
        trigger_event="UPDATE",
        rules=[("status", "CHANGED_TO", "ping")],
        actions=[("DB_UPDATE", {"table": "tasks", "set": {"status": "pong"}})],
    )
    pong = await add_flow(
        db,
        name="pong",
        trigger_event="UPDATE",
        rules=[("status", "CHANGED_TO", "pong")],
        actions=[("DB_UPDATE", {"table": "tasks", "set": {"status": "ping"}})],
    )
    await insert_task(db, 1)
    flowd = await start_flowd(database_url, realtime)
    await db.execute("UPDATE tasks SET status = 'ping' WHERE id = 1")
    [loop] = await flowd.wait_for_log("flow.loop_detected")
    assert loop["chain_flow_ids"] == [ping, pong, ping, pong]
    assert loop["flow_ids"] == [ping]
    await asyncio.sleep(1)
    assert len(flowd.logged("flow.loop_detected")) == 1
    assert [r["flow_id"] for r in await executions(db)] == [ping, pong, ping, pong]
    assert await db.fetchval("SELECT status FROM tasks WHERE id = 1") == "ping"
    assert await flowd.stop() == 0


async def test_two_replicas_run_each_flow_once_per_event(
    db: asyncpg.Connection, database_url: str, realtime: RealtimeStandIn, http_target: HttpTarget
) -> None:
    """Two daemons on one project: the execution claim lets one of them run each event."""
    await add_flow(db, actions=[hook(http_target, "/hook")])
    first = await start_flowd(database_url, realtime)
    second = await start_flowd(database_url, realtime)
    await db.execute(
        "INSERT INTO tasks (id, title) SELECT i, 'task ' || i FROM generate_series(1, 20) i"
    )
    await http_target.wait_for_requests("/hook", 20)

    def skipped() -> int:
        return len(first.logged("flow.already_ran")) + len(second.logged("flow.already_ran"))

    await eventually(lambda: skipped() == 20, 30)  # each event: one runs it, one skips it
    await asyncio.sleep(0.5)
    assert len(http_target.requests_to("/hook")) == 20
    assert len(await executions(db)) == 20
    assert len(first.logged("flow.executed")) + len(second.logged("flow.executed")) == 20
    assert await first.stop() == 0
    assert await second.stop() == 0


async def test_sigterm_drains_then_records_what_was_cut_short(
    db: asyncpg.Connection, database_url: str, realtime: RealtimeStandIn, http_target: HttpTarget
) -> None:
    """SIGTERM during hanging webhooks: exit 0 inside the timeout, nothing left RUNNING, the
    cut-short and never-started events recorded as FAILURE for --failed."""
    http_target.script("/slow", *[Reply(200, delay_s=30)] * 10)
    flow_id = await add_flow(db, actions=[hook(http_target, "/slow", timeout_s=60)])
    flowd = await start_flowd(
        database_url, realtime, FLOWD_CONCURRENCY="2", FLOWD_SHUTDOWN_TIMEOUT_S="1"
    )
    for task_id in range(1, 5):
        await insert_task(db, task_id)
    await http_target.wait_for_requests("/slow", 2)
    started = asyncio.get_running_loop().time()
    assert await flowd.stop(timeout_s=15) == 0
    assert asyncio.get_running_loop().time() - started < 10
    rows = await executions(db)
    assert len(rows) == 4, flowd.tail(60)
    assert {r["status"] for r in rows} == {"FAILURE"}
    logs = sorted(r["log"].split(":")[0] for r in rows)
    assert logs == ["cut short", "cut short", "not run", "not run"]
    [finished] = flowd.logged("shutdown.finished")
    assert finished["events_not_finished"] == 4
    http_target.reset()
    rerun = await run_flowd(
        "--once", "--failed", "--flow", str(flow_id), env={"DATABASE_URL": database_url}
    )
    assert rerun.code == 0, rerun.stderr
    assert len(http_target.requests_to("/slow")) == 4


async def test_a_second_signal_exits_at_once(
    db: asyncpg.Connection, database_url: str, realtime: RealtimeStandIn, http_target: HttpTarget
) -> None:
    """SIGINT starts a drain that would take 30 s; a second SIGINT ends flowd at once."""
    http_target.script("/slow", Reply(200, delay_s=30))
    await add_flow(db, actions=[hook(http_target, "/slow", timeout_s=60)])
    flowd = await start_flowd(database_url, realtime, FLOWD_SHUTDOWN_TIMEOUT_S="30")
    await insert_task(db, 1)
    await http_target.wait_for_requests("/slow", 1)
    flowd.signal(signal.SIGINT)
    await flowd.wait_for_log("shutdown.draining")
    flowd.signal(signal.SIGINT)
    assert await flowd.wait(timeout_s=5) == 1
    assert flowd.logged("shutdown.forced")


async def test_save_events_then_replay(
    db: asyncpg.Connection,
    database_url: str,
    realtime: RealtimeStandIn,
    http_target: HttpTarget,
    tmp_path: Path,
) -> None:
    """--save-events appends each received event; the file replays with --once."""
    flow_id = await add_flow(db, actions=[hook(http_target, "/hook")])
    saved = tmp_path / "saved.jsonl"
    flowd = await start_flowd(database_url, realtime, "--save-events", str(saved))
    await insert_task(db, 1)
    await insert_task(db, 2)
    await http_target.wait_for_requests("/hook", 2)
    assert await flowd.stop() == 0
    lines = [json.loads(line) for line in saved.read_text().splitlines()]
    assert [line["record"]["id"] for line in lines] == [1, 2]
    replay = await run_flowd(
        "--once", "--dry-run", "--events", str(saved), env={"DATABASE_URL": database_url}
    )
    assert replay.code == 0, replay.stderr
    assert [json.loads(line)["flows"] for line in replay.stdout.splitlines()] == [
        [flow_id],
        [flow_id],
    ]


async def test_burst_is_all_processed_in_row_order_with_bounded_memory(
    db: asyncpg.Connection, database_url: str, realtime: RealtimeStandIn, http_target: HttpTarget
) -> None:
    """5,000 changes in a burst: none lost while connected, each row's changes in order,
    and the daemon's memory stays bounded (a small FLOWD_QUEUE_SIZE applies backpressure)."""
    await add_flow(
        db,
        trigger_event="*",
        actions=[hook(http_target, "/hook", body={"id": "{{ new.id }}", "n": "{{ new.status }}"})],
    )
    flowd = await start_flowd(database_url, realtime, FLOWD_QUEUE_SIZE="50")
    rows, versions = 1000, 5
    await db.execute(
        "INSERT INTO tasks (id, status) SELECT i, '0' FROM generate_series(1, $1) i", rows
    )
    for version in range(1, versions):
        await db.execute("UPDATE tasks SET status = $1", str(version))
    total = rows * versions
    await http_target.wait_for_requests("/hook", total, timeout_s=180)
    seen: dict[str, list[int]] = {}
    for request in http_target.requests_to("/hook"):
        body = request.json()
        seen.setdefault(body["id"], []).append(int(body["n"]))
    assert len(seen) == rows
    assert all(order == list(range(versions)) for order in seen.values())
    peak_kib = _peak_memory_kib(flowd)
    assert await flowd.stop() == 0
    assert peak_kib < 300 * 1024, f"flowd peaked at {peak_kib} KiB"


def _peak_memory_kib(flowd: RunningFlowd) -> int:
    status = Path(f"/proc/{flowd.pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1])
