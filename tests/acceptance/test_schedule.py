"""Scheduled flows end to end: the real `flowd --once --schedule`, `flowd validate` and
`flowd run` (the ticks in-process, with an injected clock: tests/integration/).
"""

from __future__ import annotations

from pathlib import Path

import asyncpg

from tests.integration.test_schedule import (
    OVERDUE_IDS,
    TICK,
    notified,
    overdue_flow,
    overdue_tasks,
)
from tests.support.flowd_cli import RunningFlowd, run_flowd
from tests.support.flows import add_flow, executions
from tests.support.http_target import HttpTarget


async def test_flowd_once_schedule_runs_one_tick_now(
    database_url: str, db: asyncpg.Connection, http_target: HttpTarget
) -> None:
    """The real command: one tick of the flow, now; matching rows run, the receiver hears
    of each once, exit 0. `validate` passes it; a change flow's id is refused (exit 2)."""
    await overdue_tasks(db)
    await db.execute(  # the same tasks, overdue (or not yet due) now
        "UPDATE tasks SET due_at = now() + (due_at - $1)", TICK
    )
    flow_id = await overdue_flow(db, http_target)
    other = await add_flow(db)
    env = {"DATABASE_URL": database_url}
    finished = await run_flowd("--once", "--schedule", str(flow_id), env=env)
    assert finished.code == 0, finished.stderr
    assert "5 execution(s): 5 SUCCESS" in finished.stderr
    rows = await executions(db)
    assert sorted(e["event"]["record"]["id"] for e in rows) == OVERDUE_IDS
    assert {e["status"] for e in rows} == {"SUCCESS"}
    assert sorted(int(r.json()["id"]) for r in http_target.requests_to("/notify")) == OVERDUE_IDS
    assert [log["rows_matched"] for log in finished.logged("schedule.tick_finished")] == [5]

    refused = await run_flowd("--once", "--schedule", str(other), env=env)
    assert refused.code == 2
    assert "is not an enabled SCHEDULE flow" in refused.stderr


async def test_validate_reports_a_bad_cron_expression(
    database_url: str, db: asyncpg.Connection, http_target: HttpTarget
) -> None:
    """`flowd validate` names the flow and says what is wrong with its schedule."""
    flow_id = await overdue_flow(db, http_target, schedule="*/5 * * *")
    finished = await run_flowd("validate", env={"DATABASE_URL": database_url})
    assert finished.code == 1
    assert f"flow {flow_id} " in finished.stdout
    assert "schedule: '*/5 * * *' is not a cron expression of five fields" in finished.stdout


async def test_readme_scheduled_flow_sql_works_end_to_end(
    db: asyncpg.Connection, database_url: str, http_target: HttpTarget
) -> None:
    """README's overdue-tasks flow: it validates, and a tick notifies the overdue task only."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    sql = next(
        block.split("```", 1)[0]
        for block in readme.split("```sql")[1:]
        if "Overdue tasks: notify the owner" in block
    )
    await db.execute(sql)
    env = {"DATABASE_URL": database_url, "FLOWD_SECRET_SLACK_PATH": "T000/B000/XXXX"}
    validated = await run_flowd("validate", env=env)
    assert validated.code == 0, validated.stdout + validated.stderr
    await db.execute(
        "UPDATE actions SET config = jsonb_set(config, '{url}', to_jsonb($1::text))",
        http_target.url + "/services/{{ secrets.SLACK_PATH }}",
    )
    await db.execute(
        "INSERT INTO tasks (id, title, due_at, done, assignee) VALUES"
        " (1, 'Ship', now() - interval '1 day', false, '00000000-0000-0000-0000-00000000000a'),"
        " (2, 'Done', now() - interval '1 day', true, null),"
        " (3, 'Later', now() + interval '1 day', false, null)"
    )
    flow_id = await db.fetchval("SELECT flow_id FROM flows")
    result = await run_flowd("--once", "--schedule", str(flow_id), env=env)
    assert result.code == 0, result.stderr
    [request] = http_target.requests_to("/services/T000/B000/XXXX")
    assert request.json() == {"text": "Overdue: Ship (00000000-0000-0000-0000-00000000000a)"}


async def test_the_daemon_runs_the_latest_missed_tick_on_start(
    database_url: str, db: asyncpg.Connection, http_target: HttpTarget
) -> None:
    """The real `flowd run` (durable): the last tick recorded is ten minutes old, so on start
    the latest due tick runs once, and the log says how many were skipped. A table only
    scheduled flows use gets no capture trigger."""
    await overdue_tasks(db)
    await db.execute("UPDATE tasks SET due_at = now() + (due_at - $1)", TICK)
    flow_id = await overdue_flow(db, http_target, schedule="* * * * *")
    await db.execute(
        "INSERT INTO flow_ticks (flow_id, scheduled_for, worker, lease_until, finished_at)"
        " VALUES ($1, date_trunc('minute', now()) - interval '10 minutes', 'gone', now(), now())",
        flow_id,
    )
    flowd = await RunningFlowd(
        env={"DATABASE_URL": database_url, "FLOWD_DELIVERY": "durable"}
    ).start()
    try:
        [finished] = await flowd.wait_for_log("schedule.tick_finished", flow_id=flow_id)
    finally:
        assert await flowd.stop() == 0
    assert finished["rows_matched"] == len(OVERDUE_IDS)
    [missed] = flowd.logged("schedule.missed")
    assert missed["skipped"] in (9, 10)  # the minute may turn while flowd starts
    assert set(notified(http_target).values()) == {1}
    assert len(notified(http_target)) == len(OVERDUE_IDS)
    assert await db.fetchval("SELECT count(*) FROM flow_ticks") == 2
    assert not await db.fetchval("SELECT count(*) FROM pg_trigger WHERE tgname = 'flowd_capture'")
