"""A stand-in for the Supabase Realtime server: ``postgres_changes`` over Phoenix V1 JSON.

It speaks the wire protocol of /work/shared/realtime-contract/PROTOCOL.md (vendored example
frames in tests/fixtures/frames/) on a real WebSocket, and emits ``postgres_changes`` frames
for rows really committed to a PostgreSQL database, so the real ``realtime`` client (and
flowd on top of it) can be tested end to end::

    async with RealtimeStandIn(database_url) as rt:
        client = AsyncRealtimeClient(f"{rt.url}/realtime/v1", "any-token")
        ...  # channel.on_postgres_changes(...); await channel.subscribe()
        await rt.wait_until_live("public", "tasks")  # "Subscribed to PostgreSQL" was sent
        await db.execute("INSERT INTO tasks ...")     # arrives as a postgres_changes frame

What it reproduces:

* Handshake on ``/realtime/v1/websocket`` (and the bare server's ``/socket/websocket``):
  ``apikey`` required (else HTTP 401 ``{"error": ...}``), ``vsn`` absent or ``1.0.0`` (else
  HTTP 403, empty body). Frames in: ``{event,payload,topic,ref,join_ref}``; frames out:
  ``{ref,event,payload,topic}`` without ``join_ref``. Idle sockets are closed (code 1000)
  after ``idle_timeout_s`` without an inbound frame. No server pings, no compression.
* Heartbeats, ``phx_join`` (reply echoing each binding plus its ``id``: the phash2 values
  PROTOCOL §3 lists, else a stable CRC32 below 2**27), ``Subscribed to PostgreSQL`` after
  ``subscribe_delay_s``, ``phx_leave``, duplicate joins (new reply, then ``phx_close`` with the
  old join ref), ``access_token`` refresh, ``unmatched topic`` and ``TopicNameRequired``.
* Binding parsing and errors as RT's ``subscriptions.ex``: filter syntax errors, tables not in
  publication ``supabase_realtime`` and unknown filter columns / uncastable values end in a
  ``postgres_changes`` ``system`` error with RT's texts, after an ok join reply, no retry.
  Like RT, a channel subscribes all its bindings in one transaction: one bad binding means no
  binding of that channel is live (``isolate_binding_errors=True`` subscribes the good ones).
* Change frames: one per change and channel, ``ids`` = matching bindings in reverse binding
  order, ``record``/``old_record`` as ``to_jsonb`` text spliced into the frame (numeric digits
  kept, keys ordered like jsonb), ``old_record`` limited to the replica identity columns
  unless REPLICA IDENTITY FULL, ``columns`` with ``pg_type.typname``, ms ``commit_timestamp``
  with ``Z``, ``errors: null``. Filters: ``eq neq lt lte gt gte in like ilike is match imatch
  isdistinct``, ``not.`` and comma-AND, on the new row (INSERT/UPDATE) or the old row (DELETE).
* Delivery: at most once, no replay. A change reaches a channel only if its capture id is
  above the high-water mark taken when that channel went live; changes made while nobody is
  subscribed, or between the join reply and ``Subscribed to PostgreSQL``, are lost.

How changes are captured: a trigger (``realtime_standin.capture``, installed on every table
of the publication at start and whenever a join asks for a published table) writes
``to_jsonb(NEW/OLD)`` and the table's replica identity into ``realtime_standin.changes``; a
poller consumes that queue every ``poll_interval_s``.

For test authors: wait for readiness with ``wait_until_live`` (or ``wait_for_sent`` on the
``Subscribed to PostgreSQL`` frame) before writing; a change then arrives within about one
``poll_interval_s`` (read at ``start``). Use one stand-in per database (the poller consumes the
queue). ``stop()`` closes sockets with 1001 and ``start()`` again listens on the same port.
realtime 2.34.1 reads the deprecated ``ConnectionClosed.code`` when a socket closes abnormally;
under ``filterwarnings=error`` that kills its receive loop, so tests that drop or 1011/1012-close
a real client's socket need ``@pytest.mark.filterwarnings(
"ignore:ConnectionClosed\\.(code|reason) is deprecated:DeprecationWarning")``.

Deliberately not reproduced: TOAST omission of unchanged large values, 413 trimming and the
400/401 error events, RLS / column privileges / JWT validation (any token is accepted),
``select`` column lists (echoed, not applied), broadcast and presence, the V2 serializer, the
server's 2 s / 5 s error backoffs, rate limits. ``commit_timestamp`` is the transaction's
``now()`` (its start), not its commit time. A change whose transaction took its capture id
before a channel went live but committed after is lost for that channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import re
import zlib
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from functools import cached_property
from http import HTTPStatus
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

import asyncpg
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

__all__ = ["RealtimeStandIn", "binding_id"]

Frame = dict[str, Any]

logger = logging.getLogger(__name__)

PUBLICATION = "supabase_realtime"
SOCKET_PATHS = ("/realtime/v1/websocket", "/socket/websocket")
SUBSCRIBED = "Subscribed to PostgreSQL"
TOPIC_NAME_REQUIRED = "TopicNameRequired: You must provide a topic name"
_WAIT_STEP_S = 0.01
_FLUSH_TIMEOUT_S = 5.0
_MAX_FRAME_BYTES = 5_000_000


# ---------------------------------------------------------------------------------- encoding


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _encode(ref: str | None, event: str, payload: Frame, topic: str) -> str:
    """A server frame, keys in the order of the production capture (PROTOCOL §0)."""
    return _dumps({"ref": ref, "event": event, "payload": payload, "topic": topic})


def _inspect(value: Any) -> str:
    """Roughly Elixir's ``inspect/1``, for the error texts RT builds with it."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_inspect(item) for item in value) + "]"
    if isinstance(value, dict):
        items = sorted(value.items())
        return "%{" + ", ".join(f"{_inspect(k)} => {_inspect(v)}" for k, v in items) + "}"
    return str(value)


