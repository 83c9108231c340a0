"""Flows as files: `flowd flows export` and `flowd flows list` on flows made by SQL, the
export → insert into an empty database → export round trip, and `--flows` with YAML."""

from __future__ import annotations

import json
from pathlib import Path

import asyncpg

from flowd.flowfiles import read_flows
from tests.conftest import Databases, frame
from tests.support.flowd_cli import run_flowd
from tests.support.flows import add_flow, executions, insert_specs
from tests.support.http_target import HttpTarget

SLACK = "https://hooks.slack.com/services/{{ secrets.SLACK_PATH }}"
BODY = '{"text": "High priority: {{ new.title }}",\n "by": "{{ secrets.SLACK_USER }}"}\n'
SECRET = "T000/B000/never-exported"


async def _make_flows(db: asyncpg.Connection) -> None:
    """Two flows without a key of the same name, and one with a key, as SQL writes them."""
    for _ in range(2):
        await add_flow(
            db,
            name="Notify PM on High-Priority Task",
            rules=[("priority", "=", "High"), ("status", "!=", "done")],
            actions=[
                ("API_CALL", {"url": SLACK, "method": "POST", "body": BODY}),
                ("DB_UPDATE", {"table": "tasks", "field": "status", "value": "In Progress"}),
            ],
        )
    keyed = await add_flow(
        db,
        name="Email the owner",
        trigger_event="UPDATE",
        match="ANY",
        enabled=False,
        rules=[("status", "CHANGED_TO", "done")],
        actions=[("FUNCTION_CALL", {"function_name": "send-email", "params": {"to": "x"}})],
    )
    await db.execute("UPDATE flows SET key = 'email-owner' WHERE flow_id = $1", keyed)


def _env(database_url: str) -> dict[str, str]:
    return {"DATABASE_URL": database_url, "FLOWD_SECRET_SLACK_PATH": SECRET}


