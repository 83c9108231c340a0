"""`flowd --once --events`: events replayed through classify → act → record, end to end.

Every test drives the real `flowd` command against a real database and real HTTP
targets, and asserts what a user would see: requests received, rows, exit codes, logs.
"""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import asyncpg

from tests.conftest import frame
from tests.support.flowd_cli import RunningFlowd, run_flowd
from tests.support.flows import add_flow, executions
from tests.support.http_target import HttpTarget, Reply

INSERT_ROW = (
    "INSERT INTO tasks (id, title, priority, status, estimate, tags, meta, done)"
    " VALUES (1, 'Write realtime contract', 'high', 'open', 3.50, '{backend,realtime}',"
    " '{\"points\": 5}', false)"
)


def events_file(tmp_path: Path, *events: str | dict[str, Any]) -> str:
    """A JSON-lines file of contract frames (by name) or literal events/lines."""
    path = tmp_path / "events.jsonl"
    lines = []
    for item in events:
        if isinstance(item, dict):
            lines.append(json.dumps(item))
        elif item.endswith("_event") or "_event_" in item:
            lines.append(json.dumps(frame(item)))
        else:
            lines.append(item)
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def webhook(target: HttpTarget, path: str = "/hook", **extra: Any) -> tuple[str, dict[str, Any]]:
    return ("API_CALL", {"url": target.url_for(path), "method": "POST", **extra})


async def replay(database_url: str, events: str, *flags: str, **env: str) -> Any:
    return await run_flowd(
        "--once", "--events", events, *flags, env={"DATABASE_URL": database_url, **env}
    )


async def test_seed_flow_calls_webhook_updates_row_and_records(
    db: asyncpg.Connection, database_url: str, http_target: HttpTarget, tmp_path: Path
) -> None:
    """The seed flow on an INSERT frame: webhook called, row updated, one SUCCESS execution."""
    await db.execute(INSERT_ROW)
    flow_id = await add_flow(
        db,
        name="Notify PM on High-Priority Task",
        rules=[("priority", "=", "high")],
        actions=[
            webhook(http_target, "/slack", body='{"text": "High priority task: {{ new.title }}"}'),
            ("DB_UPDATE", {"table": "tasks", "field": "status", "value": "In Progress"}),
        ],
    )
    result = await replay(database_url, events_file(tmp_path, "insert_event"))
    assert result.code == 0, result.stderr
    [request] = http_target.requests_to("/slack")
    assert request.json() == {"text": "High priority task: Write realtime contract"}
    assert request.headers["content-type"] == "application/json"
    assert await db.fetchval("SELECT status FROM tasks WHERE id = 1") == "In Progress"
    [execution] = await executions(db)
    assert execution["flow_id"] == flow_id
    assert execution["status"] == "SUCCESS"
    assert execution["finished_at"] is not None
    assert execution["event"]["record"]["title"] == "Write realtime contract"
    assert [a["rows_written"] for a in execution["actions"]] == [None, 1]
    assert [a["http_status"] for a in execution["actions"]] == [200, None]
    assert "matched INSERT on public.tasks" in execution["log"]
    assert "1 SUCCESS" in result.stderr
    [executed] = result.logged("flow.executed")
    assert executed["flow_id"] == flow_id
    assert executed["execution_id"] == execution["execution_id"]
    assert executed["table"] == "public.tasks"
    assert executed["event_key"] == execution["event_key"]


async def test_events_that_match_nothing_are_not_stored(
    db: asyncpg.Connection, database_url: str, http_target: HttpTarget, tmp_path: Path
) -> None:
    """An event no flow matches runs nothing and leaves no execution row."""
    await add_flow(db, rules=[("priority", "=", "low")], actions=[webhook(http_target)])
    result = await replay(database_url, events_file(tmp_path, "insert_event"))
    assert result.code == 0, result.stderr
    assert http_target.requests == []
    assert await executions(db) == []


async def test_default_body_is_the_supabase_webhook_payload(
    db: asyncpg.Connection, database_url: str, http_target: HttpTarget, tmp_path: Path
) -> None:
    """Without a body, API_CALL sends type/schema/table/record/old_record plus the flow."""
    flow_id = await add_flow(
        db, name="audit", trigger_event="DELETE", actions=[webhook(http_target)]
    )
    result = await replay(database_url, events_file(tmp_path, "delete_event"))
    assert result.code == 0, result.stderr
    [request] = http_target.requests_to("/hook")
    body = request.json()
    assert body["type"] == "DELETE"
    assert (body["schema"], body["table"]) == ("public", "tasks")
    assert body["record"] is None
    assert body["old_record"]["title"] == "Write realtime contract"
    assert body["flow"] == {"id": flow_id, "name": "audit"}


