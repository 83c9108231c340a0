"""`flowd migrate`, `flowd validate`, `--dry-run`, and the exit codes of every command."""

from __future__ import annotations

import json
from pathlib import Path

import asyncpg

from flowd.migrate import load_migrations, own_objects
from tests.conftest import Databases, frame
from tests.support.flowd_cli import run_flowd
from tests.support.flows import add_flow, executions
from tests.support.http_target import HttpTarget

EXAMPLES = Path(__file__).parents[2] / "examples"


async def test_migrate_applies_once_and_a_second_run_changes_nothing(
    databases: Databases,
) -> None:
    """migrate creates flowd's tables in FLOWD_SCHEMA, records itself, and is idempotent;
    the tables it creates are exactly those flowd counts as its own (`own_objects`)."""
    files = len(load_migrations())
    name = await databases.clone()
    try:
        url = databases.url(name)
        env = {"DATABASE_URL": url, "FLOWD_SCHEMA": "automation"}
        first = await run_flowd("migrate", env=env)
        assert first.code == 0, first.stderr
        assert f"{files} migration(s) applied" in first.stdout
        second = await run_flowd("migrate", env=env)
        assert second.code == 0, second.stderr
        assert "0 migration(s) applied" in second.stdout
        connection = await asyncpg.connect(url)
        try:
            tables = await connection.fetch(
                "SELECT c.relname, c.relrowsecurity FROM pg_class c"
                " JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE n.nspname = 'automation' AND c.relkind IN ('r', 'p') ORDER BY 1"
            )
            assert {t["relname"] for t in tables} == own_objects().tables
            assert {"flows", "flow_executions", "flow_events", "flowd_migrations"} <= {
                t["relname"] for t in tables
            }
            assert all(t["relrowsecurity"] for t in tables)
            functions = await connection.fetch(
                "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
                " WHERE n.nspname = 'automation'"
            )
            assert {f["proname"] for f in functions} == own_objects().functions
            assert (
                await connection.fetchval("SELECT count(*) FROM automation.flowd_migrations")
                == files
            )
        finally:
            await connection.close()
    finally:
        await databases.drop(name)


async def test_validate_accepts_good_flows(db: asyncpg.Connection, database_url: str) -> None:
    """validate exits 0 when every flow can work."""
    await add_flow(
        db,
        rules=[("priority", "IN", "high, urgent"), ("estimate", ">", "2")],
        actions=[
            ("API_CALL", {"url": "https://hooks.example/x", "body": "{{ new.title }}"}),
            ("DB_UPDATE", {"table": "tasks", "field": "status", "value": "In Progress"}),
        ],
    )
    result = await run_flowd("validate", env={"DATABASE_URL": database_url})
    assert result.code == 0, result.stdout + result.stderr
    assert "1 flow(s) checked, 0 with problems" in result.stderr


async def test_validate_lists_every_problem(db: asyncpg.Connection, database_url: str) -> None:
    """validate names each broken flow and why, and exits 1."""
    hook = ("API_CALL", {"url": "https://hooks.example/x"})
    bad = {
        "operator": await add_flow(db, rules=[("priority", "LIKE", "h%")], actions=[hook]),
        "regex": await add_flow(db, rules=[("title", "MATCHES", "(unclosed")], actions=[hook]),
        "in_list": await add_flow(db, rules=[("priority", "IN", '["high", ')], actions=[hook]),
        "action_type": await add_flow(db, actions=[("SEND_FAX", {"to": "1"})]),
        "table": await add_flow(db, actions=[("DB_UPDATE", {"table": "taskz", "set": {"a": "1"}})]),
        "column": await add_flow(
            db, actions=[("DB_UPDATE", {"table": "tasks", "set": {"colour": "red"}})]
        ),
        "injection": await add_flow(
            db,
            actions=[
                (
                    "DB_UPDATE",
                    {"table": 'tasks"; drop table x; --', "field": "status", "value": "x"},
                )
            ],
        ),
        "value_type": await add_flow(db, rules=[("estimate", ">", "lots")], actions=[hook]),
        "identity": await add_flow(
            db, trigger_event="UPDATE", rules=[("status", "CHANGED", None)], actions=[hook]
        ),
        "publication": await add_flow(db, trigger_table="projects", actions=[hook]),
        "trigger_table": await add_flow(db, trigger_table="nowhere", actions=[hook]),
        "function": await add_flow(db, actions=[("FUNCTION_CALL", {"function_name": "../etc"})]),
        "template": await add_flow(db, actions=[("API_CALL", {"url": "https://x/{{ new.id "})]),
    }
    result = await run_flowd("validate", env={"DATABASE_URL": database_url})
    assert result.code == 1
    lines = result.stdout.splitlines()
    for problem, flow_id in bad.items():
        assert any(line.startswith(f"flow {flow_id} ") for line in lines), problem
    text = result.stdout
    assert "REPLICA IDENTITY FULL" in text
    assert "ALTER PUBLICATION supabase_realtime ADD TABLE" in text
    assert 'table public.tasks"; drop table x; -- does not exist' in text
    assert await asyncpg_table_exists(db, "tasks")