def _canonical(binding: Frame) -> str:
    return json.dumps(binding, sort_keys=True, separators=(",", ":"))


# erlang:phash2 of the binding maps PROTOCOL §3 lists; other bindings get a CRC32 stand-in.
_KNOWN_BINDING_IDS = {
    _canonical(binding): value
    for binding, value in (
        ({"event": "*", "schema": "public", "table": "tasks"}, 109446758),
        ({"event": "INSERT", "schema": "public", "table": "tasks"}, 9019328),
        ({"event": "UPDATE", "schema": "public", "table": "tasks"}, 9927989),
        ({"event": "DELETE", "schema": "public", "table": "tasks"}, 29350925),
        (
            {"event": "UPDATE", "schema": "public", "table": "tasks", "filter": "status=eq.open"},
            3018333,
        ),
        ({"event": "INSERT", "schema": "public"}, 100468891),
        ({"event": "*", "schema": "public", "table": "test"}, 106243155),
    )
}


def binding_id(binding: Frame) -> int:
    """The ``id`` the stand-in gives a binding (exactly as sent): stable, below 2**27."""
    key = _canonical(binding)
    return _KNOWN_BINDING_IDS.get(key, zlib.crc32(key.encode()) % 2**27)


# ----------------------------------------------------------------------------------- filters

FILTER_OPS = (
    *("eq", "neq", "lt", "lte", "gt", "gte", "in"),
    *("like", "ilike", "is", "match", "imatch", "isdistinct"),
)


class BindingError(Exception):
    """A binding that cannot be subscribed; the text is the ``system`` message to send."""


def _split_top_level(text: str) -> list[str]:
    """Split on commas outside parentheses and double quotes (RT ``split_top_level``)."""
    segments: list[str] = []
    current: list[str] = []
    depth, quoted, prev = 0, False, ""
    chars = iter(text)
    for char in chars:
        if quoted:
            current.append(char)
            if char == "\\":
                current.append(next(chars, ""))
            quoted = char != '"'
            continue
        if char == "," and depth == 0:
            segments.append("".join(current))
            current, prev = [], ""
            continue
        if char == '"' and prev in (".", "(", ","):
            quoted = True
        elif char == "(":
            depth += 1
        elif char == ")":
            depth = max(0, depth - 1)
        current.append(char)
        prev = char
    segments.append("".join(current))
    return segments


def _unquote(value: str) -> str:
    """``"a,b"`` → ``a,b`` with backslash escapes; anything malformed stays as it is."""
    if not value.startswith('"'):
        return value
    out: list[str] = []
    chars = iter(value[1:])
    for char in chars:
        if char == '"':
            return value if next(chars, None) is not None else "".join(out)
        out.append(next(chars, "") if char == "\\" else char)
    return value


def _as_number(text: str) -> Decimal | None:
    try:
        number = Decimal(text)
    except InvalidOperation:
        return None
    return number if number.is_finite() else None


def _as_datetime(text: str) -> dt.datetime | None:
    if len(text) < 10 or text[4] != "-":
        return None
    try:
        return dt.datetime.fromisoformat(text)
    except ValueError:
        return None


def _order(left: str, right: str) -> int:
    """Compare two values' texts: as numbers, else as timestamps, else as strings."""
    pairs: list[tuple[Any, Any]] = [
        (_as_number(left), _as_number(right)),
        (_as_datetime(left), _as_datetime(right)),
    ]
    for a, b in pairs:
        if a is not None and b is not None:
            with contextlib.suppress(TypeError):  # naive vs aware timestamps
                return int(a > b) - int(a < b)
    return (left > right) - (left < right)


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | Decimal):
        return str(value)
    return json.dumps(value, default=str)


def _array_items(literal: str) -> list[str]:
    """The items of the ``{a,b}`` literal RT makes of ``in.(a,b)``."""
    return [_unquote(item.strip()) for item in _split_top_level(literal[1:-1])]


def _like(text: str, pattern: str, ignore_case: bool) -> bool:
    regex = "".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in pattern)
    flags = (re.IGNORECASE | re.DOTALL) if ignore_case else re.DOTALL
    return re.fullmatch(regex, text, flags) is not None


@dataclass(frozen=True)
class Condition:
    """One ``column=[not.]op.value`` filter condition (value as RT stores it)."""

    column: str
    op: str
    value: str
    negate: bool

    def log(self) -> str:
        return "{" + ", ".join(map(_inspect, (self.column, self.op, self.value, self.negate))) + "}"

    def matches(self, row: Frame) -> bool:
        """SQL semantics: a NULL comparison matches neither the condition nor its negation."""
        if self.column not in row:
            return False  # e.g. the pk-only old row of a DELETE under REPLICA IDENTITY DEFAULT
        result = self._compare(row[self.column])
        return result is not None and result != self.negate

    def _compare(self, actual: Any) -> bool | None:
        if self.op == "is":
            expected = {"null": None, "true": True, "false": False, "unknown": None}
            return actual is expected.get(self.value.lower(), ...)
        if self.op == "isdistinct":
            return actual is None or _order(_as_text(actual), self.value) != 0
        if actual is None:
            return None
        text = _as_text(actual)
        if self.op == "in":
            return any(_order(text, item) == 0 for item in _array_items(self.value))
        if self.op in ("like", "ilike"):
            return _like(text, self.value, self.op == "ilike")
        if self.op in ("match", "imatch"):
            flags = re.IGNORECASE if self.op == "imatch" else 0
            return re.search(self.value, text, flags) is not None
        cmp = _order(text, self.value)
        return {
            "eq": cmp == 0, "neq": cmp != 0, "lt": cmp < 0, "lte": cmp <= 0, "gt": cmp > 0,
            "gte": cmp >= 0,
        }[self.op]  # fmt: skip


