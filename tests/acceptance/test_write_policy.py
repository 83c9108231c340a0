"""Where flows may watch and write: the attacks of issue 12, refused, with a bystander running.

A DB_UPDATE on `pg_catalog.pg_authid`, on Supabase's `auth.users` (a row picked by event
data) or on flowd's own `flow_executions`; a flow watching `flow_events` or
`flow_executions`; an application that sets `flowd.cause` to silence a flow. Each is
driven through the real `flowd` command; the assertions are rows, requests, exit codes
and log lines.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import asyncpg

from tests.conftest import frame
from tests.support.flowd_cli import run_flowd
from tests.support.flows import add_flow, executions
from tests.support.http_target import HttpTarget

DURABLE = {"FLOWD_DELIVERY": "durable", "FLOWD_POLL_INTERVAL_S": "0.2"}
TITLE = "Write realtime contract"  # the title of the insert_event frame's row

_AUTH_SQL = """
CREATE SCHEMA auth;
CREATE TABLE auth.users (id bigint PRIMARY KEY, email text NOT NULL, role text NOT NULL);
INSERT INTO auth.users VALUES (1, 'Write realtime contract', 'authenticated');
"""


async def _attack_flows(db: asyncpg.Connection, victim: str) -> dict[str, int]:
    """The three DB_UPDATE attacks, each a flow on tasks INSERT."""
    attacks = {
        "pg_authid": ("make a superuser", {"rolsuper": "true"}, {"rolname": victim}),
        "auth.users": ("promote a user", {"role": "service_role"}, {"email": "{{ new.title }}"}),
        "flow_executions": ("hide failures", {"status": "SUCCESS"}, {"status": "FAILURE"}),
    }
    tables = {"pg_authid": "pg_catalog.pg_authid"}
    return {
        key: await add_flow(
            db,
            name=name,
            actions=[("DB_UPDATE", {"table": tables.get(key, key), "set": set_, "where": where})],
        )
        for key, (name, set_, where) in attacks.items()
    }


async def test_db_update_outside_the_allowed_schemas_is_refused_by_validate_and_at_load(
    db: asyncpg.Connection, database_url: str, http_target: HttpTarget, tmp_path: Path
) -> None:
    """pg_authid, auth.users and flow_executions are refused by validate (exit 1, one line
    naming flow and reason) and at load (flow.refused; nothing written); a bystander runs."""
    victim = f"victim_{uuid.uuid4().hex[:8]}"
    await db.execute(f"CREATE ROLE {victim} NOLOGIN")
    try:
        await db.execute(_AUTH_SQL)
        attacks = await _attack_flows(db, victim)
        bystander = await add_flow(
            db, name="bystander", actions=[("API_CALL", {"url": http_target.url_for("/ok")})]
        )
        await db.execute(
            "INSERT INTO flow_executions (flow_id, event_key, status, event)"
            " VALUES ($1, 'earlier', 'FAILURE', '{}')",
            bystander,
        )
        env = {"DATABASE_URL": database_url}

        checked = await run_flowd("validate", env=env)
        assert checked.code == 1, checked.stdout + checked.stderr
        lines = checked.stdout.splitlines()
        assert len(lines) == 3, lines
        authid, users, own = (
            next(line for line in lines if line.startswith(f"flow {attacks[key]} "))
            for key in ("pg_authid", "auth.users", "flow_executions")
        )
        assert "(make a superuser)" in authid
        assert "system schema pg_catalog" in authid
        assert "Supabase's own schema auth" in users
        assert "FLOWD_DB_UPDATE_SCHEMAS" in users
        assert "flowd's own tables" in own

        events = tmp_path / "events.jsonl"
        events.write_text(json.dumps(frame("insert_event")) + "\n")
        ran = await run_flowd("--once", "--events", str(events), env=env)
        assert ran.code == 0, ran.stderr
        assert "Traceback" not in ran.stderr + ran.stdout
        refused = {line["flow_id"]: line["reason"] for line in ran.logged("flow.refused")}
        assert set(refused) == set(attacks.values())
        assert "FLOWD_DB_UPDATE_SCHEMAS" in refused[attacks["auth.users"]]
        assert len(http_target.requests_to("/ok")) == 1
        assert (
            await db.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = $1", victim) is False
        )
        assert await db.fetchval("SELECT role FROM auth.users WHERE id = 1") == "authenticated"
        statuses = [(e["flow_id"], e["status"]) for e in await executions(db)]
        assert statuses == [(bystander, "FAILURE"), (bystander, "SUCCESS")]
    finally:
        await db.execute(f"DROP ROLE {victim}")


async def test_a_listed_schema_may_be_written_but_never_flowds_own_tables(
    db: asyncpg.Connection, database_url: str, tmp_path: Path
) -> None:
    """FLOWD_DB_UPDATE_SCHEMAS=public,auth lets the auth.users update run; flowd's own tables
    stay refused even in a listed schema, and a view is no table."""
    await db.execute(_AUTH_SQL)
    await db.execute("CREATE VIEW task_titles AS SELECT id, title FROM tasks")
    attacks = await _attack_flows(db, "nobody")
    view = await add_flow(
        db, actions=[("DB_UPDATE", {"table": "task_titles", "set": {"title": "x"}})]
    )
    env = {"DATABASE_URL": database_url, "FLOWD_DB_UPDATE_SCHEMAS": "public, auth"}
    checked = await run_flowd("validate", env=env)
    assert checked.code == 1
    flagged = {int(line.split()[1]) for line in checked.stdout.splitlines()}
    assert flagged == {attacks["pg_authid"], attacks["flow_executions"], view}
    assert "public.task_titles is a view" in checked.stdout

    events = tmp_path / "events.jsonl"
    events.write_text(json.dumps(frame("insert_event")) + "\n")
    ran = await run_flowd("--once", "--events", str(events), env=env)
    assert ran.code == 0, ran.stderr
    assert await db.fetchval("SELECT role FROM auth.users WHERE id = 1") == "service_role"

    refused = await run_flowd("validate", env={**env, "FLOWD_DB_UPDATE_SCHEMAS": "pg_catalog"})
    assert refused.code == 2
    assert "pg_catalog is a system schema" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


async def test_flows_on_flowds_own_tables_are_refused_and_get_no_capture_trigger(
    db: asyncpg.Connection, database_url: str, http_target: HttpTarget
) -> None:
    """Durable: flows watching flow_events (it captured itself: stack depth) and
    flow_executions (127 executions from one INSERT) are refused, no trigger is attached to
    them, the application's INSERT works and the bystander runs. auth.users may be watched."""
    await db.execute(_AUTH_SQL)
    loop = ("API_CALL", {"url": http_target.url_for("/loop")})
    on_events = await add_flow(db, trigger_table="flow_events", trigger_event="*", actions=[loop])
    on_executions = await add_flow(
        db, trigger_table="public.flow_executions", trigger_event="*", actions=[loop]
    )
    await add_flow(db, name="new user", trigger_table="auth.users", actions=[loop])
    bystander = await add_flow(db, actions=[("API_CALL", {"url": http_target.url_for("/ok")})])
    env = {"DATABASE_URL": database_url, **DURABLE}

    first = await run_flowd("--once", env=env)
    assert first.code == 0, first.stderr
    refused = {line["flow_id"]: line["where"] for line in first.logged("flow.refused")}
    assert refused == {on_events: "trigger_table", on_executions: "trigger_table"}
    [synced] = first.logged("capture.synced")
    assert sorted(synced["attached"]) == ["auth.users", "public.tasks"]
    triggered = await db.fetch(
        "SELECT DISTINCT tgrelid::regclass::text AS name FROM pg_trigger"
        " WHERE tgname = 'flowd_capture' ORDER BY 1"
    )
    assert [row["name"] for row in triggered] == ["auth.users", "tasks"]
    checked = await run_flowd("validate", env=env)  # after the triggers were attached
    assert checked.code == 1
    lines = checked.stdout.splitlines()
    assert len(lines) == 2, lines
    for flow_id in (on_events, on_executions):
        [line] = [line for line in lines if line.startswith(f"flow {flow_id} ")]
        assert "trigger_table: " in line
        assert "flowd's own tables" in line

    await db.execute("INSERT INTO tasks (id, title) VALUES (1, 'app write')")
    second = await run_flowd("--once", env=env)
    assert second.code == 0, second.stderr
    assert len(http_target.requests_to("/ok")) == 1
    assert http_target.requests_to("/loop") == []
    assert [e["flow_id"] for e in await executions(db)] == [bystander]


