"""Event log: durable delivery's table `flow_events` and the capture triggers that fill it.

The trigger function `flowd_capture` (migrations) writes every change of a watched table
into `flow_events` in the same transaction as the change, so a committed change is
never missed. Workers claim pending events under a lease with FOR UPDATE SKIP LOCKED,
and only the earliest pending event of each row: one row's changes are handled in
commit order, by whichever replica, while different rows go in parallel. A worker that
dies leaves leases that run out, and its events are claimed again.

An event that cannot be read or recorded is a poison event: each failed try is counted
and the lease given back; after `MAX_TRIES` it is set aside (marked failed with its
reason, claimed no more), so it never holds back the events around it.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from flowd.catalog import Table, quote_ident
from flowd.chain import EXTERNAL, Cause
from flowd.db import Connection
from flowd.errors import EventError, describe
from flowd.feeds.events import decode_json, parse_event
from flowd.logs import get_logger
from flowd.models import ChangeEvent, Column

log = get_logger()

_SYNC_LOCK_ID = 0x666C6F7765  # one replica at a time attaches and detaches triggers
MAX_TRIES = 3  # failed tries of an event (outages aside) before it is set aside
_MAX_FAILURE_CHARS = 2000

_EVENT_COLUMNS = """
e.event_id, e.table_oid, e.row_key, e.schema_name, e.table_name, e.type,
e.record::text AS record, e.old_record::text AS old_record, e.cause::text AS cause,
to_char(e.committed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS commit_timestamp
"""

_CLAIM_SQL = """
WITH next AS (
    SELECT e.event_id FROM {log} AS e
    WHERE e.handled_at IS NULL
      AND (e.lease_until IS NULL OR e.lease_until < now()
           -- leased here but not known here: a claim whose reply an outage lost
           OR ($4::bigint[] IS NOT NULL AND e.worker = $2 AND e.event_id <> ALL($4::bigint[])))
      AND NOT EXISTS (
          SELECT 1 FROM {log} AS earlier
          WHERE earlier.table_oid = e.table_oid AND earlier.row_key = e.row_key
            AND earlier.handled_at IS NULL AND earlier.event_id < e.event_id)
    ORDER BY e.event_id
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
UPDATE {log} AS e
SET worker = $2, lease_until = now() + make_interval(secs => $3), claims = e.claims + 1
FROM next WHERE e.event_id = next.event_id
RETURNING {columns}
"""

_TRIGGERS_SQL = """
SELECT n.nspname AS schema, c.relname AS name, t.tgargs AS arguments
FROM pg_trigger AS t
JOIN pg_class AS c ON c.oid = t.tgrelid
JOIN pg_namespace AS n ON n.oid = c.relnamespace
WHERE t.tgname = $1 AND NOT t.tgisinternal
"""


@dataclass(frozen=True, slots=True)
class LoggedEvent:
    """A change claimed from the log: the event, its row, and whether flowd caused it."""

    event_id: int
    row: tuple[int, str]  # (table oid, primary key values): events of one row share it
    event: ChangeEvent
    cause: Cause


@dataclass(frozen=True, slots=True)
class UnreadableEvent:
    """A claimed event whose row is no change event flowd can handle, and why."""

    event_id: int
    reason: str


@dataclass(frozen=True, slots=True)
class SetAsideEvent:
    event_id: int
    table: str
    type: str
    tries: int
    failure: str
    failed_at: datetime


@dataclass(frozen=True, slots=True)
class Backlog:
    pending: int
    oldest_age_s: float | None
    set_aside: int


ColumnsOf = Callable[[str, str], tuple[Column, ...]]


def _cause(text: str | None) -> Cause:
    if not text:
        return EXTERNAL
    try:
        return Cause.from_json(text)
    except ValueError:
        log.warning("event.cause_unreadable", cause=text)
        return EXTERNAL


class EventLog:
    """Claims, renews, releases and retires events of `flow_events` for one worker."""

    def __init__(self, pool: asyncpg.Pool, schema: str, *, worker: str, lease_s: float) -> None:
        self._pool = pool
        self._table = f"{quote_ident(schema)}.flow_events"
        self.worker = worker
        self._lease_s = lease_s

    def _locked(self, ids: str) -> str:
        """SQL: the events `ids`, locked in id order, so two statements over the same
        events (a handled mark and a lease renewal, say) cannot deadlock."""
        return (
            f"SELECT event_id FROM {self._table} WHERE event_id = ANY({ids}::bigint[])"
            " ORDER BY event_id FOR UPDATE"
        )

    async def claim(
        self, limit: int, columns_of: ColumnsOf, *, known: Collection[int] | None = None
    ) -> list[LoggedEvent | UnreadableEvent]:
        """Up to `limit` events nobody holds, each the earliest pending one of its row.

        With `known` (every event this worker still holds or is marking handled), events
        leased to this worker but not in it are claimed again at once: an earlier claim
        committed but failed to return (its reply lost in an outage), and nobody works on
        them. Only after a failed claim: the check costs a scan of `known` per event held.
        """
        rows = await self._pool.fetch(
            _CLAIM_SQL.format(log=self._table, columns=_EVENT_COLUMNS),
            limit,
            self.worker,
            self._lease_s,
            None if known is None else list(known),
        )
        events = [_claimed_event(row, columns_of) for row in rows]
        return sorted(events, key=lambda logged: logged.event_id)

    async def since(self, event_id: int, columns_of: ColumnsOf) -> list[LoggedEvent]:
        """Every event logged after `event_id`, handled or not (for a person to look at)."""
        rows = await self._pool.fetch(
            f"SELECT {_EVENT_COLUMNS} FROM {self._table} AS e WHERE e.event_id > $1"
            " ORDER BY e.event_id",
            event_id,
        )
        return [_logged_event(row, columns_of) for row in rows]

    async def handled(self, event_ids: Collection[int]) -> None:
        await self._pool.execute(
            f"UPDATE {self._table} SET handled_at = now(), lease_until = NULL"
            f" WHERE event_id IN ({self._locked('$1')}) AND handled_at IS NULL",
            list(event_ids),
        )

    async def renew(self, event_ids: Collection[int]) -> set[int]:
        """Extend the leases still held here; return the events they cover."""
        rows = await self._pool.fetch(
            f"UPDATE {self._table} SET lease_until = now() + make_interval(secs => $3)"
            f" WHERE event_id IN ({self._locked('$1')}) AND worker = $2 AND handled_at IS NULL"
            " RETURNING event_id",
            list(event_ids),
            self.worker,
            self._lease_s,
        )
        return {row["event_id"] for row in rows}

    async def release(self, event_ids: Collection[int]) -> None:
        """Give events back unhandled, so the next worker need not wait out their leases."""
        await self._pool.execute(
            f"UPDATE {self._table} SET lease_until = NULL, worker = NULL"
            f" WHERE event_id IN ({self._locked('$1')}) AND worker = $2 AND handled_at IS NULL",
            list(event_ids),
            self.worker,
        )

    async def try_failed(self, event_id: int, reason: str) -> int | None:
        """Count a failed try of an event held here and give its lease back; after MAX_TRIES,
        set it aside. The tries so far; None when the event is no longer held here."""
        tries: int | None = await self._pool.fetchval(
            f"UPDATE {self._table} SET tries = tries + 1, failure = $3,"
            " lease_until = NULL, worker = NULL,"
            " failed_at = CASE WHEN tries + 1 >= $4 THEN now() END,"
            " handled_at = CASE WHEN tries + 1 >= $4 THEN now() END"
            " WHERE event_id = $1 AND worker = $2 AND handled_at IS NULL RETURNING tries",
            event_id,
            self.worker,
            _storable(reason),
            MAX_TRIES,
        )
        return tries

    async def set_aside(self, since: datetime | None = None) -> list[SetAsideEvent]:
        """The events set aside (since `since`), oldest first."""
        rows = await self._pool.fetch(
            "SELECT event_id, schema_name || '.' || table_name AS table, type, tries, failure,"
            f" failed_at FROM {self._table} WHERE failed_at IS NOT NULL"
            " AND ($1::timestamptz IS NULL OR failed_at >= $1) ORDER BY failed_at, event_id",
            since,
        )
        return [SetAsideEvent(**row) for row in rows]

    async def backlog(self) -> Backlog:
        row = await self._pool.fetchrow(
            f"SELECT count(*) AS pending,"
            f" extract(epoch FROM now() - min(committed_at))::float8 AS oldest_age_s,"
            f" (SELECT count(*) FROM {self._table} WHERE failed_at IS NOT NULL) AS set_aside"
            f" FROM {self._table} WHERE handled_at IS NULL"
        )
        assert row is not None
        return Backlog(row["pending"], row["oldest_age_s"], row["set_aside"])

    async def purge(self, older_than_s: float, *, batch: int = 1000) -> int:
        """Delete events handled more than `older_than_s` ago, `batch` rows per statement."""
        deleted = 0
        while True:
            status = await self._pool.execute(
                f"DELETE FROM {self._table} WHERE event_id IN ("
                f" SELECT event_id FROM {self._table} WHERE handled_at IS NOT NULL"
                "  AND failed_at IS NULL"
                "  AND handled_at < now() - make_interval(secs => $1)"
                "  ORDER BY handled_at LIMIT $2 FOR UPDATE SKIP LOCKED)",
                older_than_s,
                batch,
            )
            count = int(status.split()[-1])
            deleted += count
            if count < batch:
                return deleted


def _storable(text: str) -> str:
    """`text` as a `text` column takes it: bounded, no NUL, no lone surrogate (a reason may
    quote the very event that could not be recorded)."""
    text = text[:_MAX_FAILURE_CHARS].replace("\x00", "\\u0000")
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _claimed_event(row: asyncpg.Record, columns_of: ColumnsOf) -> LoggedEvent | UnreadableEvent:
    try:
        return _logged_event(row, columns_of)
    except EventError as exc:
        return UnreadableEvent(row["event_id"], str(exc))


def _logged_event(row: asyncpg.Record, columns_of: ColumnsOf) -> LoggedEvent:
    """The event of a log row, under the limits of every feed (`flowd.feeds.events`)."""
    schema, table = row["schema_name"], row["table_name"]
    event = parse_event(
        {
            "schema": schema,
            "table": table,
            "type": row["type"],
            "commit_timestamp": row["commit_timestamp"],
            "columns": columns_of(schema, table),
            "record": decode_json(row["record"]) if row["record"] is not None else None,
            "old_record": decode_json(row["old_record"]) if row["old_record"] else None,
        }
    )
    row_of = (row["table_oid"], row["row_key"])
    return LoggedEvent(row["event_id"], row_of, event, _cause(row["cause"]))


# ------------------------------------------------------------------------- capture triggers


def trigger_name(schema: str) -> str:
    """The capture trigger's name; one flowd schema's triggers never replace another's."""
    return "flowd_capture" if schema == "public" else f"flowd_capture_{schema}"[:63]


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@dataclass(frozen=True, slots=True)
class TriggerSync:
    attached: tuple[str, ...] = ()
    detached: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()


class CaptureTriggers:
    """Attaches `flowd_capture` to the tables flows watch, and detaches it from the rest."""

    def __init__(self, pool: asyncpg.Pool, schema: str) -> None:
        self._pool = pool
        self._schema = schema
        self._name = trigger_name(schema)

    async def attached(
        self, database: asyncpg.Pool | Connection | None = None
    ) -> dict[tuple[str, str], tuple[str, ...]]:
        """Each table carrying the trigger, with the key columns it was given."""
        rows = await (database or self._pool).fetch(_TRIGGERS_SQL, self._name)
        return {
            (row["schema"], row["name"]): tuple(
                part.decode() for part in bytes(row["arguments"]).split(b"\x00")[:-1]
            )
            for row in rows
        }

    async def sync(self, tables: Iterable[Table]) -> TriggerSync:
        """Make exactly `tables` carry the trigger, with their current primary keys."""
        wanted = {(table.schema, table.name): table for table in tables}
        attached, detached, failed = [], [], []
        async with self._pool.acquire() as connection, connection.transaction():
            await connection.execute("SELECT pg_advisory_xact_lock($1)", _SYNC_LOCK_ID)
            current = await self.attached(connection)
            for key, table in sorted(wanted.items()):
                if current.get(key) == table.primary_key:
                    continue
                try:
                    async with connection.transaction():
                        await connection.execute(self._create_sql(table))
                    attached.append(f"{table.schema}.{table.name}")
                except asyncpg.PostgresError as exc:
                    failed.append(f"{table.schema}.{table.name}")
                    log.error(
                        "capture.attach_failed",
                        table=f"{table.schema}.{table.name}",
                        error=describe(exc),
                        fix="run flowd as the table's owner, or attach the trigger as the owner: "
                        + self._create_sql(table),
                    )
            for schema, name in sorted(set(current) - set(wanted)):
                qualified = f"{quote_ident(schema)}.{quote_ident(name)}"
                try:
                    async with connection.transaction():
                        await connection.execute(
                            f"DROP TRIGGER IF EXISTS {quote_ident(self._name)} ON {qualified}"
                        )
                    detached.append(f"{schema}.{name}")
                except asyncpg.PostgresError as exc:
                    log.error(
                        "capture.detach_failed",
                        table=f"{schema}.{name}",
                        error=describe(exc),
                    )
        result = TriggerSync(tuple(attached), tuple(detached), tuple(failed))
        if attached or detached:
            log.info("capture.synced", attached=attached, detached=detached)
        return result

    def _create_sql(self, table: Table) -> str:
        arguments = ", ".join(_literal(column) for column in table.primary_key)
        return (
            f"CREATE OR REPLACE TRIGGER {quote_ident(self._name)}"
            f" AFTER INSERT OR UPDATE OR DELETE ON {table.qualified}"
            f" FOR EACH ROW EXECUTE FUNCTION {quote_ident(self._schema)}.flowd_capture({arguments})"
        )