async def test_object_body_and_headers_are_rendered(
    db: asyncpg.Connection, database_url: str, http_target: HttpTarget, tmp_path: Path
) -> None:
    """An object body has each string leaf rendered; header values are templates too."""
    await add_flow(
        db,
        trigger_event="UPDATE",
        rules=[("status", "CHANGED_TO", "done")],
        actions=[
            webhook(
                http_target,
                method="PUT",
                headers={"X-Task": "{{ new.id }}"},
                body={"task": "{{ new.title }}", "was": "{{ old.status }}", "n": 3},
            )
        ],
    )
    result = await replay(database_url, events_file(tmp_path, "update_event"))
    assert result.code == 0, result.stderr
    [request] = http_target.requests_to("/hook")
    assert request.method == "PUT"
    assert request.headers["x-task"] == "1"
    assert request.json() == {"task": "Write realtime contract", "was": "in_progress", "n": 3}


async def test_function_call_invokes_the_edge_function(
    db: asyncpg.Connection, database_url: str, http_target: HttpTarget, tmp_path: Path
) -> None:
    """FUNCTION_CALL posts rendered params to {SUPABASE_URL}/functions/v1/<name> with the key."""
    await add_flow(
        db,
        actions=[
            (
                "FUNCTION_CALL",
                {
                    "function_name": "send-email",
                    "params": {"to": "pm@example.com", "task": "{{ new.title }}"},
                },
            )
        ],
    )
    result = await replay(
        database_url,
        events_file(tmp_path, "insert_event"),
        SUPABASE_URL=http_target.url,
        SUPABASE_SERVICE_ROLE_KEY="service-role-key-for-tests",
    )
    assert result.code == 0, result.stderr
    [request] = http_target.requests_to("/functions/v1/send-email")
    assert request.method == "POST"
    assert request.headers["authorization"] == "Bearer service-role-key-for-tests"
    assert request.json() == {"to": "pm@example.com", "task": "Write realtime contract"}
    assert "service-role-key-for-tests" not in result.stdout + result.stderr


async def test_db_update_set_and_where_forms(
    db: asyncpg.Connection, database_url: str, tmp_path: Path
) -> None:
    """`set` with templates updates the triggering row; `where` updates another table's row."""
    await db.execute(INSERT_ROW)
    await db.execute("INSERT INTO projects (id, name) VALUES (7, 'flowd')")
    await add_flow(
        db,
        actions=[
            (
                "DB_UPDATE",
                {
                    "table": "tasks",
                    "set": {"status": "triaged", "estimate": "{{ new.estimate * 2 }}"},
                },
            ),
            (
                "DB_UPDATE",
                {"table": "projects", "set": {"last_task": "{{ new.id }}"}, "where": {"id": "7"}},
            ),
        ],
    )
    result = await replay(database_url, events_file(tmp_path, "insert_event"))
    assert result.code == 0, result.stderr
    row = await db.fetchrow("SELECT status, estimate::text FROM tasks WHERE id = 1")
    assert row is not None
    assert (row["status"], row["estimate"]) == ("triaged", "7.0")
    assert await db.fetchval("SELECT last_task FROM projects WHERE id = 7") == 1


async def test_db_update_that_finds_the_row_right_writes_nothing(
    db: asyncpg.Connection, database_url: str, tmp_path: Path
) -> None:
    """Loop safety: IS DISTINCT FROM leaves a row that already has the value untouched."""
    await db.execute(INSERT_ROW.replace("'open'", "'In Progress'"))
    before = await db.fetchval("SELECT xmin::text FROM tasks WHERE id = 1")
    await add_flow(
        db, actions=[("DB_UPDATE", {"table": "tasks", "field": "status", "value": "In Progress"})]
    )
    result = await replay(database_url, events_file(tmp_path, "insert_event"))
    assert result.code == 0, result.stderr
    [execution] = await executions(db)
    assert execution["status"] == "SUCCESS"
    assert execution["actions"][0]["rows_written"] == 0
    assert await db.fetchval("SELECT xmin::text FROM tasks WHERE id = 1") == before


