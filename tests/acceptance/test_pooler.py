"""flowd through a transaction-mode pooler (PgBouncer, as Supabase's pooler on port 6543)."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import asyncpg
import pytest

from flowd.config import SUPABASE_TRANSACTION_POOLER_PORT
from tests.acceptance.test_daemon import hook, start_flowd
from tests.conftest import frame
from tests.support.flowd_cli import RunningFlowd, run_flowd
from tests.support.flows import add_flow, executions
from tests.support.http_target import HttpTarget
from tests.support.pgbouncer import TransactionPooler
from tests.support.realtime_server import RealtimeStandIn

pytestmark = pytest.mark.skipif(
    shutil.which("pgbouncer") is None and not Path("/usr/sbin/pgbouncer").exists(),
    reason="pgbouncer is not installed (.ci/run installs it)",
)


async def test_replay_and_migrate_work_through_a_transaction_pooler(
    db: asyncpg.Connection, database_url: str, http_target: HttpTarget, tmp_path: Path
) -> None:
    """With the statement cache off, migrate, validate and a replay all work in transaction mode."""
    await db.execute(
        "INSERT INTO tasks (id, title, priority, status) VALUES (1, 'Write', 'high', 'open')"
    )
    flow_id = await add_flow(
        db,
        actions=[
            ("API_CALL", {"url": http_target.url_for("/hook")}),
            ("DB_UPDATE", {"table": "tasks", "field": "status", "value": "In Progress"}),
        ],
    )
    events = tmp_path / "events.jsonl"
    events.write_text(json.dumps(frame("insert_event")) + "\n")
    with TransactionPooler(database_url) as pooler:
        env = {"DATABASE_URL": pooler.url_for(database_url), "FLOWD_DB_STATEMENT_CACHE_SIZE": "0"}
        for args in (("migrate",), ("--once", "--events", str(events)), ("validate",)):
            result = await run_flowd(*args, env=env)
            assert result.code == 0, (args, result.stdout, result.stderr)
        replayed = await run_flowd("--once", "--events", str(events), "--force", env=env)
        assert replayed.code == 0, replayed.stderr
    assert len(http_target.requests_to("/hook")) == 2
    [execution] = await executions(db)
    assert (execution["flow_id"], execution["status"], execution["runs"]) == (flow_id, "SUCCESS", 2)
    assert await db.fetchval("SELECT status FROM tasks WHERE id = 1") == "In Progress"


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as pgbouncer binds
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


async def test_run_through_the_transaction_pooler_rereads_flows_instead_of_listening(
    db: asyncpg.Connection, database_url: str, http_target: HttpTarget
) -> None:
    """On port 6543 a LISTEN would hear nothing (the server connection goes back to the
    pool): flowd says so once, keeps running, and a flow added takes effect at the re-read."""
    port = SUPABASE_TRANSACTION_POOLER_PORT
    if not port_is_free(port):
        pytest.skip(f"port {port} is taken on this machine")
    with TransactionPooler(database_url, port=port) as pooler:
        flowd = await RunningFlowd(
            env={
                "DATABASE_URL": pooler.url_for(database_url),
                "FLOWD_DELIVERY": "durable",
                "FLOWD_POLL_INTERVAL_S": "0.2",
                "FLOWD_RELOAD_INTERVAL_S": "1",
            }
        ).start()
        await flowd.wait_for_log("eventlog.started")
        flow_id = await add_flow(
            db, trigger_table="projects", actions=[("API_CALL", {"url": http_target.url_for("/p")})]
        )
        [reloaded] = await flowd.wait_for_log("flows.reloaded", timeout_s=10)
        assert reloaded["added"] == [flow_id]
        assert 0 <= reloaded["delay_s"] < 5
        await db.execute("INSERT INTO projects (id, name) VALUES (1, 'pooled')")
        [request] = await http_target.wait_for_requests("/p", 1)
        assert request.json()["record"]["name"] == "pooled"
        assert len(flowd.logged("listener.polling_only")) == 1
        assert flowd.logged("listener.listening") == []
        assert flowd.logged("daemon.task_died") == []
        assert await flowd.stop() == 0


async def test_realtime_through_the_transaction_pooler_reloads_on_published_flow_tables(
    db: asyncpg.Connection, database_url: str, http_target: HttpTarget
) -> None:
    """Where flowd cannot LISTEN, realtime delivery still hears flow edits over Realtime
    when flowd's tables are published (the re-read is a minute away here)."""
    port = SUPABASE_TRANSACTION_POOLER_PORT
    if not port_is_free(port):
        pytest.skip(f"port {port} is taken on this machine")
    await db.execute("ALTER PUBLICATION supabase_realtime ADD TABLE flows, rules, actions")
    with TransactionPooler(database_url, port=port) as pooler:
        async with RealtimeStandIn(database_url, poll_interval_s=0.02) as realtime:
            flowd = await start_flowd(pooler.url_for(database_url), realtime)
            flow_id = await add_flow(db, actions=[hook(http_target, "/hook")])
            [reloaded] = await flowd.wait_for_log("flows.reloaded", timeout_s=10)
            assert reloaded["added"] == [flow_id]
            await realtime.wait_until_live("public", "tasks")
            await db.execute(
                "INSERT INTO tasks (id, title, priority, status) VALUES (1, 't', 'high', 'open')"
            )
            await http_target.wait_for_requests("/hook", 1)
            assert len(flowd.logged("listener.polling_only")) == 1
            assert await flowd.stop() == 0
