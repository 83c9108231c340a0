"""flowd through a transaction-mode pooler (PgBouncer, as Supabase's pooler on port 6543)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import asyncpg
import pytest

from tests.conftest import frame
from tests.support.flowd_cli import run_flowd
from tests.support.flows import add_flow, executions
from tests.support.http_target import HttpTarget
from tests.support.pgbouncer import TransactionPooler

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
