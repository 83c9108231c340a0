"""Flow store: load flow definitions (from the database or a flows file) and prepare them.

Preparing compiles each flow's rules and checks its actions; a flow that cannot work
is refused with one log line and left out, and every other flow runs.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import asyncpg
import pydantic

from flowd import act, flowfiles
from flowd.catalog import Catalog, Table, quote_ident
from flowd.errors import ConfigurationError, FlowDefinitionError, FlowFileError, first_problem
from flowd.flowfiles.read import LegacyFlow, ReadFlow
from flowd.logs import get_logger
from flowd.models import Flow, parse_flow
from flowd.policy import TablePolicy
from flowd.rules import CompiledFlow, FlowIndex, compile_flow
from flowd.rules.cron import Schedule, schedule_of

log = get_logger()

_FLOWS_SQL = """
SELECT f.flow_id, f.key, f.name, f.trigger_table, f.trigger_event, f.is_enabled, f.match,
       f.schedule, f.schedule_tz,
       COALESCE((SELECT jsonb_agg(jsonb_build_object('rule_id', r.rule_id, 'field', r.field,
                                                     'operator', r.operator, 'value', r.value)
                                  ORDER BY r.rule_id)
                 FROM {schema}.rules r WHERE r.flow_id = f.flow_id), '[]') AS rules,
       COALESCE((SELECT jsonb_agg(jsonb_build_object('action_id', a.action_id, 'type', a.type,
                                                     'config', a.config, 'position', a.position)
                                  ORDER BY a.position, a.action_id)
                 FROM {schema}.actions a WHERE a.flow_id = f.flow_id), '[]') AS actions
FROM {schema}.flows f
ORDER BY f.flow_id
"""

Loaded = Flow | FlowDefinitionError


@dataclass(frozen=True, slots=True)
class ScheduledFlow:
    """A SCHEDULE flow: its compiled rules, its schedule, and its table (None: unknown)."""

    compiled: CompiledFlow
    schedule: Schedule
    table: Table | None

    @property
    def flow(self) -> Flow:
        return self.compiled.flow


@dataclass(frozen=True)
class FlowSet:
    """The flows that run: their classifier index and prepared actions, and those refused.

    SCHEDULE flows are in `schedules`, not in the index: no change event runs them, and
    their tables need no Realtime binding or capture trigger (`tables` is for those).
    """

    index: FlowIndex
    actions: Mapping[int, tuple[act.PreparedAction[Any], ...]]
    refused: tuple[FlowDefinitionError, ...] = ()
    by_id: Mapping[int, Flow] = field(default_factory=dict)
    tables: Mapping[tuple[str, str], Table] = field(default_factory=dict)  # trigger tables
    schedules: Mapping[int, ScheduledFlow] = field(default_factory=dict)
    compiled: Mapping[int, CompiledFlow] = field(default_factory=dict)  # every flow that runs


def _flow_from(row: Mapping[str, Any]) -> Loaded:
    try:
        return parse_flow(row)
    except pydantic.ValidationError as exc:
        return FlowDefinitionError(int(row.get("flow_id", 0)), *first_problem(exc, "definition"))


class DatabaseFlows:
    """Reads the flows of the database; a row unchanged since the last read is not parsed again.

    The daemon reads every flow at each reload: parsing them all anew would only make
    garbage, the heap would grow by it, and the process keep what it grew by.
    """

    def __init__(self) -> None:
        self._parsed: dict[bytes, Flow] = {}  # by the digest of the row it was parsed from

    async def load(self, pool: asyncpg.Pool | asyncpg.Connection, schema: str) -> list[Loaded]:
        """Every flow in `flows` with its rules and actions (disabled ones too)."""
        try:
            rows = await pool.fetch(_FLOWS_SQL.format(schema=quote_ident(schema)))
        except (asyncpg.UndefinedTableError, asyncpg.UndefinedColumnError):
            raise ConfigurationError(
                f"flowd's tables are not in schema {schema}: run `flowd migrate` first"
            ) from None
        loaded, parsed = [], {}
        for row in rows:
            # The values are ints, text, booleans and NULLs, whose repr tells them apart.
            digest = hashlib.blake2b(repr(tuple(row.values())).encode(), digest_size=16).digest()
            flow = self._parsed.get(digest) or _flow_from(
                {**row, "rules": _json(row["rules"]), "actions": _json(row["actions"])}
            )
            # A refusal is made anew each time: raised again, one object would gather tracebacks.
            if isinstance(flow, Flow):
                parsed[digest] = flow
            loaded.append(flow)
        self._parsed = parsed
        return loaded


def _json(text: str) -> Any:
    """Parsed JSON whose object keys and text values are interned: flows kept for the
    daemon's life repeat them (fields, operators, action types, config keys, often URLs)."""
    return json.loads(text, object_pairs_hook=_interned)