def _tree(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


async def test_export_writes_every_flow_to_a_directory_a_file_or_stdout(
    db: asyncpg.Connection, database_url: str, tmp_path: Path
) -> None:
    await _make_flows(db)
    to_dir = await run_flowd(
        "flows", "export", "-o", str(tmp_path / "flows"), env=_env(database_url)
    )
    assert to_dir.code == 0, to_dir.stderr
    keys = ["email-owner", "notify-pm-on-high-priority-task", "notify-pm-on-high-priority-task-2"]
    assert sorted(_tree(tmp_path / "flows")) == sorted(f"{key}.yaml" for key in keys)
    assert [line for line in to_dir.stderr.splitlines() if "has no key" in line] == [
        f"flowd: flow {n} (Notify PM on High-Priority Task) has no key: exported as {key}"
        " (the database keeps none until one is set)"
        for n, key in ((1, keys[1]), (2, keys[2]))
    ]
    assert "3 flow(s) exported" in to_dir.stderr
    assert await db.fetchval("SELECT count(*) FROM flows WHERE key IS NULL") == 2
    notify = (tmp_path / "flows" / f"{keys[1]}.yaml").read_text()
    assert '    body: |\n      {"text": "High priority: {{ new.title }}",\n' in notify
    assert "url: https://hooks.slack.com/services/{{ secrets.SLACK_PATH }}\n" in notify
    assert SECRET not in notify

    to_yaml = await run_flowd(
        "flows", "export", "-o", str(tmp_path / "all.yaml"), env=_env(database_url)
    )
    to_json = await run_flowd(
        "flows", "export", "-o", str(tmp_path / "all.json"), env=_env(database_url)
    )
    to_stdout = await run_flowd("flows", "export", env=_env(database_url))
    as_json = await run_flowd("flows", "export", "--format", "json", env=_env(database_url))
    assert (to_yaml.code, to_json.code, to_stdout.code, as_json.code) == (0, 0, 0, 0)
    listed = read_flows(tmp_path / "all.yaml").flows
    assert [spec.key for spec in listed] == keys
    assert listed == read_flows(tmp_path / "all.json").flows
    assert listed == sorted(read_flows(tmp_path / "flows").flows, key=lambda spec: spec.key)
    assert to_stdout.stdout == (tmp_path / "all.yaml").read_text()
    assert as_json.stdout == (tmp_path / "all.json").read_text()
    assert json.loads(as_json.stdout)[0]["is_enabled"] is False
    mismatch = await run_flowd(
        "flows",
        "export",
        "--format",
        "json",
        "-o",
        str(tmp_path / "x.yaml"),
        env=_env(database_url),
    )
    assert mismatch.code == 2
    assert mismatch.stderr.strip() == "flowd: --format json does not go with x.yaml"
    assert not (tmp_path / "x.yaml").exists()


async def test_export_insert_into_an_empty_database_export_gives_the_same_bytes(
    db: asyncpg.Connection, database_url: str, databases: Databases, tmp_path: Path
) -> None:
    await _make_flows(db)
    for target in ("first", "first.json"):
        exported = await run_flowd(
            "flows", "export", "-o", str(tmp_path / target), env=_env(database_url)
        )
        assert exported.code == 0, exported.stderr
    empty = await databases.clone()
    try:
        other = databases.url(empty)
        connection = await asyncpg.connect(other)
        try:
            await insert_specs(connection, read_flows(tmp_path / "first").flows)
        finally:
            await connection.close()
        for target in ("second", "second.json"):
            again = await run_flowd(
                "flows", "export", "-o", str(tmp_path / target), env=_env(other)
            )
            assert again.code == 0, again.stderr
            assert "has no key" not in again.stderr  # the keys were written this time
    finally:
        await databases.drop(empty)
    assert _tree(tmp_path / "second") == _tree(tmp_path / "first")
    assert (tmp_path / "second.json").read_bytes() == (tmp_path / "first.json").read_bytes()


async def test_list_shows_each_flow_in_a_line_with_its_last_day(
    db: asyncpg.Connection, database_url: str
) -> None:
    await _make_flows(db)
    for key, status, age in (("a", "SUCCESS", "1 hour"), ("b", "FAILURE", "2 hours"),
                             ("c", "FAILURE", "2 days")):  # fmt: skip
        await db.execute(
            "INSERT INTO flow_executions (flow_id, event_key, status, triggered_at, event)"
            " VALUES (1, $1, $2, now() - $3::text::interval, '{}')",
            key,
            status,
            age,
        )
    result = await run_flowd("flows", "list", env={"DATABASE_URL": database_url})
    assert result.code == 0, result.stderr
    header, *lines = result.stdout.splitlines()
    assert header.split() == [
        "KEY",
        "NAME",
        "TABLE",
        "EVENT",
        "ENABLED",
        "RULES",
        "RUNS_24H",
        "FAILED_24H",
    ]
    assert [line.split("  ")[0].strip() for line in lines] == ["(id 1)", "(id 2)", "email-owner"]
    words = [" ".join(line.split()) for line in lines]
    assert words[0] == (
        "(id 1) Notify PM on High-Priority Task tasks INSERT yes"
        " priority = High AND status != done 2 1"
    )
    assert words[1].endswith(" 0 0")
    assert words[2] == "email-owner Email the owner tasks UPDATE no status CHANGED_TO done 0 0"


async def test_once_runs_a_yaml_flows_file_under_the_database_flows_of_its_keys(
    db: asyncpg.Connection, database_url: str, http_target: HttpTarget, tmp_path: Path
) -> None:
    """--flows FILE.yaml: keyed flows run (and are recorded) as the database's flow of their
    key; a key the database lacks is one line, exit 2."""
    flow = (
        "key: notify-pm\nname: Notify PM\ntrigger_table: tasks\ntrigger_event: INSERT\n"
        "rules:\n- {field: priority, operator: '=', value: High}\n"
        f"actions:\n- type: API_CALL\n  config:\n    url: {http_target.url}/hook\n"
        "    body:\n      text: 'High: {{ new.title }}'\n"
    )
    (tmp_path / "flows.yaml").write_text(flow)
    ids = await insert_specs(db, read_flows(tmp_path / "flows.yaml").flows)
    event = frame("insert_event")["payload"]["data"]
    event["record"] = {**event["record"], "title": "Ship", "priority": "High"}
    (tmp_path / "e.jsonl").write_text(json.dumps(event) + "\n")
    args = (
        "--once",
        "--flows",
        str(tmp_path / "flows.yaml"),
        "--events",
        str(tmp_path / "e.jsonl"),
    )
    ran = await run_flowd(*args, env={"DATABASE_URL": database_url})
    assert ran.code == 0, ran.stderr
    [request] = http_target.requests_to("/hook")
    assert request.json() == {"text": "High: Ship"}
    assert [row["flow_id"] for row in await executions(db)] == [ids["notify-pm"]]

    dry = await run_flowd("--once", "--dry-run", *args[1:])
    assert json.loads(dry.stdout)["keys"] == ["notify-pm"]
    (tmp_path / "flows.yaml").write_text(flow.replace("key: notify-pm", "key: elsewhere"))
    missing = await run_flowd(*args, env={"DATABASE_URL": database_url})
    assert missing.code == 2
    [line] = missing.stderr.strip().splitlines()
    assert "flow key(s) elsewhere are not in the database" in line


async def test_validate_reads_a_directory_and_names_file_line_flow_and_field(
    tmp_path: Path,
) -> None:
    (tmp_path / "a.yaml").write_text("key: good\nname: g\ntrigger_table: tasks\n")
    (tmp_path / "b.yaml").write_text(
        "key: bad\nname: b\ntrigger_table: tasks\nrules:\n- {field: x, operater: '='}\n"
    )
    checked = await run_flowd("validate", "--flows", str(tmp_path))
    assert checked.code == 1
    assert checked.stdout.splitlines() == [
        f"{tmp_path}/b.yaml:5:14: flow bad: rules[0].operater: unknown field 'operater'"
        " (did you mean 'operator'?)"
    ]
    assert "2 flow(s) checked, 1 with problems" in checked.stderr
    (tmp_path / "c.yaml").write_text("key: [unclosed\n")
    broken = await run_flowd("validate", "--flows", str(tmp_path))
    assert broken.code == 2
    assert "Traceback" not in broken.stderr
    assert broken.stderr.strip().splitlines() == [
        f"flowd: {tmp_path}/c.yaml:2:1: YAML syntax error:"
        " expected ',' or ']', but got '<stream end>'"
    ]


async def test_the_shipped_example_flows_validate_and_notify_pm_fires(
    db: asyncpg.Connection, database_url: str, http_target: HttpTarget, tmp_path: Path
) -> None:
    """examples/flows validate against a database with a tasks table; README's Notify PM,
    from its YAML file, sends its request and sets the status."""
    examples = Path(__file__).parents[2] / "examples" / "flows"
    env = {
        "DATABASE_URL": database_url,
        "SUPABASE_URL": http_target.url,
        "SUPABASE_SERVICE_ROLE_KEY": "service-role-key-for-tests",
    }
    await db.execute("ALTER TABLE tasks REPLICA IDENTITY FULL")  # the CHANGED_TO flow needs it
    checked = await run_flowd("validate", "--flows", str(examples), env=env)
    assert checked.code == 0, checked.stdout + checked.stderr
    notify = (examples / "notify-pm.yaml").read_text()
    local = notify.replace("https://hooks.slack.com", http_target.url)
    assert local != notify
    (tmp_path / "notify-pm.yaml").write_text(local)
    await insert_specs(db, read_flows(tmp_path / "notify-pm.yaml").flows)
    await db.execute(
        "INSERT INTO tasks (id, title, priority, status) VALUES (5, 'Ship', 'High', 'open')"
    )
    event = frame("insert_event")["payload"]["data"]
    event["record"] = {**event["record"], "id": 5, "title": "Ship", "priority": "High"}
    (tmp_path / "e.jsonl").write_text(json.dumps(event) + "\n")
    env = {"DATABASE_URL": database_url, "FLOWD_SECRET_SLACK_PATH": "T000/B000/XXXX"}
    ran = await run_flowd("--once", "--events", str(tmp_path / "e.jsonl"), env=env)
    assert ran.code == 0, ran.stderr
    [request] = http_target.requests_to("/services/T000/B000/XXXX")
    assert request.json() == {"text": "High priority: Ship"}
    assert await db.fetchval("SELECT status FROM tasks WHERE id = 5") == "In Progress"


async def test_enable_and_disable_switch_a_flow_by_its_key_or_id(
    db: asyncpg.Connection, database_url: str
) -> None:
    keyed = await add_flow(db, name="Notify PM")
    await db.execute("UPDATE flows SET key = 'notify-pm' WHERE flow_id = $1", keyed)
    keyless = await add_flow(db, name="No key yet", enabled=False)
    env = {"DATABASE_URL": database_url}

    off = await run_flowd("flows", "disable", "notify-pm", env=env)
    again = await run_flowd("flows", "disable", "notify-pm", env=env)
    on = await run_flowd("flows", "enable", str(keyless), env=env)
    unknown = await run_flowd("flows", "enable", "no-such-flow", env=env)

    assert (off.code, again.code, on.code) == (0, 0, 0), off.stderr + again.stderr + on.stderr
    assert "flowd: flow notify-pm (Notify PM) disabled" in off.stdout
    assert "was already disabled" in again.stdout
    assert f"flowd: flow {keyless} (No key yet) enabled" in on.stdout
    enabled = {r["flow_id"]: r["is_enabled"] for r in await db.fetch("SELECT * FROM flows")}
    assert enabled == {keyed: False, keyless: True}
    assert unknown.code == 1
    assert unknown.stderr.strip().splitlines() == ["flowd: no flow with key or id 'no-such-flow'"]
