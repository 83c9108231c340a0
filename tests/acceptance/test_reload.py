"""Flow edits take effect at once in both deliveries, with the flows tables in no publication.

`flowd run` LISTENs for the migrations' `flowd_flows` notice on a connection of its own: a
flow committed while it runs fires for a row committed a second later. The periodic
re-read is set to a minute, so only the notice can explain a flow firing within the wait.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from tests.acceptance.test_daemon import hook, start_flowd
from tests.support.flowd_cli import RunningFlowd
from tests.support.flows import add_flow, executions
from tests.support.http_target import HttpTarget
from tests.support.realtime_server import RealtimeStandIn

DURABLE = {
    "FLOWD_DELIVERY": "durable",
    "FLOWD_POLL_INTERVAL_S": "0.2",
    "FLOWD_RELOAD_INTERVAL_S": "60",
}
PATIENCE_S = 5.0  # the bound on "at once", as a hang guard


@pytest.fixture
async def realtime(database_url: str) -> AsyncIterator[RealtimeStandIn]:
    async with RealtimeStandIn(database_url, poll_interval_s=0.02) as standin:
        yield standin


async def published_tables(db: asyncpg.Connection) -> set[str]:
    rows = await db.fetch("SELECT tablename FROM pg_publication_tables")
    return {row["tablename"] for row in rows}


async def add_two_flows_at_once(db: asyncpg.Connection, target: HttpTarget) -> list[int]:
    """Two flows on `projects`, written in one transaction as an apply writes them."""
    async with db.transaction():
        return [
            await add_flow(db, trigger_table="projects", actions=[hook(target, path)])
            for path in ("/first", "/second")
        ]


async def assert_new_flows_fire(
    db: asyncpg.Connection, flowd: RunningFlowd, target: HttpTarget
) -> None:
    """Flows added while flowd runs fire for a row committed a second later; one reload
    (logged with its delay) took both in."""
    assert not {"flows", "rules", "actions"} & await published_tables(db)
    flow_ids = await add_two_flows_at_once(db, target)
    await asyncio.sleep(1)
    await db.execute("INSERT INTO projects (id, name) VALUES (1, 'flowd')")
    for path in ("/first", "/second"):
        [request] = await target.wait_for_requests(path, 1, timeout_s=PATIENCE_S)
        assert request.json()["record"]["name"] == "flowd"
    await flowd.wait_for_log("flow.executed", count=2)
    [reloaded] = flowd.logged("flows.reloaded")
    assert reloaded["added"] == flow_ids
    assert 0 <= reloaded["delay_s"] < PATIENCE_S
    assert await flowd.stop() == 0
    rows = await executions(db)
    assert sorted((r["flow_id"], r["status"]) for r in rows) == [
        (flow_id, "SUCCESS") for flow_id in flow_ids
    ]


async def test_a_flow_added_while_running_fires_at_once_in_realtime_delivery(
    db: asyncpg.Connection, database_url: str, realtime: RealtimeStandIn, http_target: HttpTarget
) -> None:
    """Realtime delivery hears the edit without Realtime: projects is published (a trigger
    table must be), flowd's own tables are not."""
    await db.execute("ALTER PUBLICATION supabase_realtime ADD TABLE projects")
    await add_flow(db, actions=[hook(http_target, "/tasks")])
    flowd = await start_flowd(database_url, realtime)
    await flowd.wait_for_log("listener.listening")
    await assert_new_flows_fire(db, flowd, http_target)
    assert flowd.logged("realtime.binding_rejected") == []  # flowd's tables are not asked for


async def test_a_flow_added_while_running_fires_at_once_in_durable_delivery(
    db: asyncpg.Connection, database_url: str, http_target: HttpTarget
) -> None:
    """Durable delivery attaches the capture trigger to the new table on the reload."""
    flowd = await RunningFlowd(env={"DATABASE_URL": database_url, **DURABLE}).start()
    await flowd.wait_for_log("eventlog.started")
    [listening] = await flowd.wait_for_log("listener.listening")
    assert listening["channels"] == ["flowd_events", "flowd_flows"]
    await assert_new_flows_fire(db, flowd, http_target)


async def test_the_listener_comes_back_after_its_connection_is_killed(
    db: asyncpg.Connection, database_url: str, http_target: HttpTarget
) -> None:
    """A terminated LISTEN session is logged and replaced; edits are heard again."""
    flowd = await RunningFlowd(env={"DATABASE_URL": database_url, **DURABLE}).start()
    await flowd.wait_for_log("listener.listening")
    killed = await db.fetchval(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
        " WHERE application_name = 'flowd' AND query LIKE 'LISTEN%'"
    )
    assert killed == 1
    await flowd.wait_for_log("listener.lost", timeout_s=5)  # heard at once, not at a check
    await flowd.wait_for_log("listener.listening", count=2, timeout_s=20)
    await assert_new_flows_fire(db, flowd, http_target)
