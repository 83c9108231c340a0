"""Write flows into the database the way an operator would: plain SQL inserts."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import asyncpg

from flowd.flowfiles import FlowSpec

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


async def insert_specs(db: asyncpg.Connection, specs: Sequence[FlowSpec]) -> dict[str, int]:
    """Insert flows as a flows file defines them (key, rules, actions in list order), the
    way `flowd flows apply` will; their ids by key."""
    ids = {}
    for spec in specs:
        ids[spec.key] = flow_id = await db.fetchval(
            "INSERT INTO flows (key, name, trigger_table, trigger_event, match, is_enabled,"
            " schedule, schedule_tz) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING flow_id",
            *(spec.key, spec.name, spec.trigger_table, spec.trigger_event, spec.match),
            *(spec.is_enabled, spec.schedule, spec.schedule_tz),
        )
        await db.executemany(
            "INSERT INTO rules (flow_id, field, operator, value) VALUES ($1, $2, $3, $4)",
            [(flow_id, rule.field, rule.operator, rule.value) for rule in spec.rules],
        )
        await db.executemany(
            "INSERT INTO actions (flow_id, type, config, position) VALUES ($1, $2, $3::jsonb, $4)",
            [(flow_id, a.type, json.dumps(a.config), n) for n, a in enumerate(spec.actions)],
        )
    return ids


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