async def asyncpg_table_exists(db: asyncpg.Connection, name: str) -> bool:
    return bool(await db.fetchval("SELECT to_regclass($1) IS NOT NULL", name))


async def test_dry_run_with_a_flows_file_needs_no_database(tmp_path: Path) -> None:
    """--dry-run --flows prints one line of matched flow ids per event, without DATABASE_URL."""
    flows = [
        {"flow_id": 2, "name": "any change", "trigger_table": "public.tasks", "trigger_event": "*"},
        {
            "flow_id": 1,
            "name": "high",
            "trigger_table": "tasks",
            "trigger_event": "INSERT",
            "rules": [{"field": "priority", "operator": "=", "value": "high"}],
            "actions": [{"type": "API_CALL", "config": {"url": "http://127.0.0.1:9/never"}}],
        },
        {"flow_id": 3, "name": "off", "trigger_table": "tasks", "is_enabled": False},
    ]
    (tmp_path / "flows.json").write_text(json.dumps({"flows": flows}))
    events = [frame("insert_event"), frame("delete_event")]
    (tmp_path / "events.jsonl").write_text(
        "\n".join(json.dumps(e) for e in events) + "\nnot json\n"
    )
    result = await run_flowd(
        "--once",
        "--dry-run",
        "--flows",
        str(tmp_path / "flows.json"),
        "--events",
        str(tmp_path / "events.jsonl"),
    )
    assert result.code == 1
    assert [json.loads(line) for line in result.stdout.splitlines()] == [
        {"line": 1, "flows": [1, 2]},
        {"line": 2, "flows": [2]},
    ]
    assert [record["line"] for record in result.logged("event.bad_line")] == [3]


async def test_dry_run_against_the_database_has_no_side_effect(
    db: asyncpg.Connection, database_url: str, tmp_path: Path
) -> None:
    """--dry-run classifies with the database's flows but runs and records nothing."""
    flow_id = await add_flow(db, actions=[("API_CALL", {"url": "http://127.0.0.1:9/never"})])
    (tmp_path / "e.jsonl").write_text(json.dumps(frame("insert_event")) + "\n")
    result = await run_flowd(
        "--once",
        "--dry-run",
        "--events",
        str(tmp_path / "e.jsonl"),
        env={"DATABASE_URL": database_url},
    )
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout) == {"line": 1, "flows": [flow_id]}
    assert await executions(db) == []


async def test_examples_replay_offline() -> None:
    """README's first command: the shipped examples replay with --dry-run and no database."""
    result = await run_flowd(
        "--once",
        "--dry-run",
        "--flows",
        str(EXAMPLES / "flows.json"),
        "--events",
        str(EXAMPLES / "events.jsonl"),
    )
    assert result.code == 0, result.stderr
    matched = [json.loads(line)["flows"] for line in result.stdout.splitlines()]
    assert matched == [[1], [], [2]]
    assert "3 event(s); 2 matched a flow (dry run: nothing ran)" in result.stderr


async def test_missing_database_url_exits_2_with_one_line(tmp_path: Path) -> None:
    """Without DATABASE_URL, --once exits 2 and says what to set, no traceback."""
    (tmp_path / "e.jsonl").write_text("")
    result = await run_flowd("--once", "--events", str(tmp_path / "e.jsonl"))
    assert result.code == 2
    assert result.stderr.strip().count("\n") == 0
    assert "DATABASE_URL is not set" in result.stderr
    assert "Traceback" not in result.stderr


async def test_unreachable_database_exits_2(tmp_path: Path) -> None:
    """A database that cannot be reached: exit 2 with one line naming what to check."""
    result = await run_flowd("migrate", env={"DATABASE_URL": "postgresql://u:pw@127.0.0.1:9/db"})
    assert result.code == 2
    assert result.stderr.strip().count("\n") == 0
    assert "cannot reach the database" in result.stderr
    assert "Traceback" not in result.stderr


