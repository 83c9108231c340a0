"""Catalog: what Postgres says about a table (columns, types, primary key, replica identity).

Names from flow definitions are only ever compared with catalog rows through bound
parameters; SQL that flowd builds uses the catalog's names, quoted.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

REALTIME_PUBLICATION = "supabase_realtime"

_TABLE_SQL = """
SELECT a.attname AS name,
       t.typname AS typname,
       format_type(a.atttypid, a.atttypmod) AS sql_type,
       coalesce(a.attnum = ANY (i.indkey), false) AS in_primary_key,
       c.relreplident = 'f' AS replica_identity_full
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_index i ON i.indrelid = c.oid AND i.indisprimary
WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')
ORDER BY a.attnum
"""

_RELKIND_SQL = """
SELECT c.relkind::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = $1 AND c.relname = $2
"""
_RELKINDS = {
    "v": "a view",
    "m": "a materialized view",
    "f": "a foreign table",
    "S": "a sequence",
    "i": "an index",
    "I": "an index",
    "c": "a composite type",
    "t": "a TOAST table",
}

_PUBLICATION_SQL = """
SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1) AS publication_exists,
       EXISTS (SELECT 1 FROM pg_publication_tables
               WHERE pubname = $1 AND schemaname = $2 AND tablename = $3) AS table_published
"""


def is_system_schema(schema: str) -> bool:
    """`pg_catalog`, `pg_toast`, `pg_temp_N`... (Postgres reserves `pg_`) or information_schema."""
    return schema.lower().startswith("pg_") or schema.lower() == "information_schema"


def quote_ident(name: str) -> str:
    """`name` as a quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    typname: str
    sql_type: str


@dataclass(frozen=True, slots=True)
class Table:
    schema: str
    name: str
    columns: dict[str, Column]
    primary_key: tuple[str, ...]
    replica_identity_full: bool

    @property
    def qualified(self) -> str:
        return f"{quote_ident(self.schema)}.{quote_ident(self.name)}"

    @property
    def column_types(self) -> dict[str, str]:
        return {name: column.typname for name, column in self.columns.items()}


class Catalog:
    """Reads tables from `pg_catalog`, once each per instance."""

    def __init__(self, connection: asyncpg.Connection | asyncpg.Pool) -> None:
        self._connection = connection
        self._tables: dict[tuple[str, str], Table | None] = {}

    async def table(self, schema: str, name: str) -> Table | None:
        """The table `schema.name`, or None when there is no such table."""
        key = (schema, name)
        if key not in self._tables:
            rows = await self._connection.fetch(_TABLE_SQL, schema, name)
            self._tables[key] = (
                Table(
                    schema=schema,
                    name=name,
                    columns={
                        r["name"]: Column(r["name"], r["typname"], r["sql_type"]) for r in rows
                    },
                    primary_key=tuple(r["name"] for r in rows if r["in_primary_key"]),
                    replica_identity_full=bool(rows[0]["replica_identity_full"]),
                )
                if rows
                else None
            )
        return self._tables[key]

    async def not_a_table(self, schema: str, name: str) -> str | None:
        """What `schema.name` is when it exists but is no plain table (a view...), else None."""
        relkind = await self._connection.fetchval(_RELKIND_SQL, schema, name)
        return None if relkind is None else _RELKINDS.get(str(relkind), "not a table")

    async def publication_problem(self, schema: str, name: str) -> str | None:
        """Why Realtime would not send this table's changes, or None."""
        row = await self._connection.fetchrow(_PUBLICATION_SQL, REALTIME_PUBLICATION, schema, name)
        assert row is not None
        if not row["publication_exists"]:
            return (
                f"publication {REALTIME_PUBLICATION} does not exist (is this a Supabase project?)"
            )
        if not row["table_published"]:
            return (
                f"table {schema}.{name} is not in publication {REALTIME_PUBLICATION}: "
                f"ALTER PUBLICATION {REALTIME_PUBLICATION} ADD TABLE "
                f"{quote_ident(schema)}.{quote_ident(name)};"
            )
        return None