def _parse_segment(segment: str) -> Condition:
    trimmed = segment.strip()
    if not trimmed:
        raise ValueError("filter must not contain empty segments (check for extra commas)")
    column, equals, rest = trimmed.partition("=")
    if not equals:
        raise ValueError(_inspect([trimmed]))
    negate = rest.startswith("not.")
    op_value = rest.removeprefix("not.")
    op, dot, value = op_value.partition(".")
    if not dot:
        raise ValueError(_inspect([op_value]))
    if op not in FILTER_OPS:
        raise ValueError(_inspect([op, value]))
    if op != "in":
        return Condition(column, op, _unquote(value), negate)
    if len(value) < 2 or value[0] != "(" or value[-1] != ")":
        raise ValueError("`in` filter value must be wrapped by parentheses")
    return Condition(column, op, "{" + value[1:-1] + "}", negate)


def parse_filter(text: str) -> tuple[Condition, ...]:
    """Parse a binding's ``filter`` like RT; BindingError with RT's message on a syntax error."""
    if not text.strip():
        return ()
    try:
        return tuple(_parse_segment(s) for s in _split_top_level(text.strip()))
    except ValueError as exc:
        raise BindingError(f"Error parsing `filter` params: {exc}") from None


# ---------------------------------------------------------------------------------- bindings


@dataclass(frozen=True)
class BindingSpec:
    """A parsed binding: RT's ``{action_filter, schema, table, filters, selected_columns}``."""

    event: str
    schema: str
    table: str
    conditions: tuple[Condition, ...] = ()
    select: tuple[str, ...] | None = None

    def params_log(self) -> str:
        filters = "[" + ", ".join(c.log() for c in self.conditions) + "]"
        select = _inspect(list(self.select)) if self.select is not None else "nil"
        return (
            f"event: {self.event}, schema: {self.schema}, table: {self.table}, "
            f"filters: {filters}, select: {select}"
        )

    @classmethod
    def parse(cls, raw: Frame) -> BindingSpec:
        """RT ``parse_subscription_params``; raises BindingError with RT's message."""
        event = raw.get("event")
        action = event.upper() if isinstance(event, str) else "*"
        action = action if action in ("INSERT", "UPDATE", "DELETE") else "*"
        select = cls._parse_select(raw.get("select"))
        schema, table, text = raw.get("schema"), raw.get("table"), raw.get("filter")
        conditions: tuple[Condition, ...] = ()
        if isinstance(schema, str) and isinstance(table, str) and isinstance(text, str):
            conditions = parse_filter(text)
        elif isinstance(schema, str) and isinstance(table, str) and "filter" not in raw:
            pass
        elif isinstance(schema, str) and "table" not in raw and "filter" not in raw:
            table = "*"
        elif isinstance(table, str) and "schema" not in raw and "filter" not in raw:
            schema = "public"
        else:
            raise BindingError(
                "No subscription params provided. Please provide at least a `schema` or "
                f"`table` to subscribe to: {_inspect(raw)}"
            )
        assert isinstance(schema, str)
        assert isinstance(table, str)
        if select is not None and "*" in (schema, table):
            raise BindingError(
                "Column selection is not supported for wildcard subscriptions. "
                "Provide an explicit schema and table name."
            )
        return cls(action, schema, table, conditions, select)

    @staticmethod
    def _parse_select(select: Any) -> tuple[str, ...] | None:
        if isinstance(select, str):
            raise BindingError(
                "Error parsing `select` params: expected a list of column name strings, "
                'e.g. select: ["col1", "col2"]'
            )
        if not isinstance(select, list):
            return None
        return tuple(c for c in select if isinstance(c, str)) or None


@dataclass(frozen=True)
class Change:
    """One captured row change, with ``columns``/``record``/``old_record`` as jsonb text."""

    id: int
    schema: str
    table: str
    type: str
    commit_timestamp: str
    columns: str
    record: str | None
    old_record: str | None

    @cached_property
    def filter_row(self) -> Frame:
        """The row filters are evaluated on: new row for INSERT/UPDATE, old row for DELETE."""
        text = self.old_record if self.type == "DELETE" else self.record
        row: Frame = json.loads(text or "{}", parse_float=Decimal)
        return row

    def encode(self, ids: list[int], topic: str) -> str:
        parts = [
            f'"schema":{_dumps(self.schema)}',
            f'"table":{_dumps(self.table)}',
            f'"commit_timestamp":{_dumps(self.commit_timestamp)}',
            f'"type":{_dumps(self.type)}',
            f'"columns":{self.columns}',
        ]
        if self.record is not None:
            parts.append(f'"record":{self.record}')
        if self.old_record is not None:
            parts.append(f'"old_record":{self.old_record}')
        parts.append('"errors":null')
        data = "{" + ",".join(parts) + "}"
        payload = f'{{"ids":{_dumps(ids)},"data":{data}}}'
        envelope = f'"ref":null,"event":"postgres_changes","payload":{payload}'
        return f'{{{envelope},"topic":{_dumps(topic)}}}'