async def test_bad_flags_and_settings_exit_2() -> None:
    """Bad flags, invalid and misspelled settings each exit 2 with one line."""
    cases = [
        ((), {"FLOWD_CONCURRENCY": "many"}, "FLOWD_CONCURRENCY"),
        ((), {"FLOWD_CONCURENCY": "4"}, "did you mean FLOWD_CONCURRENCY"),
        (("--once",), {}, "--once needs --events FILE or --failed (or FLOWD_DELIVERY=durable"),
        (("--once", "--events", "x", "--failed"), {}, "either --events FILE or --failed, not both"),
        (("--once", "--dry-run"), {}, "--dry-run, --flows and --force go with --events FILE"),
        (("--once", "--failed", "--since", "yesterday"), {}, "not an ISO 8601 instant"),
        (("--bogus",), {}, "unrecognized arguments"),
        (("--dry-run",), {}, "--dry-run needs --once"),
        (("run",), {"DATABASE_URL": "postgresql://x@127.0.0.1:9/x"}, "SUPABASE_URL"),
        (("run",), {"FLOWD_DELIVERY": "sometimes"}, "FLOWD_DELIVERY"),
        (
            ("--once", "--events", "/nonexistent/e.jsonl"),
            {"DATABASE_URL": "postgresql://x@127.0.0.1:9/x"},
            "",
        ),
    ]
    for args, env, message in cases:
        result = await run_flowd(*args, env=env)
        assert result.code == 2, (args, result.stderr)
        assert result.stderr.strip().count("\n") == 0, result.stderr
        assert message in result.stderr, (args, result.stderr)


async def test_missing_events_file_exits_2(database_url: str) -> None:
    """An events file that cannot be read is a start-up error."""
    result = await run_flowd(
        "--once", "--events", "/nonexistent/e.jsonl", env={"DATABASE_URL": database_url}
    )
    assert result.code == 2
    assert "cannot read events file" in result.stderr


async def test_unmigrated_database_exits_2(databases: Databases, tmp_path: Path) -> None:
    """Replaying into a database without flowd's tables says to run `flowd migrate`."""
    (tmp_path / "e.jsonl").write_text("")
    result = await run_flowd(
        "--once",
        "--events",
        str(tmp_path / "e.jsonl"),
        env={"DATABASE_URL": databases.url("postgres"), "FLOWD_SCHEMA": "nothing_here"},
    )
    assert result.code == 2
    assert "run `flowd migrate` first" in result.stderr


async def test_readme_seed_flow_sql_works_end_to_end(
    db: asyncpg.Connection, database_url: str, http_target: HttpTarget, tmp_path: Path
) -> None:
    """README's SQL creates the seed flow; it validates, and a replay runs both actions."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    sql = next(
        block.split("```", 1)[0]
        for block in readme.split("```sql")[1:]
        if "Notify PM on High-Priority Task" in block
    )
    await db.execute(sql)
    validated = await run_flowd("validate", env={"DATABASE_URL": database_url})
    assert validated.code == 0, validated.stdout + validated.stderr
    # Point the Slack webhook at a local target; everything else is as README wrote it.
    await db.execute(
        "UPDATE actions SET config = jsonb_set(config, '{url}', to_jsonb($1::text))"
        " WHERE type = 'API_CALL'",
        http_target.url + "/services/{{ secrets.SLACK_PATH }}",
    )
    await db.execute(
        "INSERT INTO tasks (id, title, priority, status) VALUES (5, 'Ship', 'High', 'open')"
    )
    event = frame("insert_event")["payload"]["data"]
    event["record"] = {**event["record"], "id": 5, "title": "Ship", "priority": "High"}
    (tmp_path / "e.jsonl").write_text(json.dumps(event) + "\n")
    result = await run_flowd(
        "--once",
        "--events",
        str(tmp_path / "e.jsonl"),
        env={"DATABASE_URL": database_url, "FLOWD_SECRET_SLACK_PATH": "T000/B000/XXXX"},
    )
    assert result.code == 0, result.stderr
    [request] = http_target.requests_to("/services/T000/B000/XXXX")
    assert request.json() == {"text": "High priority: Ship"}
    assert await db.fetchval("SELECT status FROM tasks WHERE id = 5") == "In Progress"
    [execution] = await executions(db)
    assert execution["status"] == "SUCCESS"
