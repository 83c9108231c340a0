"""Reading `flow_executions`: a filtered list, one execution in full, a flow by key or id.

Every value travels as a bound parameter; only the schema (a setting) is written into
the text, quoted. What comes out is plain data (`Execution`, `ExecutionDetail`). Texts
come out as stored, and the recorder stored them redacted.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import asyncpg
import pydantic

from flowd.catalog import quote_ident
from flowd.db import Connection
from flowd.errors import ConfigurationError, NotFound, first_problem
from flowd.history.changes import ColumnChange, column_changes, column_order
from flowd.models import ActionOutcome, Status

Database = asyncpg.Pool | Connection
T = TypeVar("T")
MAX_BIGINT = 2**63 - 1

# The columns of a list line: no event, log or actions (those can be large).
_SUMMARY_COLUMNS = (
    "e.execution_id, e.flow_id, f.key AS flow_key, f.name AS flow_name, e.status,"
    " e.triggered_at, e.finished_at, e.event_key, e.runs,"
    " e.event ->> 'type' AS event_type,"
    " concat_ws('.', e.event ->> 'schema', e.event ->> 'table') AS event_table"
)
# A removed flow's executions may outlive it: the flow is joined, never required.
_FROM = "{schema}.flow_executions e LEFT JOIN {schema}.flows f ON f.flow_id = e.flow_id"

_LIST = (
    f"SELECT {_SUMMARY_COLUMNS} FROM {_FROM}"
    " WHERE ($1::bigint IS NULL OR e.flow_id = $1) AND ($2::text IS NULL OR e.status = $2)"
    " AND ($3::timestamptz IS NULL OR e.triggered_at >= $3)"
    " ORDER BY e.triggered_at DESC, e.execution_id DESC LIMIT $4"
)
_SHOW = (
    f"SELECT {_SUMMARY_COLUMNS}, e.event::text AS event, e.log, e.actions::text AS actions"
    f" FROM {_FROM} WHERE e.execution_id = $1"
)
# Finished after `$1` and not before `$2` (the follower's floor), oldest first.
_FINISHED = (
    f"SELECT {_SUMMARY_COLUMNS} FROM {_FROM}"
    " WHERE e.finished_at > $1 AND e.finished_at >= $2 AND ($3::bigint IS NULL OR e.flow_id = $3)"
    " ORDER BY e.finished_at, e.execution_id"
)
_FLOW_BY_KEY = "SELECT flow_id, key, name FROM {schema}.flows WHERE key = $1"
# By id: the flow, or a removed one that executions still name.
_FLOW_BY_ID = (
    "SELECT f.flow_id, f.key, f.name FROM {schema}.flows f WHERE f.flow_id = $1"
    " UNION ALL SELECT $1::bigint, NULL::text, NULL::text"
    " WHERE EXISTS (SELECT 1 FROM {schema}.flow_executions WHERE flow_id = $1)"
    " LIMIT 1"
)


@dataclass(frozen=True, slots=True)
class ExecutionFilter:
    """Which executions `list_executions` returns: all of these that are set, newest first."""

    flow_id: int | None = None
    status: Status | None = None
    since: datetime | None = None  # triggered at or after
    limit: int = 50


@dataclass(frozen=True, slots=True)
class FlowRef:
    flow_id: int
    key: str | None  # None: the flow has no key yet, or it is gone
    name: str | None  # None: the flow is gone (its executions were kept)


@dataclass(frozen=True, slots=True)
class Execution:
    """One row of `flow_executions`, without its event, log and action details."""

    execution_id: int
    flow_id: int
    flow_key: str | None
    flow_name: str | None
    status: Status
    triggered_at: datetime
    finished_at: datetime | None
    event_key: str
    runs: int
    event_type: str | None  # INSERT, UPDATE, DELETE, SCHEDULE
    event_table: str | None  # schema.table

    @property
    def duration_ms(self) -> int | None:
        if self.finished_at is None:
            return None
        return round((self.finished_at - self.triggered_at).total_seconds() * 1000)


@dataclass(frozen=True, slots=True)
class ExecutionDetail:
    """One execution in full: its event (as stored), the UPDATE diff, each action, the log."""

    execution: Execution
    event: dict[str, Any]
    changes: tuple[ColumnChange, ...]  # an UPDATE's changed columns; () for other events
    actions: tuple[ActionOutcome, ...]
    log: str


async def list_executions(
    database: Database, schema: str, wanted: ExecutionFilter
) -> list[Execution]:
    rows = await _reading(
        lambda: database.fetch(
            _on(_LIST, schema), wanted.flow_id, wanted.status, wanted.since, wanted.limit
        )
    )
    return [_execution(row) for row in rows]


async def show_execution(database: Database, schema: str, execution_id: int) -> ExecutionDetail:
    """The execution; NotFound when there is none by that id."""
    if not 0 < execution_id <= MAX_BIGINT:
        raise NotFound(f"no execution {execution_id}")
    row = await _reading(lambda: database.fetchrow(_on(_SHOW, schema), execution_id))
    if row is None:
        raise NotFound(f"no execution {execution_id}")
    event = _json_object(row["event"])
    changes: tuple[ColumnChange, ...] = ()
    if event.get("type") == "UPDATE":
        changes = column_changes(event.get("old_record"), event.get("record"), column_order(event))
    return ExecutionDetail(_execution(row), event, changes, _outcomes(row["actions"]), row["log"])


async def finished_between(
    database: Database, schema: str, after: datetime, floor: datetime, flow_id: int | None
) -> list[Execution]:
    """Executions finished after `after` and at or after `floor`, in the order they finished."""
    rows = await _reading(lambda: database.fetch(_on(_FINISHED, schema), after, floor, flow_id))
    return [_execution(row) for row in rows]


async def resolve_flow(database: Database, schema: str, reference: str) -> FlowRef:
    """The flow a `--flow` names: its key, else its numeric id; NotFound when neither."""
    row = await _reading(lambda: database.fetchrow(_on(_FLOW_BY_KEY, schema), reference))
    if row is None and reference.isascii() and reference.isdigit():
        flow_id = int(reference)
        if flow_id <= MAX_BIGINT:
            row = await _reading(lambda: database.fetchrow(_on(_FLOW_BY_ID, schema), flow_id))
    if row is None:
        raise NotFound(f"no flow with key or id {reference!r}")
    return FlowRef(row["flow_id"], row["key"], row["name"])


def _on(statement: str, schema: str) -> str:
    return statement.format(schema=quote_ident(schema))


async def _reading(query: Callable[[], Awaitable[T]]) -> T:
    """The query's result; a database without this version's columns is one line."""
    try:
        return await query()
    except (asyncpg.UndefinedTableError, asyncpg.UndefinedColumnError) as exc:
        raise ConfigurationError(
            f"flowd's tables are missing or not up to date ({exc}); run `flowd migrate`"
        ) from None


def _execution(row: asyncpg.Record) -> Execution:
    return Execution(
        execution_id=row["execution_id"],
        flow_id=row["flow_id"],
        flow_key=row["flow_key"],
        flow_name=row["flow_name"],
        status=row["status"],
        triggered_at=row["triggered_at"],
        finished_at=row["finished_at"],
        event_key=row["event_key"],
        runs=row["runs"],
        event_type=row["event_type"],
        event_table=row["event_table"] or None,
    )


def _json_object(text: str) -> dict[str, Any]:
    value = json.loads(text)
    return value if isinstance(value, dict) else {"value": value}


def _outcomes(text: str) -> tuple[ActionOutcome, ...]:
    """The `actions` column; an item that is no outcome shows as a failed action saying why."""
    items = json.loads(text)
    return tuple(_outcome(item) for item in (items if isinstance(items, list) else [items]))


def _outcome(item: Any) -> ActionOutcome:
    try:
        return ActionOutcome.model_validate(item)
    except pydantic.ValidationError as exc:
        where, problem = first_problem(exc, "item")
        return ActionOutcome(action_id=None, type="?", ok=False, error=f"{where}: {problem}")