@dataclass
class Binding:
    """One entry of a join's ``postgres_changes`` list, on one channel."""

    raw: Frame
    spec: BindingSpec | None
    error: str | None  # parse error (sent as system message when subscribing)
    tables: frozenset[tuple[str, str]] = frozenset()  # subscribed tables, once live

    @classmethod
    def from_raw(cls, raw: Frame) -> Binding:
        try:
            return cls(raw, BindingSpec.parse(raw), None)
        except BindingError as exc:
            return cls(raw, None, str(exc))

    @property
    def id(self) -> int:
        return binding_id(self.raw)

    def echo(self) -> Frame:
        return {"id": self.id, **self.raw}

    def matches(self, change: Change) -> bool:
        spec = self.spec
        if spec is None or (change.schema, change.table) not in self.tables:
            return False
        if spec.event not in ("*", change.type):
            return False
        return all(c.matches(change.filter_row) for c in spec.conditions)


# ------------------------------------------------------------------------- change capture

_SETUP_SQL = """
CREATE SCHEMA IF NOT EXISTS realtime_standin;
CREATE TABLE IF NOT EXISTS realtime_standin.changes (
    id               bigserial PRIMARY KEY,
    schema_name      text NOT NULL,
    table_name       text NOT NULL,
    type             text NOT NULL,
    record           jsonb,
    old_record       jsonb,
    replica_identity "char" NOT NULL,
    committed_at     timestamptz NOT NULL DEFAULT now()
);
CREATE OR REPLACE FUNCTION realtime_standin.capture() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET TimeZone = 'UTC'  -- to_jsonb renders timestamptz in the session time zone
AS $$
BEGIN
    INSERT INTO realtime_standin.changes
        (schema_name, table_name, type, record, old_record, replica_identity)
    VALUES (
        TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_OP,
        CASE WHEN TG_OP <> 'DELETE' THEN to_jsonb(NEW) END,
        CASE WHEN TG_OP <> 'INSERT' THEN to_jsonb(OLD) END,
        (SELECT relreplident FROM pg_class WHERE oid = TG_RELID)
    );
    RETURN NULL;
END
$$;
"""

_TRIGGER = "realtime_standin_capture"

# Consume every committed change; apply the replica identity rules (PROTOCOL §5.1) and build
# `columns` from the catalog, all as jsonb text so numbers keep their digits.
_POLL_SQL = """
WITH consumed AS (DELETE FROM realtime_standin.changes RETURNING *)
SELECT c.id, c.schema_name, c.table_name, c.type,
       to_char(c.committed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
           AS commit_timestamp,
       coalesce(cols.columns, '[]'::jsonb)::text AS columns,
       c.record::text AS record,
       CASE WHEN c.old_record IS NULL OR c.replica_identity = 'f' THEN c.old_record
            ELSE coalesce((SELECT jsonb_object_agg(k, c.old_record -> k)
                           FROM unnest(ident.cols) AS k), '{}'::jsonb)
       END::text AS old_record
FROM consumed AS c
CROSS JOIN LATERAL (
    SELECT to_regclass(format('%I.%I', c.schema_name, c.table_name)) AS oid
) AS rel
LEFT JOIN LATERAL (
    SELECT array_agg(a.attname::text) AS cols
    FROM pg_index AS i
    JOIN pg_attribute AS a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
    WHERE i.indrelid = rel.oid
      AND CASE c.replica_identity WHEN 'd' THEN i.indisprimary
                                  WHEN 'i' THEN i.indisreplident
                                  ELSE false END
) AS ident ON true
LEFT JOIN LATERAL (
    SELECT jsonb_agg(jsonb_build_object('name', a.attname, 'type', t.typname)
                     ORDER BY a.attnum) AS columns
    FROM pg_attribute AS a JOIN pg_type AS t ON t.oid = a.atttypid
    WHERE a.attrelid = rel.oid AND a.attnum > 0 AND NOT a.attisdropped
) AS cols ON true
ORDER BY c.id
"""

_PUBLISHED_SQL = """
SELECT schemaname, tablename FROM pg_publication_tables
WHERE pubname = $1
  AND schemaname LIKE (CASE $2 WHEN '*' THEN '%' ELSE $2 END) ESCAPE ''
  AND tablename LIKE (CASE $3 WHEN '*' THEN '%' ELSE $3 END) ESCAPE ''
ORDER BY 1, 2
"""

_COLUMN_TYPE_SQL = """
SELECT format_type(atttypid, atttypmod) FROM pg_attribute
WHERE attrelid = format('%I.%I', $1::text, $2::text)::regclass
  AND attname = $3 AND attnum > 0 AND NOT attisdropped
"""

_CONDITION_NAMES = {
    "22P02": "invalid_text_representation",
    "22007": "invalid_datetime_format",
    "22008": "datetime_field_overflow",
    "22003": "numeric_value_out_of_range",
    "2201B": "invalid_regular_expression",
}


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _postgrex_message(exc: asyncpg.PostgresError) -> str:
    """The text of Postgrex's ``Exception.message/1`` for a server error."""
    name = _CONDITION_NAMES.get(exc.sqlstate)
    if name is None:
        name = re.sub(r"(?<!^)(?=[A-Z])", "_", type(exc).__name__.removesuffix("Error")).lower()
    return f"ERROR {exc.sqlstate} ({name}) {exc.message}"


