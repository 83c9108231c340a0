"""`flowd --once --events`: events replayed through classify → act → record, end to end."""

from __future__ import annotations

import json

import asyncpg

from tests.conftest import frame
from tests.support.flowd_cli import run_flowd
from tests.support.flows import add_flow, executions
from tests.support.http_target import HttpTarget, Reply

INSERT_ROW = (
    "INSERT INTO tasks (id, title, priority, status, estimate, tags, meta, done)"
    " VALUES (1, 'Write realtime contract', 'high', 'open', 3.50, '{backend,realtime}',"
    " '{\"points\": 5}', false)"
)


def events_file(tmp_path, *names: str) -> str:  # type: ignore[no-untyped-def]
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(frame(name)) + "\n" for name in names))
    return str(path)


async def test_seed_flow_calls_webhook_updates_row_and_records(
    db: asyncpg.Connection, database_url: str, http_target: HttpTarget, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """The seed flow on an INSERT frame: webhook called, row updated, one SUCCESS execution."""
    await db.execute(INSERT_ROW)
    flow_id = await add_flow(
        db,
        name="Notify PM on High-Priority Task",
        rules=[("priority", "=", "high")],
        actions=[
            (
                "API_CALL",
                {
                    "url": http_target.url_for("/slack"),
                    "method": "POST",
                    "body": '{"text": "High priority task: {{ new.title }}"}',
                },
            ),
            ("DB_UPDATE", {"table": "tasks", "field": "status", "value": "In Progress"}),
        ],
    )
    result = await run_flowd(
        "--once", "--events", events_file(tmp_path, "insert_event"), env={"DATABASE_URL": database_url}
    )
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