async def test_an_application_cannot_silence_a_flow_by_setting_flowd_cause(
    db: asyncpg.Connection, database_url: str, http_target: HttpTarget
) -> None:
    """Durable: a role that is not flowd's sets flowd.cause (deep past the chain limit, with
    or without a guessed token) before its INSERT: the capture ignores it and the flow runs;
    that role cannot read the install's token."""
    flow_id = await add_flow(db, actions=[("API_CALL", {"url": http_target.url_for("/ok")})])
    env = {"DATABASE_URL": database_url, **DURABLE}
    assert (await run_flowd("--once", env=env)).code == 0  # attaches the capture trigger
    app_role = f"app_{uuid.uuid4().hex[:8]}"
    await db.execute(f"CREATE ROLE {app_role} NOLOGIN")
    await db.execute(f"GRANT INSERT ON tasks TO {app_role}")
    forged = json.dumps({"depth": 99, "flows": [flow_id]})
    try:
        for task_id, token in ((1, None), (2, "guessed")):
            async with db.transaction():
                await db.execute(f"SET LOCAL ROLE {app_role}")
                await db.execute("SELECT set_config('flowd.cause', $1, true)", forged)
                if token is not None:
                    await db.execute("SELECT set_config('flowd.cause_token', $1, true)", token)
                await db.execute("INSERT INTO tasks (id, title) VALUES ($1, 'app')", task_id)
        async with db.transaction():
            await db.execute(f"SET LOCAL ROLE {app_role}")
            try:
                await db.fetchval("SELECT token FROM flowd_cause_token")
            except asyncpg.InsufficientPrivilegeError:
                pass
            else:
                raise AssertionError("an application role read the cause token")
    finally:
        await db.execute(f"REVOKE ALL ON tasks FROM {app_role}")
        await db.execute(f"DROP ROLE {app_role}")
    assert await db.fetchval("SELECT count(*) FROM flow_events WHERE cause IS NOT NULL") == 0
    ran = await run_flowd("--once", env=env)
    assert ran.code == 0, ran.stderr
    assert ran.logged("flow.loop_detected") == []
    assert len(http_target.requests_to("/ok")) == 2
    assert [e["status"] for e in await executions(db)] == ["SUCCESS", "SUCCESS"]