class ChangeCapture:
    """The database side: trigger + queue table, the poller, and subscription checks.

    Polling (fetch + dispatch) and a channel going live both run under ``exclusive()``, so a
    change is dispatched either before a channel's high-water mark is taken or after the
    channel is live: never lost in between.
    """

    def __init__(
        self, database_url: str, poll_interval_s: float, on_change: Callable[[Change], None]
    ) -> None:
        self._database_url = database_url
        self._poll_interval_s = poll_interval_s
        self._on_change = on_change
        self._conn: asyncpg.Connection | None = None
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._installed: set[tuple[str, str]] = set()

    async def start(self) -> None:
        self._conn = await asyncpg.connect(
            self._database_url,
            server_settings={"TimeZone": "UTC", "application_name": "realtime_standin"},
        )
        await self._conn.execute(_SETUP_SQL)
        await self._install(await self._published("*", "*"))
        self._task = asyncio.create_task(self._poll_forever(), name="realtime-standin-poller")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        async with self._lock:
            yield

    @property
    def conn(self) -> asyncpg.Connection:
        if self._conn is None:
            raise RuntimeError("change capture is not running")
        return self._conn

    async def high_water_mark(self) -> int:
        """The last capture id handed out (committed or not). Call under ``exclusive()``."""
        value = await self.conn.fetchval(
            "SELECT CASE WHEN is_called THEN last_value ELSE 0 END"
            " FROM realtime_standin.changes_id_seq"
        )
        return int(value)

    async def resolve(self, spec: BindingSpec) -> frozenset[tuple[str, str]]:
        """The published tables a binding covers (trigger installed on each), or BindingError
        with RT's message. Call under ``exclusive()``."""
        tables = await self._published(spec.schema, spec.table)
        if not tables:
            raise BindingError(
                "Unable to subscribe to changes with given parameters. Please check Realtime is "
                f"enabled for the given connect parameters: [{spec.params_log()}]"
            )
        for schema, table in tables:
            for condition in spec.conditions:
                if (problem := await self._check_condition(schema, table, condition)) is not None:
                    raise BindingError(
                        "Unable to subscribe to changes with given parameters. An exception "
                        "happened so please check your connect parameters: "
                        f"[{spec.params_log()}]. Exception: {problem}"
                    )
        await self._install(tables)
        return frozenset(tables)

    async def _published(self, schema: str, table: str) -> list[tuple[str, str]]:
        rows = await self.conn.fetch(_PUBLISHED_SQL, PUBLICATION, schema, table)
        return [(row["schemaname"], row["tablename"]) for row in rows]

    async def _check_condition(self, schema: str, table: str, condition: Condition) -> str | None:
        """Like RT's ``subscription_check_filters`` trigger: the column exists, the value casts."""
        type_name = await self.conn.fetchval(_COLUMN_TYPE_SQL, schema, table, condition.column)
        if type_name is None:
            return f"ERROR P0001 (raise_exception) invalid column for filter {condition.column}"
        if condition.op not in ("eq", "neq", "lt", "lte", "gt", "gte", "in", "isdistinct"):
            return None
        target = f"{type_name}[]" if condition.op == "in" else type_name
        try:
            await self.conn.fetchval(f"SELECT ($1::text::{target}) IS NULL", condition.value)
        except asyncpg.PostgresError as exc:
            return _postgrex_message(exc)
        return None

    async def _install(self, tables: list[tuple[str, str]]) -> None:
        for schema, table in tables:
            if (schema, table) in self._installed:
                continue
            exists = await self.conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = $3"
                " AND tgrelid = format('%I.%I', $1::text, $2::text)::regclass)",
                schema,
                table,
                _TRIGGER,
            )
            if not exists:
                with contextlib.suppress(asyncpg.DuplicateObjectError):
                    await self.conn.execute(
                        f"CREATE TRIGGER {_TRIGGER} AFTER INSERT OR UPDATE OR DELETE"
                        f" ON {_quote_ident(schema)}.{_quote_ident(table)}"
                        " FOR EACH ROW EXECUTE FUNCTION realtime_standin.capture()"
                    )
            self._installed.add((schema, table))

    async def _poll_forever(self) -> None:
        while True:
            try:
                await self.poll()
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
                logger.warning("realtime stand-in: polling changes failed: %s", exc)
            await asyncio.sleep(self._poll_interval_s)

    async def poll(self) -> None:
        """Consume the committed changes and hand them to ``on_change`` in capture order."""
        async with self._lock:
            for row in await self.conn.fetch(_POLL_SQL):
                self._on_change(
                    Change(
                        id=row["id"],
                        schema=row["schema_name"],
                        table=row["table_name"],
                        type=row["type"],
                        commit_timestamp=row["commit_timestamp"],
                        columns=row["columns"],
                        record=row["record"],
                        old_record=row["old_record"],
                    )
                )


# ---------------------------------------------------------------------- channels & sockets


