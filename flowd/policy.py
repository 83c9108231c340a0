"""Where flows may watch and write: never flowd's own tables, never the system's schemas.

A flow's trigger table may not be one of flowd's own tables (a capture trigger on
`flow_events` captures itself; a flow on `flow_executions` fires on its own records)
nor in a system schema. A DB_UPDATE may write only in the schemas of
FLOWD_DB_UPDATE_SCHEMAS — by default `public` and the schemas of the enabled flows'
trigger tables, where Supabase's own schemas (`auth`, `storage`...) count only when
listed — and never in a system schema or one of flowd's tables, whatever is listed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from flowd.catalog import is_system_schema
from flowd.config import Settings
from flowd.migrate import own_objects
from flowd.models import Flow

SUPABASE_SCHEMAS = frozenset(
    {
        "auth",
        "storage",
        "realtime",
        "_realtime",
        "supabase_functions",
        "supabase_migrations",
        "vault",
        "net",
        "cron",
        "extensions",
        "graphql",
        "graphql_public",
        "pgsodium",
        "pgsodium_masks",
        "pgbouncer",
        "_analytics",
        "_supavisor",
    }
)
_SETTING = "FLOWD_DB_UPDATE_SCHEMAS"


@dataclass(frozen=True, slots=True)
class TablePolicy:
    flowd_schema: str
    listed: frozenset[str] | None = None  # FLOWD_DB_UPDATE_SCHEMAS; None: the default
    watched: frozenset[str] = frozenset()  # schemas of the enabled flows' trigger tables

    @classmethod
    def from_settings(cls, settings: Settings) -> TablePolicy:
        return cls(settings.schema_name, settings.db_update_schema_set)

    def watching(self, flows: Iterable[Flow]) -> TablePolicy:
        """This policy with these flows' trigger tables' schemas watched too."""
        added = {flow.table_ref[0] for flow in flows}
        return self if added <= self.watched else replace(self, watched=self.watched | added)

    @property
    def update_schemas(self) -> frozenset[str]:
        if self.listed is not None:
            return self.listed
        return frozenset({"public"}) | {
            schema
            for schema in self.watched
            if schema not in SUPABASE_SCHEMAS and not is_system_schema(schema)
        }

    def _own(self, schema: str, name: str) -> bool:
        return schema == self.flowd_schema and name in own_objects().tables

    def trigger_refusal(self, schema: str, name: str) -> str | None:
        """Why a flow may not watch `schema.name`, or None."""
        if self._own(schema, name):
            return f"{schema}.{name} is one of flowd's own tables, which no flow may watch"
        if is_system_schema(schema):
            return f"{schema}.{name} is in system schema {schema}, which no flow may watch"
        return None

    def update_refusal(self, schema: str, name: str) -> str | None:
        """Why a DB_UPDATE may not write `schema.name`, or None."""
        if self._own(schema, name):
            return f"table {schema}.{name} is one of flowd's own tables: no DB_UPDATE writes them"
        if is_system_schema(schema):
            return f"table {schema}.{name} is in system schema {schema}: no DB_UPDATE writes there"
        allowed = self.update_schemas
        if schema in allowed:
            return None
        now = ", ".join(sorted(allowed)) or "none"
        whose = "Supabase's own schema" if schema in SUPABASE_SCHEMAS else "schema"
        return (
            f"table {schema}.{name} is in {whose} {schema}, where DB_UPDATE may not write:"
            f" list {schema} in {_SETTING} to allow it (allowed now: {now})"
        )