async def test_server_error_is_retried_to_the_limit(
    db: asyncpg.Connection, database_url: str, http_target: HttpTarget, tmp_path: Path
) -> None:
    """A 500 is retried up to max_attempts, then the execution is FAILURE and later actions skip."""
    http_target.script("/hook", *[Reply(500, "boom")] * 5)
    await add_flow(
        db,
        actions=[webhook(http_target, max_attempts=3), webhook(http_target, "/never")],
    )
    result = await replay(database_url, events_file(tmp_path, "insert_event"))
    assert result.code == 1
    assert len(http_target.requests_to("/hook")) == 3
    assert http_target.requests_to("/never") == []
    [execution] = await executions(db)
    assert execution["status"] == "FAILURE"
    [action] = execution["actions"]
    assert (action["attempts"], action["http_status"]) == (3, 500)
    assert "HTTP 500: boom" in action["error"]
    assert "skipped 1 later action" in execution["log"]
    assert len(result.logged("action.retry")) == 2


async def test_default_max_attempts_comes_from_the_environment(
    db: asyncpg.Connection, database_url: str, http_target: HttpTarget, tmp_path: Path
) -> None:
    """FLOWD_MAX_ATTEMPTS bounds the tries of an action without its own max_attempts."""
    http_target.script("/hook", *[Reply(503)] * 10)
    await add_flow(db, actions=[webhook(http_target)])
    result = await replay(
        database_url, events_file(tmp_path, "insert_event"), FLOWD_MAX_ATTEMPTS="4"
    )
    assert result.code == 1
    assert len(http_target.requests_to("/hook")) == 4


async def test_too_many_requests_honours_retry_after(
    db: asyncpg.Connection, database_url: str, http_target: HttpTarget, tmp_path: Path
) -> None:
    """A 429 with Retry-After: 1 is retried no sooner than a second later, then succeeds."""
    http_target.script("/hook", Reply(429, headers={"Retry-After": "1"}))
    await add_flow(db, actions=[webhook(http_target)])
    result = await replay(database_url, events_file(tmp_path, "insert_event"))
    assert result.code == 0, result.stderr
    first, second = http_target.requests_to("/hook")
    assert second.received_at - first.received_at >= 0.95
    [retry] = result.logged("action.retry")
    assert retry["retry_in_s"] == 1.0
    [execution] = await executions(db)
    assert execution["actions"][0]["attempts"] == 2


async def test_client_error_is_not_retried(
    db: asyncpg.Connection, database_url: str, http_target: HttpTarget, tmp_path: Path
) -> None:
    """A 400 fails the action at once: one request, FAILURE, exit 1."""
    http_target.script("/hook", Reply(400, "bad request"))
    await add_flow(db, actions=[webhook(http_target)])
    result = await replay(database_url, events_file(tmp_path, "insert_event"))
    assert result.code == 1
    assert len(http_target.requests_to("/hook")) == 1
    [execution] = await executions(db)
    assert execution["status"] == "FAILURE"
    assert execution["actions"][0]["http_status"] == 400


async def test_timeout_is_retried(
    db: asyncpg.Connection, database_url: str, http_target: HttpTarget, tmp_path: Path
) -> None:
    """A target that hangs past timeout_s is tried again; the second, prompt answer succeeds."""
    http_target.script("/hook", Reply(200, delay_s=5))
    await add_flow(db, actions=[webhook(http_target, timeout_s=0.3)])
    result = await replay(database_url, events_file(tmp_path, "insert_event"))
    assert result.code == 0, result.stderr
    assert len(http_target.requests_to("/hook")) == 2
    [retry] = result.logged("action.retry")
    assert "timed out" in retry["error"]


async def test_unreachable_endpoint_fails_after_retries(
    db: asyncpg.Connection, database_url: str, tmp_path: Path
) -> None:
    """A refused connection is retried, then recorded as FAILURE with the reason."""
    await add_flow(db, actions=[("API_CALL", {"url": "http://127.0.0.1:9/x", "max_attempts": 2})])
    result = await replay(database_url, events_file(tmp_path, "insert_event"))
    assert result.code == 1
    [execution] = await executions(db)
    assert execution["actions"][0]["attempts"] == 2
    assert "connection failed" in execution["actions"][0]["error"]


