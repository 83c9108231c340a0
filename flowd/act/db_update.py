"""DB_UPDATE: set columns of a row (the triggering row by default) in Postgres.

Identifiers come from the catalog and are quoted; every value is a bound text
parameter cast by Postgres to its column's type. Only rows where some set column
`IS DISTINCT FROM` its new value are written, so an update that finds the row
already right writes nothing and raises no new change event.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import asyncpg
from pydantic import ConfigDict, Field, model_validator

from flowd.act.base import ActionConfig, Checked, Done, Journal, Step
from flowd.catalog import Catalog, Table, quote_ident
from flowd.config import Settings
from flowd.db import Connection, is_outage
from flowd.errors import (
    ExecutionTakenOver,
    PermanentActionError,
    TransientActionError,
    describe,
)
from flowd.models import ChangeEvent, Flow, table_ref
from flowd.policy import TablePolicy

_TRANSIENT_SQLSTATES = {"40001", "40P01"}  # serialization failure, deadlock
_ROW = "flowd_row"  # the alias of the updated table, so RETURNING can name the whole row


class DbUpdateConfig(ActionConfig):
    """`{"table", "field", "value"}` (seed form) or `{"table", "set", "where"?}`."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)
    templated: ClassVar[tuple[str, ...]] = ("value", "set_", "where")

    table: str = Field(min_length=1)
    field: str | None = None
    value: Any = None
    set_: dict[str, Any] | None = Field(None, alias="set")
    where: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_form(self) -> DbUpdateConfig:
        if (self.field is None) == (self.set_ is None):
            raise ValueError('give either "field" and "value", or "set"')
        if self.set_ is not None and not self.set_:
            raise ValueError('"set" names no column')
        if self.where is not None and not self.where:
            raise ValueError('"where" names no column')
        return self

    @property
    def assignments(self) -> dict[str, Any]:
        return dict(self.set_) if self.set_ is not None else {str(self.field): self.value}

    @property
    def table_ref(self) -> tuple[str, str]:
        return table_ref(self.table)


async def target(
    config: DbUpdateConfig, flow: Flow, catalog: Catalog | None, policy: TablePolicy | None
) -> Checked:
    """The catalog's table this update writes, and why it cannot work (None if it can).

    The policy (where a DB_UPDATE may write) is checked first, without a catalog too
    (flows from a file, no database); then the table against the catalog.
    """
    schema, name = config.table_ref
    if policy is not None and (refusal := policy.update_refusal(schema, name)) is not None:
        return None, refusal
    if catalog is None:
        return None, None
    table = await catalog.table(schema, name)
    if table is None and (kind := await catalog.not_a_table(schema, name)) is not None:
        return None, f"{schema}.{name} is {kind}: a DB_UPDATE writes tables only"
    return table, check(config, flow, table)


def check(config: DbUpdateConfig, flow: Flow, table: Table | None) -> str | None:
    """Why this update cannot work against the catalog's `table`, or None."""
    schema, name = config.table_ref
    if table is None:
        return f"table {schema}.{name} does not exist"
    named = [*config.assignments, *(config.where or {})]
    missing = [column for column in named if column not in table.columns]
    if missing:
        return f"table {schema}.{name} has no column {', '.join(sorted(missing))}"
    if config.where is None:
        if config.table_ref != flow.table_ref:
            return 'without "where" the table must be the trigger table'
        if not table.primary_key:
            return f'table {schema}.{name} has no primary key; give "where"'
    return None


async def set_cause(connection: Connection, schema: str, cause: str) -> None:
    """Tell the capture trigger that flowd writes in this transaction, and why.

    `flowd.cause_token` is the install's token, read by the server itself: the trigger
    believes `flowd.cause` only beside it, and no other role can read it.
    """
    await connection.execute(
        "SELECT set_config('flowd.cause', $1, true), set_config('flowd.cause_token',"
        f" (SELECT token FROM {quote_ident(schema)}.flowd_cause_token), true)",
        cause,
    )


def _as_text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value)


@dataclass(frozen=True, slots=True)
class Update:
    sql: str
    parameters: tuple[str | None, ...]
    columns: tuple[str, ...]  # the columns it sets


