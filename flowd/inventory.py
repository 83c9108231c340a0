"""What the database holds of flows, for people: every flow as a flows file writes it
(`flowd flows export`), a line of each with its last day's executions (`flowd flows list`),
and a flow switched on or off (`flowd flows enable|disable`).
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from flowd.catalog import quote_ident
from flowd.errors import ConfigurationError, FlowDefinitionError, NotFound
from flowd.flowfiles import FlowSpec, derive_keys, spec_of
from flowd.flows import DatabaseFlows
from flowd.history.queries import FlowRef, resolve_flow
from flowd.models import Flow

_SUMMARY_SQL = """
SELECT f.flow_id, f.key, f.name, f.trigger_table, f.trigger_event, f.is_enabled,
       COALESCE((SELECT string_agg(concat_ws(' ', r.field, r.operator, r.value),
                                   CASE WHEN upper(btrim(f.match)) = 'ANY' THEN ' OR '
                                        ELSE ' AND ' END
                                   ORDER BY r.rule_id)
                 FROM {schema}.rules r WHERE r.flow_id = f.flow_id), '') AS rules,
       last_day.executions, last_day.failures
FROM {schema}.flows f
CROSS JOIN LATERAL (
    SELECT count(*) AS executions, count(*) FILTER (WHERE e.status = 'FAILURE') AS failures
    FROM {schema}.flow_executions e
    WHERE e.flow_id = f.flow_id AND e.triggered_at > now() - interval '24 hours'
) last_day
ORDER BY f.flow_id
"""


@dataclass(frozen=True, slots=True)
class Exported:
    """The flows of the database as files write them (by key), and those that cannot be."""

    flows: list[FlowSpec]
    derived: dict[str, Flow]  # the flows with no key of their own, by the key made for them
    refused: list[FlowDefinitionError]


async def export_flows(database: asyncpg.Pool | asyncpg.Connection, schema: str) -> Exported:
    """Every flow, in key order; a flow without a key gets one made of its name (only here:
    the database keeps none)."""
    loaded = await DatabaseFlows().load(database, schema)
    flows = [item for item in loaded if isinstance(item, Flow)]
    keys = derive_keys(flows)
    specs = sorted((spec_of(flow, keys[flow.flow_id]) for flow in flows), key=lambda s: s.key)
    derived = {keys[flow.flow_id]: flow for flow in flows if flow.key is None}
    refused = [item for item in loaded if isinstance(item, FlowDefinitionError)]
    return Exported(specs, derived, refused)


@dataclass(frozen=True, slots=True)
class FlowSummary:
    flow_id: int
    key: str | None
    name: str
    trigger_table: str
    trigger_event: str
    is_enabled: bool
    rules: str  # each rule as `field operator value`, joined by AND (match ALL) or OR (ANY)
    executions: int  # in the last 24 hours
    failures: int  # of those, the ones that ended FAILURE


async def summaries(database: asyncpg.Pool | asyncpg.Connection, schema: str) -> list[FlowSummary]:
    """A summary of each flow, in flow id order (one query)."""
    try:
        rows = await database.fetch(_SUMMARY_SQL.format(schema=quote_ident(schema)))
    except (asyncpg.UndefinedTableError, asyncpg.UndefinedColumnError):
        raise ConfigurationError(
            f"flowd's tables are not in schema {schema} (or not the latest):"
            " run `flowd migrate` first"
        ) from None
    return [FlowSummary(**dict(row)) for row in rows]


_SET_ENABLED_SQL = (
    "UPDATE {schema}.flows SET is_enabled = $2, updated_at = now()"
    " WHERE flow_id = $1 AND is_enabled IS DISTINCT FROM $2 RETURNING flow_id"
)


async def set_enabled(
    database: asyncpg.Pool | asyncpg.Connection, schema: str, reference: str, enabled: bool
) -> tuple[FlowRef, bool]:
    """Switch the flow a key (or numeric id) names on or off; whether that changed it.

    A running flowd hears of the change (the flows tables' notice) and reloads at once.
    """
    flow = await resolve_flow(database, schema, reference)
    if flow.name is None:  # only executions still name it
        raise NotFound(f"no flow with key or id {reference!r}")
    statement = _SET_ENABLED_SQL.format(schema=quote_ident(schema))
    changed = await database.fetchval(statement, flow.flow_id, enabled)
    return flow, changed is not None