async def test_second_delivery_is_skipped_and_force_runs_again(
    db: asyncpg.Connection, database_url: str, http_target: HttpTarget, tmp_path: Path
) -> None:
    """Replaying the same event does not run the flow again; --force does."""
    await add_flow(db, actions=[webhook(http_target)])
    events = events_file(tmp_path, "insert_event")
    assert (await replay(database_url, events)).code == 0
    again = await replay(database_url, events)
    assert again.code == 0
    assert len(http_target.requests_to("/hook")) == 1
    assert again.logged("flow.already_ran")
    assert "1 already ran" in again.stderr
    forced = await replay(database_url, events, "--force")
    assert forced.code == 0
    assert len(http_target.requests_to("/hook")) == 2
    [execution] = await executions(db)
    assert (execution["runs"], execution["status"]) == (2, "SUCCESS")


async def test_two_processes_racing_run_each_flow_once(
    db: asyncpg.Connection, database_url: str, http_target: HttpTarget, tmp_path: Path
) -> None:
    """Two replays of the same events at once: the unique claim lets one run per event."""
    await add_flow(db, trigger_event="*", actions=[webhook(http_target)])
    names = ["insert_event", "update_event", "update_event_default_identity", "delete_event"]
    events = events_file(tmp_path, *names)
    first, second = await asyncio.gather(replay(database_url, events), replay(database_url, events))
    assert (first.code, second.code) == (0, 0)
    assert len(http_target.requests_to("/hook")) == 4
    assert len(await executions(db)) == 4


async def test_failed_executions_are_rerun(
    db: asyncpg.Connection, database_url: str, http_target: HttpTarget, tmp_path: Path
) -> None:
    """--once --failed re-runs FAILURE executions (only the named flow with --flow)."""
    http_target.script("/a", Reply(400))
    http_target.script("/b", Reply(400))
    flow_a = await add_flow(db, name="a", actions=[webhook(http_target, "/a")])
    flow_b = await add_flow(db, name="b", actions=[webhook(http_target, "/b")])
    assert (await replay(database_url, events_file(tmp_path, "insert_event"))).code == 1
    env = {"DATABASE_URL": database_url}
    only_a = await run_flowd("--once", "--failed", "--flow", str(flow_a), env=env)
    assert only_a.code == 0, only_a.stderr
    status = {e["flow_id"]: (e["status"], e["runs"]) for e in await executions(db)}
    assert status == {flow_a: ("SUCCESS", 2), flow_b: ("FAILURE", 1)}
    later = await run_flowd("--once", "--failed", "--since", "2999-01-01", env=env)
    assert later.code == 0
    assert len(http_target.requests_to("/b")) == 1
    rest = await run_flowd("--once", "--failed", env=env)
    assert rest.code == 0, rest.stderr
    assert len(http_target.requests_to("/b")) == 2
    assert {e["status"] for e in await executions(db)} == {"SUCCESS"}


async def test_bad_event_lines_are_reported_and_skipped(
    db: asyncpg.Connection, database_url: str, http_target: HttpTarget, tmp_path: Path
) -> None:
    """Malformed lines are logged with their line number; the other events still run; exit 1."""
    await add_flow(db, trigger_event="*", actions=[webhook(http_target)])
    events = events_file(
        tmp_path,
        "insert_event",
        "{not json",
        '{"schema": "public", "table": "tasks", "type": "TRUNCATE"}',
        "[1, 2]",
        "delete_event",
    )
    result = await replay(database_url, events)
    assert result.code == 1
    assert [line["line"] for line in result.logged("event.bad_line")] == [2, 3, 4]
    assert len(http_target.requests_to("/hook")) == 2
    assert "3 bad line(s)" in result.stderr


async def test_supabase_js_shape_is_the_same_event(
    db: asyncpg.Connection, database_url: str, http_target: HttpTarget, tmp_path: Path
) -> None:
    """An event in supabase-js shape (eventType/new/old) runs like the wire shape."""
    await add_flow(db, rules=[("priority", "=", "high")], actions=[webhook(http_target)])
    data = frame("insert_event")["payload"]["data"]
    js_shape = {
        "schema": "public",
        "table": "tasks",
        "commit_timestamp": data["commit_timestamp"],
        "eventType": "INSERT",
        "new": data["record"],
        "old": {},
        "errors": None,
    }
    result = await replay(database_url, events_file(tmp_path, js_shape))
    assert result.code == 0, result.stderr
    assert http_target.requests_to("/hook")[0].json()["record"]["id"] == 1