def _interned(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    return {
        sys.intern(key): sys.intern(value) if isinstance(value, str) else value
        for key, value in pairs
    }


def load_from_file(path: Path) -> list[Loaded]:
    """Flows from a flows file or a directory of them (`flowd.flowfiles`).

    A flow written with a key and no flow_id gets a stand-in id, minus its place in the
    file(s), until `with_stored_ids` gives it the id of the database's flow of that key.
    """
    loaded: list[Loaded] = []
    for number, entry in enumerate(flowfiles.read_flows(path).entries, start=1):
        if isinstance(entry, LegacyFlow):
            loaded.append(_flow_from(entry.entry))
        elif isinstance(entry, ReadFlow):
            loaded.append(entry.spec.to_flow(-number))
        else:
            loaded.append(FlowFileError(-number, entry.location, entry.reason, entry.line()))
    return loaded


def _stand_in(flow: Flow) -> bool:
    """Whether `flow` is a flows file's keyed flow under its stand-in id."""
    return flow.key is not None and flow.flow_id < 0


async def with_stored_ids(
    loaded: list[Loaded], database: asyncpg.Pool | asyncpg.Connection, schema: str
) -> list[Loaded]:
    """`loaded` with each keyed flow under the id of the database's flow of its key (if any)."""
    keys = [item.key for item in loaded if isinstance(item, Flow) and _stand_in(item)]
    if not keys:
        return loaded
    try:
        rows = await database.fetch(
            f"SELECT key, flow_id FROM {quote_ident(schema)}.flows WHERE key = ANY($1::text[])",
            keys,
        )
    except (asyncpg.UndefinedTableError, asyncpg.UndefinedColumnError):
        raise ConfigurationError(
            f"flowd's tables in schema {schema} have no flow keys: run `flowd migrate` first"
        ) from None
    ids = {row["key"]: row["flow_id"] for row in rows}
    return [
        replace(item, flow_id=ids[item.key])
        if isinstance(item, Flow) and _stand_in(item) and item.key in ids
        else item
        for item in loaded
    ]


async def require_stored(
    database: asyncpg.Pool | asyncpg.Connection, schema: str, flows: FlowSet, path: str
) -> None:
    """ConfigurationError unless every flow of a flows file that would run is also in the
    database: its executions are recorded there, under its flow id."""
    try:
        stored = await database.fetch(
            f"SELECT flow_id FROM {quote_ident(schema)}.flows WHERE flow_id = ANY($1::bigint[])",
            list(flows.by_id),
        )
    except asyncpg.UndefinedTableError:
        raise ConfigurationError(
            f"flowd's tables are not in schema {schema}: run `flowd migrate` first"
        ) from None
    known = {row["flow_id"] for row in stored}
    missing = [flows.by_id[flow_id] for flow_id in sorted(set(flows.by_id) - known)]
    keys = [str(flow.key) for flow in missing if _stand_in(flow)]
    ids = [str(flow.flow_id) for flow in missing if not _stand_in(flow)]
    if missing:
        named = ([f"key(s) {', '.join(keys)}"] if keys else []) + (
            [f"id(s) {', '.join(ids)}"] if ids else []
        )
        raise ConfigurationError(
            f"flows file {path}: flow {' and '.join(named)} are not in the"
            " database, where their executions would be recorded: load them into the database"
            " first (or use --dry-run)"
        )


async def _compile(
    flow: Flow, catalog: Catalog | None, previous: FlowSet | None, policy: TablePolicy
) -> tuple[CompiledFlow, tuple[act.PreparedAction[Any], ...]]:
    if (refusal := policy.trigger_refusal(*flow.table_ref)) is not None:
        raise FlowDefinitionError(flow.flow_id, "trigger_table", refusal)
    if flow.is_scheduled:
        schedule_of(flow)  # refuse a bad expression here, with the rest of the definition
    # A reload re-reads every flow: an unchanged one keeps its compiled rules and actions,
    # so that reloading allocates (and fragments the heap with) only what changed.
    known = previous.compiled.get(flow.flow_id) if previous is not None else None
    if previous is None or known is None or known.flow != flow:
        return compile_flow(flow), await act.prepare(flow, catalog, policy)
    prepared = previous.actions[flow.flow_id]
    if any(p.kind.needs_database for p in prepared):
        # Checked again: its table may have changed, and the schemas it may write with it.
        prepared = await act.prepare(flow, catalog, policy)
    return known, prepared


async def _scheduled(compiled: CompiledFlow, catalog: Catalog | None) -> ScheduledFlow:
    table = await catalog.table(*compiled.flow.table_ref) if catalog is not None else None
    return ScheduledFlow(compiled, schedule_of(compiled.flow), table)


async def prepare(
    loaded: Iterable[Loaded],
    catalog: Catalog | None,
    previous: FlowSet | None = None,
    policy: TablePolicy | None = None,
) -> FlowSet:
    """Compile and check the enabled flows; log and leave out each one that cannot work.

    With `previous` (a reload), a flow whose new definition is refused keeps running
    its last good definition. `policy` says where flows may watch and write (by default
    flowd's schema is `public` and FLOWD_DB_UPDATE_SCHEMAS is unset).
    """
    loaded = list(loaded)
    policy = (policy or TablePolicy("public")).watching(
        item for item in loaded if isinstance(item, Flow) and item.is_enabled
    )
    refused: list[FlowDefinitionError] = []
    compiled: list[CompiledFlow] = []
    actions: dict[int, tuple[act.PreparedAction[Any], ...]] = {}
    for item in loaded:
        if isinstance(item, Flow) and not item.is_enabled:
            continue
        try:
            if isinstance(item, FlowDefinitionError):
                raise item
            flow, prepared = await _compile(item, catalog, previous, policy)
        except FlowDefinitionError as problem:
            refused.append(problem)
            if (kept := _refused(problem, previous)) is None:
                continue
            flow, prepared = kept
        compiled.append(flow)
        actions[flow.flow.flow_id] = prepared
    by_id = {c.flow.flow_id: c for c in compiled}
    if previous is not None and _same(by_id, previous.compiled):
        index = previous.index  # nothing changed: building it again would only churn memory
    else:
        index = FlowIndex(c for c in compiled if not c.flow.is_scheduled)
    schedules = {
        c.flow.flow_id: await _scheduled(c, catalog) for c in compiled if c.flow.is_scheduled
    }
    tables: dict[tuple[str, str], Table] = {}
    if catalog is not None:
        for schema, name, _ in index.bindings():
            if (table := await catalog.table(schema, name)) is not None:
                tables[(schema, name)] = table
    return FlowSet(
        index=index,
        actions=actions,
        refused=tuple(refused),
        by_id={c.flow.flow_id: c.flow for c in compiled if c.flow.is_enabled},
        tables=tables,
        schedules=schedules,
        compiled=by_id,
    )


def _refused(
    problem: FlowDefinitionError, previous: FlowSet | None
) -> tuple[CompiledFlow, tuple[act.PreparedAction[Any], ...]] | None:
    """Log the refusal; the flow's last good definition, which keeps running, if any."""
    last_good = previous.compiled.get(problem.flow_id) if previous else None
    log.error(
        "flow.refused",
        flow_id=problem.flow_id,
        where=problem.where,
        reason=problem.reason,
        kept_previous_definition=last_good is not None,
    )
    if last_good is None or previous is None:
        return None
    return last_good, previous.actions[problem.flow_id]


def _same(compiled: Mapping[int, CompiledFlow], previous: Mapping[int, CompiledFlow]) -> bool:
    """The very same compiled flows (not merely equal ones): an index of one is of both."""
    return compiled.keys() == previous.keys() and all(
        compiled[flow_id] is previous[flow_id] for flow_id in compiled
    )