@dataclass
class Channel:
    """A joined topic on one socket. Live (``hwm`` set) once ``Subscribed`` was sent."""

    topic: str
    join_ref: str | None
    bindings: list[Binding]
    access_token: str | None
    hwm: int | None = None
    task: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.topic.removeprefix("realtime:")

    @property
    def live(self) -> bool:
        return self.hwm is not None

    def system(self, extension: str, status: str, message: str) -> str:
        payload = {"message": message, "status": status, "extension": extension}
        return _encode(None, "system", {**payload, "channel": self.name}, self.topic)

    def control(self, event: str) -> str:
        """``phx_close`` / ``phx_error``: ref = the join ref, empty payload."""
        return _encode(self.join_ref, event, {}, self.topic)

    def end(self) -> None:
        self.hwm = None
        task, self.task = self.task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    def frame_for(self, change: Change) -> str | None:
        if self.hwm is None or change.id <= self.hwm:
            return None
        ids: list[int] = []
        for binding in reversed(self.bindings):
            if binding.matches(change) and binding.id not in ids:
                ids.append(binding.id)
        return change.encode(ids, self.topic) if ids else None


@dataclass
class _Close:
    code: int
    reason: str


class Connection:
    """One WebSocket: reads and answers client frames; writes through an ordered outbox."""

    def __init__(self, standin: RealtimeStandIn, ws: ServerConnection) -> None:
        self.standin = standin
        self.ws = ws
        self.channels: dict[str, Channel] = {}
        self.open = True  # False once closing/closed: frames are no longer queued or recorded
        self._outbox: asyncio.Queue[str | _Close] = asyncio.Queue()

    # ---- lifecycle

    async def serve(self) -> None:
        writer = asyncio.create_task(self._write_loop())
        try:
            await self._read_loop()
        finally:
            self.open = False
            for channel in self.channels.values():
                channel.end()
            self.channels.clear()
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer

    async def _read_loop(self) -> None:
        while True:
            try:
                async with asyncio.timeout(self.standin.idle_timeout_s):
                    raw = await self.ws.recv()
            except TimeoutError:
                self.close(1000, "")  # Cowboy's idle_timeout closes normally
                continue
            except ConnectionClosed:
                return
            try:
                message = json.loads(raw)
            except ValueError:
                continue
            if isinstance(message, dict):
                self.standin.received.append(message)
                await self._handle(message)

    async def _write_loop(self) -> None:
        try:
            while True:
                item = await self._outbox.get()
                try:
                    if isinstance(item, _Close):
                        await self.ws.close(item.code, item.reason)
                        return
                    await self.ws.send(item)
                finally:
                    self._outbox.task_done()
        except ConnectionClosed:
            pass
        finally:
            self.open = False
            while not self._outbox.empty():
                self._outbox.get_nowait()
                self._outbox.task_done()

    def push(self, text: str) -> None:
        if self.open and not self.standin.mute:
            self.standin.sent.append(json.loads(text))
            self._outbox.put_nowait(text)

    def close(self, code: int, reason: str) -> None:
        """Close after the frames already queued."""
        if self.open:
            self.open = False
            self._outbox.put_nowait(_Close(code, reason))

    def abort(self) -> None:
        self.open = False
        self.ws.transport.abort()

    async def flush(self) -> None:
        """Wait until everything queued so far was written (or the socket went away)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._outbox.join(), _FLUSH_TIMEOUT_S)

    def end_channel(self, channel: Channel, *frames: str) -> None:
        for text in frames:
            self.push(text)
        channel.end()
        if self.channels.get(channel.topic) is channel:
            del self.channels[channel.topic]

    # ---- inbound frames

    def reply(self, topic: Any, ref: Any, status: str, response: Frame) -> None:
        self.push(_encode(ref, "phx_reply", {"status": status, "response": response}, topic))

    async def _handle(self, message: Frame) -> None:
        topic, event, ref = message.get("topic"), message.get("event"), message.get("ref")
        payload = message.get("payload")
        payload = payload if isinstance(payload, dict) else {}
        if event == "phx_join":
            await self._join(topic, ref, payload)
        elif topic == "phoenix" and event == "heartbeat":
            self.reply(topic, ref, "ok", {})
        elif isinstance(topic, str) and (channel := self.channels.get(topic)) is not None:
            self._channel_event(channel, event, ref, payload)
        elif event == "phx_leave":
            self.reply(topic, ref, "ok", {})  # Phoenix answers a leave of an unknown topic ok
        else:
            self.reply(topic, ref, "error", {"reason": "unmatched topic"})

    def _channel_event(self, channel: Channel, event: Any, ref: Any, payload: Frame) -> None:
        if event == "phx_leave":
            self.reply(channel.topic, ref, "ok", {})
            self.end_channel(channel, channel.control("phx_close"))
        elif event == "access_token":
            self._refresh_token(channel, payload.get("access_token"))
        # broadcast / presence / anything else: not supported, no reply

    async def _join(self, topic: Any, ref: Any, payload: Frame) -> None:
        if not isinstance(topic, str) or not topic.startswith("realtime:"):
            self.reply(topic, ref, "error", {"reason": "unmatched topic"})
            return
        standin = self.standin
        if standin.withhold_join_replies:
            return
        if standin.join_reply_delay_s > 0:  # like Phoenix, the socket waits for the join
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.ws.wait_closed(), standin.join_reply_delay_s)
        if not self.open:
            return
        previous = self.channels.pop(topic, None)
        if previous is not None:
            previous.end()
        channel = None
        if topic == "realtime:":
            self.reply(topic, ref, "error", {"reason": TOPIC_NAME_REQUIRED})
        elif standin.join_error is not None:
            self.reply(topic, ref, "error", {"reason": standin.join_error})
        else:
            channel = self._open_channel(topic, ref, payload)
            echoed = [binding.echo() for binding in channel.bindings]
            self.reply(topic, ref, "ok", {"postgres_changes": echoed})
        if previous is not None:
            self.push(previous.control("phx_close"))
        if channel is not None and channel.bindings:
            channel.task = standin.spawn(self._subscribe(channel))

    def _open_channel(self, topic: str, ref: Any, payload: Frame) -> Channel:
        config = payload.get("config")
        raws = config.get("postgres_changes") if isinstance(config, dict) else None
        bindings = [Binding.from_raw(raw) for raw in raws or [] if isinstance(raw, dict)]
        token = payload.get("access_token")
        channel = Channel(topic, ref, bindings, token if isinstance(token, str) else None)
        self.channels[topic] = channel
        return channel

    def _refresh_token(self, channel: Channel, token: Any) -> None:
        if not isinstance(token, str) or token.startswith("sb_") or token == channel.access_token:
            return
        channel.access_token = token
        if not channel.bindings:
            return
        if channel.live:
            channel.task = self.standin.spawn(self._resubscribed(channel))
        elif channel.task is None or channel.task.done():
            channel.task = self.standin.spawn(self._subscribe(channel))

    # ---- going live

    async def _resubscribed(self, channel: Channel) -> None:
        await asyncio.sleep(self.standin.subscribe_delay_s)
        self.push(channel.system("postgres_changes", "ok", SUBSCRIBED))

    async def _subscribe(self, channel: Channel) -> None:
        """Subscribe the channel's bindings; it goes live when ``Subscribed`` is queued."""
        standin = self.standin
        await asyncio.sleep(standin.subscribe_delay_s)
        capture = standin.capture
        async with capture.exclusive():
            errors = [b.error for b in channel.bindings if b.error is not None]
            tables: list[frozenset[tuple[str, str]]] = []
            for spec in (binding.spec for binding in channel.bindings):
                try:
                    tables.append(await capture.resolve(spec) if spec else frozenset())
                except BindingError as exc:
                    errors.append(str(exc))
                    tables.append(frozenset())
            if errors and not standin.isolate_binding_errors:
                errors, tables = errors[:1], []  # one transaction in RT: all or nothing
            for error in errors:
                self.push(channel.system("postgres_changes", "error", error))
            if any(tables):
                for binding, covered in zip(channel.bindings, tables, strict=True):
                    binding.tables = covered
                channel.hwm = await capture.high_water_mark()
                self.push(channel.system("postgres_changes", "ok", SUBSCRIBED))


