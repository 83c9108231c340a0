"""Write flows into the database the way an operator would: plain SQL inserts."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import asyncpg

RuleSpec = tuple[str, str, str | None]
ActionSpec = tuple[str, dict[str, Any]]


async def add_flow(
    db: asyncpg.Connection,
    *,
    name: str = "test flow",
    trigger_table: str = "tasks",
    trigger_event: str = "INSERT",
    match: str = "ALL",
    enabled: bool = True,
    rules: Sequence[RuleSpec] = (),
    actions: Sequence[ActionSpec] = (),
) -> int:
    """Insert a flow with its rules and actions (in the given order); return its id."""
    flow_id: int = await db.fetchval(
        "INSERT INTO flows (name, trigger_table, trigger_event, match, is_enabled)"
        " VALUES ($1, $2, $3, $4, $5) RETURNING flow_id",
        name,
        trigger_table,
        trigger_event,
        match,
        enabled,
    )
    for field, operator, value in rules:
        await db.execute(
            "INSERT INTO rules (flow_id, field, operator, value) VALUES ($1, $2, $3, $4)",
            flow_id,
            field,
            operator,
            value,
        )
    for position, (action_type, config) in enumerate(actions):
        await db.execute(
            "INSERT INTO actions (flow_id, type, config, position) VALUES ($1, $2, $3::jsonb, $4)",
            flow_id,
            action_type,
            json.dumps(config),
            position,
        )
    return flow_id


async def executions(db: asyncpg.Connection) -> list[dict[str, Any]]:
    """Every row of flow_executions, decoded, in id order."""
    rows = await db.fetch("SELECT * FROM flow_executions ORDER BY execution_id")
    decoded = []
    for row in rows:
        record = dict(row)
        record["event"] = json.loads(record["event"])
        record["actions"] = json.loads(record["actions"])
        decoded.append(record)
    return decoded


# Counts the writes that really changed a task's status, to catch a DB_UPDATE applied twice.
STATUS_AUDIT_SQL = """
CREATE TABLE status_writes (task_id bigint NOT NULL, status text);
CREATE FUNCTION audit_status() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO status_writes VALUES (NEW.id, NEW.status);
    RETURN NULL;
END $$;
CREATE TRIGGER audit_status AFTER UPDATE ON tasks FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION audit_status();
"""