def build_update(config: DbUpdateConfig, table: Table, event: ChangeEvent) -> Update:
    """The UPDATE statement and its bound values, from a config rendered for this event."""
    assignments = {col: _as_text(v) for col, v in config.assignments.items()}
    if config.where is not None:
        where = {col: _as_text(v) for col, v in config.where.items()}
    else:
        row = event.old if event.type == "DELETE" else event.new
        absent = [column for column in table.primary_key if column not in row]
        if absent:
            raise PermanentActionError(f"the event lacks primary key column {', '.join(absent)}")
        where = {column: _as_text(row[column]) for column in table.primary_key}

    parameters: list[str | None] = []

    def bind(column: str, value: str | None) -> str:
        parameters.append(value)
        return f"CAST(${len(parameters)}::text AS {table.columns[column].sql_type})"

    set_sql = {quote_ident(col): bind(col, value) for col, value in assignments.items()}
    conditions = [f"{quote_ident(col)} = {bind(col, value)}" for col, value in where.items()]
    changed = " OR ".join(f"{col} IS DISTINCT FROM {expr}" for col, expr in set_sql.items())
    sql = (
        f"UPDATE {table.qualified} AS {_ROW} SET "
        + ", ".join(f"{col} = {expr}" for col, expr in set_sql.items())
        + f" WHERE {' AND '.join(conditions)} AND ({changed})"
        + f" RETURNING to_jsonb({_ROW})::text"
    )
    return Update(sql, tuple(parameters), tuple(assignments))


async def execute(database: asyncpg.Pool | Connection, update: Update) -> list[dict[str, Any]]:
    """Run the update once; return the rows written, as Realtime would encode them."""
    try:
        rows = await database.fetch(update.sql, *update.parameters)
    except asyncpg.PostgresError as exc:
        if is_outage(exc):
            raise  # the database is away: the caller (`ActionRunner`) waits it out
        message = describe(exc)
        if exc.sqlstate in _TRANSIENT_SQLSTATES:
            raise TransientActionError(message) from None
        raise PermanentActionError(message) from None
    return [json.loads(row[0]) for row in rows]


@asynccontextmanager
async def transaction(pool: asyncpg.Pool) -> AsyncIterator[Connection]:
    """A connection in a transaction. An outage rolls it back and is raised as it came
    (`db.is_outage`), for the caller to wait out."""
    async with pool.acquire() as connection, connection.transaction():
        yield connection


class DbUpdate:
    """The DB_UPDATE kind (`flowd.act.base.ActionKind`).

    In a durable execution the write and the journal record that it ran commit in one
    transaction, so it takes effect once. An outage meets it with both rolled back: it
    waits the outage out and runs again, without using up an attempt.
    """

    config_model = DbUpdateConfig
    needs_database = True
    needs_supabase = False
    journalled_with_write = True

    async def check(
        self,
        config: DbUpdateConfig,
        flow: Flow,
        catalog: Catalog | None,
        policy: TablePolicy | None,
    ) -> Checked:
        return await target(config, flow, catalog, policy)

    def settings_problem(self, written: Mapping[str, Any], settings: Settings) -> str | None:
        return None  # where it may write is `check`'s (the policy comes from the settings)

    async def attempt(self, config: DbUpdateConfig, step: Step) -> Done:
        pool, table, journal = step.tools.pool, step.prepared.table, step.journal
        if pool is None or table is None:
            raise PermanentActionError("DB_UPDATE needs a database (DATABASE_URL)")
        update = build_update(config, table, step.event)
        available = step.tools.available
        if journal is None:
            rows = await available.until_done(lambda: execute(pool, update))
            done = Done(rows_written=len(rows), rows=rows)
        else:
            done = await available.until_done(
                lambda: _update_and_record(pool, update, journal, step)
            )
        if step.on_written is not None and done.rows_written:
            step.on_written(table, update.columns, done.rows)
        return done


async def _update_and_record(
    pool: asyncpg.Pool, update: Update, journal: Journal, step: Step
) -> Done:
    """The write and the record that it ran, in one transaction: it happens once."""
    async with transaction(pool) as connection:
        await set_cause(connection, step.tools.settings.schema_name, journal.cause)
        rows = await execute(connection, update)
        done = Done(rows_written=len(rows), rows=rows)
        outcome = step.outcome(done)
        if not await journal.record(step.index, outcome, connection):
            raise ExecutionTakenOver()
    return Done(rows_written=len(rows), rows=rows, outcome=outcome)