# ------------------------------------------------------------------------------ the server


def _http_response(status: int, body: bytes = b"", content_type: str | None = None) -> Response:
    headers = Headers([("Connection", "close"), ("Content-Length", str(len(body)))])
    if content_type is not None:
        headers["Content-Type"] = content_type
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Unknown"
    return Response(status, phrase, headers, body)


def _json_error(status: int, message: str) -> Response:
    return _http_response(status, _dumps({"error": message}).encode(), "application/json")


class RealtimeStandIn:
    """The Realtime server, for tests: see the module docstring. Runs on the current loop."""

    def __init__(
        self,
        database_url: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        poll_interval_s: float = 0.05,
        subscribe_delay_s: float = 0.05,
        idle_timeout_s: float = 60.0,
        isolate_binding_errors: bool = False,
    ) -> None:
        self.database_url = database_url
        self.host = host
        self.port = port  # the bound port once started; a restart reuses it
        self.poll_interval_s = poll_interval_s
        self.subscribe_delay_s = subscribe_delay_s
        self.idle_timeout_s = idle_timeout_s
        self.isolate_binding_errors = isolate_binding_errors
        # observation
        self.received: list[Frame] = []
        self.sent: list[Frame] = []
        self.connection_count = 0
        # faults
        self.withhold_join_replies = False
        self.join_reply_delay_s = 0.0
        self.join_error: str | None = None
        self.refuse_connections: int | None = None
        # When True, nothing is sent (not even heartbeat replies) while sockets stay open:
        # a server or network path that went silent without closing anything.
        self.mute = False
        # internals
        self._server: Server | None = None
        self._capture: ChangeCapture | None = None
        self._connections: list[Connection] = []
        self._tasks: set[asyncio.Task[None]] = set()

    # ---- lifecycle

    @property
    def url(self) -> str:
        """``http://host:port``: what SUPABASE_URL is set to (clients append /realtime/v1)."""
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        """The socket URL without query string (add ``?apikey=...&vsn=1.0.0``)."""
        return f"ws://{self.host}:{self.port}{SOCKET_PATHS[0]}"

    @property
    def capture(self) -> ChangeCapture:
        if self._capture is None:
            raise RuntimeError("RealtimeStandIn has not been started")
        return self._capture

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("RealtimeStandIn is already running")
        capture = ChangeCapture(self.database_url, self.poll_interval_s, self._dispatch)
        await capture.start()
        self._capture = capture
        try:
            self._server = await serve(
                self._handle,
                self.host,
                self.port,
                process_request=self._process_request,
                compression=None,
                ping_interval=None,
                max_size=_MAX_FRAME_BYTES,
            )
        except BaseException:
            await self._stop_capture()
            raise
        self.port = next(iter(self._server.sockets)).getsockname()[1]

    async def stop(self) -> None:
        """Close every socket (1001), cancel pending work, stop polling. Idempotent."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()
        while tasks := list(self._tasks):
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        await self._stop_capture()

    async def _stop_capture(self) -> None:
        capture, self._capture = self._capture, None
        if capture is not None:
            await capture.stop()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ---- observation

    def live_bindings(self) -> set[tuple[str, str, str]]:
        """``(schema, table, event)`` of every binding live now (event ``*`` or a type)."""
        return {
            (schema, table, binding.spec.event)
            for channel in self._channels()
            if channel.live
            for binding in channel.bindings
            if binding.spec is not None
            for schema, table in binding.tables
        }

    async def wait_until_live(
        self, schema: str, table: str, event: str = "*", timeout_s: float = 10
    ) -> None:
        """Until a binding on ``schema.table`` is live: any binding for ``event="*"``,
        else one whose event is ``event`` or ``*``."""

        def covered() -> bool:
            return any(
                (s, t) == (schema, table) and (event == "*" or e in ("*", event.upper()))
                for s, t, e in self.live_bindings()
            )

        await self._wait(covered, timeout_s, lambda: f"live bindings: {self.live_bindings()}")

    async def wait_for_sent(
        self, predicate: Callable[[Frame], bool], timeout_s: float = 10, *, start: int = 0
    ) -> Frame:
        """The first frame of ``sent[start:]`` matching ``predicate``, waiting for it."""
        found: list[Frame] = []

        def seen() -> bool:
            found.extend(f for f in self.sent[start:] if predicate(f))
            return bool(found)

        await self._wait(seen, timeout_s, lambda: f"sent frames: {self.sent[start:]}")
        return found[0]

    async def _wait(
        self, condition: Callable[[], bool], timeout_s: float, describe: Callable[[], str]
    ) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not condition():
            if loop.time() >= deadline:
                raise TimeoutError(f"not reached within {timeout_s}s; {describe()}")
            await asyncio.sleep(_WAIT_STEP_S)

    # ---- faults

    async def drop_connections(self) -> None:
        """Abort every TCP connection: no close frame (the client sees 1006)."""
        connections = list(self._connections)
        for connection in connections:
            connection.abort()
        await asyncio.gather(*(c.ws.wait_closed() for c in connections))

    async def close_connections(self, code: int, reason: str = "") -> None:
        """Close every socket with ``code`` (1000, 1001, 1012, ...) after queued frames."""
        connections = list(self._connections)
        for connection in connections:
            connection.close(code, reason)
        await asyncio.gather(*(c.ws.wait_closed() for c in connections))

    async def send_phx_error(self, topic: str | None = None) -> None:
        """``phx_error`` (ref = join ref) on every joined channel, or on ``topic``; each
        subscription ends, as when the channel process crashes."""
        for connection, channel in self._joined(topic):
            connection.end_channel(channel, channel.control("phx_error"))
        await self._flush()

    async def send_system_error_and_close(
        self, message: str = "Token has expired 0 seconds ago", topic: str | None = None
    ) -> None:
        """A channel-level ``system`` error (extension ``system``), then ``phx_close``."""
        for connection, channel in self._joined(topic):
            error = channel.system("system", "error", message)
            connection.end_channel(channel, error, channel.control("phx_close"))
        await self._flush()

    async def send_postgres_changes_error(self, message: str, topic: str | None = None) -> None:
        """A ``postgres_changes`` ``system`` error; the channel stays joined and live."""
        for connection, channel in self._joined(topic):
            connection.push(channel.system("postgres_changes", "error", message))
        await self._flush()

    async def send_server_disconnect(self) -> None:
        """``Server requested disconnect`` (no ``channel`` key) on each channel, then 1012."""
        connections = list(self._connections)
        for connection in connections:
            for channel in list(connection.channels.values()):
                payload = {"message": "Server requested disconnect", "status": "ok"}
                frame = _encode(None, "system", {**payload, "extension": "system"}, channel.topic)
                connection.push(frame)
            connection.close(1012, "")
        await asyncio.gather(*(c.ws.wait_closed() for c in connections))

    # ---- internals

    def _channels(self) -> Iterator[Channel]:
        for connection in self._connections:
            yield from connection.channels.values()

    def _joined(self, topic: str | None) -> list[tuple[Connection, Channel]]:
        if topic is not None and not topic.startswith("realtime:"):
            topic = f"realtime:{topic}"
        return [
            (connection, channel)
            for connection in self._connections
            for channel in list(connection.channels.values())
            if topic is None or channel.topic == topic
        ]

    async def _flush(self) -> None:
        await asyncio.gather(*(c.flush() for c in self._connections))

    def _dispatch(self, change: Change) -> None:
        for connection in self._connections:
            for channel in connection.channels.values():
                if (text := channel.frame_for(change)) is not None:
                    connection.push(text)

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if self.refuse_connections is not None:
            status = self.refuse_connections
            try:
                return _json_error(status, HTTPStatus(status).phrase)
            except ValueError:
                return _json_error(status, "Refused")
        url = urlsplit(request.path)
        if url.path not in SOCKET_PATHS:
            return _json_error(404, "Not Found")
        query = parse_qs(url.query)
        if query.get("vsn", ["1.0.0"])[-1] != "1.0.0":
            return _http_response(403)
        if not query.get("apikey") and "x-api-key" not in request.headers:
            return _json_error(401, "No apikey provided")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        self.connection_count += 1
        connection = Connection(self, ws)
        self._connections.append(connection)
        try:
            await connection.serve()
        finally:
            self._connections.remove(connection)