async def test_events_from_stdin(
    db: asyncpg.Connection, database_url: str, http_target: HttpTarget
) -> None:
    """`--events -` reads the events from standard input."""
    await add_flow(db, actions=[webhook(http_target)])
    result = await run_flowd(
        "--once",
        "--events",
        "-",
        env={"DATABASE_URL": database_url},
        stdin=json.dumps(frame("insert_event")) + "\n",
    )
    assert result.code == 0, result.stderr
    assert len(http_target.requests_to("/hook")) == 1


async def test_broken_flow_is_refused_and_the_others_run(
    db: asyncpg.Connection, database_url: str, http_target: HttpTarget, tmp_path: Path
) -> None:
    """A flow with an unknown operator is refused with one log line; a good flow still runs."""
    broken = await add_flow(
        db, rules=[("priority", "LIKE", "h%")], actions=[webhook(http_target, "/x")]
    )
    good = await add_flow(db, actions=[webhook(http_target, "/ok")])
    result = await replay(database_url, events_file(tmp_path, "insert_event"))
    assert result.code == 0, result.stderr
    [refused] = result.logged("flow.refused")
    assert refused["flow_id"] == broken
    assert "LIKE" in refused["reason"]
    assert len(http_target.requests_to("/ok")) == 1
    assert [e["flow_id"] for e in await executions(db)] == [good]


async def test_hostile_template_fails_its_action_without_retry(
    db: asyncpg.Connection, database_url: str, http_target: HttpTarget, tmp_path: Path
) -> None:
    """A template reaching for Python internals fails its action at once; nothing is sent."""
    await add_flow(
        db,
        actions=[
            webhook(
                http_target,
                body="{{ ''.__class__.__mro__[1].__subclasses__() }}",
                max_attempts=5,
            )
        ],
    )
    result = await replay(database_url, events_file(tmp_path, "insert_event"))
    assert result.code == 1
    assert http_target.requests == []
    [failed] = result.logged("action.failed")
    assert "template" in failed["error"]
    assert result.logged("action.retry") == []
    [execution] = await executions(db)
    assert execution["actions"][0]["attempts"] == 1
    assert "template" in execution["log"]


async def test_execution_abandoned_by_a_killed_process_is_rerun_by_failed(
    db: asyncpg.Connection, database_url: str, http_target: HttpTarget, tmp_path: Path
) -> None:
    """kill -9 mid-action leaves a RUNNING row; once older than FLOWD_ABANDONED_AFTER_S,
    `--once --failed` runs it again (a fresh RUNNING row is left alone)."""
    http_target.script("/hook", Reply(200, delay_s=30))
    await add_flow(db, actions=[webhook(http_target, timeout_s=60)])
    env = {"DATABASE_URL": database_url}
    crashing = await RunningFlowd(
        "--once", "--events", events_file(tmp_path, "insert_event"), env=env
    ).start()
    await http_target.wait_for_requests("/hook", 1)
    crashing.signal(signal.SIGKILL)
    assert await crashing.wait() == -signal.SIGKILL
    [execution] = await executions(db)
    assert execution["status"] == "RUNNING"
    fresh = await run_flowd("--once", "--failed", env=env)
    assert (fresh.code, len(http_target.requests_to("/hook"))) == (0, 1)
    await asyncio.sleep(0.2)
    rerun = await run_flowd("--once", "--failed", env={**env, "FLOWD_ABANDONED_AFTER_S": "0.1"})
    assert rerun.code == 0, rerun.stderr
    assert len(http_target.requests_to("/hook")) == 2
    [execution] = await executions(db)
    assert (execution["status"], execution["runs"]) == ("SUCCESS", 2)


async def test_changed_rule_without_full_identity_warns_once_per_table(
    db: asyncpg.Connection, database_url: str, http_target: HttpTarget, tmp_path: Path
) -> None:
    """CHANGED on UPDATEs that lack the old row is false, with one warning naming the fix."""
    await add_flow(
        db,
        trigger_event="UPDATE",
        rules=[("status", "CHANGED", None)],
        actions=[webhook(http_target)],
    )
    events = events_file(
        tmp_path, "update_event_default_identity", "update_event_default_identity", "update_event"
    )
    result = await replay(database_url, events)
    assert result.code == 0, result.stderr
    [warning] = result.logged("table.needs_replica_identity_full")
    assert warning["fix"] == 'ALTER TABLE "public"."tasks" REPLICA IDENTITY FULL;'
    assert len(http_target.requests_to("/hook")) == 1  # only the FULL-identity update
