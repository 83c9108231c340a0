"""Migrations: apply the SQL files of `migrations/`, each once, in order.

Each file runs in its own transaction under a transaction-level advisory lock (so two
`flowd migrate` never interleave, also through a transaction-mode pooler) and is
recorded in `flowd_migrations` with its checksum. Applied files are immutable: a file
whose text changed after it was applied is reported, not re-run.

After the files, every run revokes whatever Supabase's API roles (`anon`, `authenticated`)
and PUBLIC were granted on flowd's own objects — the tables the files create (and
`flowd_migrations`), their sequences, their functions — by default privileges or by hand
since, so a later migration is covered without repeating the revokes. What is flowd's is
read from the files themselves (`own_objects`), never "whatever flowd's role owns": on
Supabase that role (`postgres`) owns the application's tables too.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import asyncpg

from flowd.catalog import quote_ident
from flowd.logs import get_logger

# Any stable 64-bit number; it only has to differ from other applications' locks.
_LOCK_ID = 0x666C6F7764  # "flowd"
MIGRATIONS_TABLE = "flowd_migrations"  # created here, not by a file

_CREATED = re.compile(
    r"^\s*CREATE\s+(?:OR\s+REPLACE\s+)?(TABLE|FUNCTION)\s+(?:IF\s+NOT\s+EXISTS\s+)?(\w+)",
    re.IGNORECASE | re.MULTILINE,
)

log = get_logger()


@dataclass(frozen=True, slots=True)
class Migration:
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class OwnObjects:
    """The tables and functions flowd creates in its schema (sequences go with the tables)."""

    tables: frozenset[str]
    functions: frozenset[str]


def migrations_dir() -> Path:
    """The SQL files: inside the installed package, or at the top of a source checkout."""
    packaged = Path(str(resources.files("flowd"))) / "migrations"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "migrations"


def load_migrations(directory: Path | None = None) -> list[Migration]:
    directory = directory or migrations_dir()
    return [Migration(path.stem, path.read_text()) for path in sorted(directory.glob("*.sql"))]


@functools.cache
def own_objects() -> OwnObjects:
    """What the migrations create (`CREATE TABLE`/`CREATE FUNCTION` at a line's start)."""
    created: dict[str, set[str]] = {"TABLE": {MIGRATIONS_TABLE}, "FUNCTION": set()}
    for migration in load_migrations():
        for kind, name in _CREATED.findall(migration.sql):
            created[kind.upper()].add(name.lower())
    return OwnObjects(frozenset(created["TABLE"]), frozenset(created["FUNCTION"]))


async def migrate(
    connection: asyncpg.pool.PoolConnectionProxy | asyncpg.Connection, schema: str
) -> list[str]:
    """Apply what is not applied yet, then revoke the API roles' grants; return the names
    applied now."""
    quoted = quote_ident(schema)
    applied_now = []
    for migration in load_migrations():
        async with connection.transaction():
            await connection.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_ID)
            await connection.execute(f"CREATE SCHEMA IF NOT EXISTS {quoted}")
            await connection.execute(
                f"CREATE TABLE IF NOT EXISTS {quoted}.{MIGRATIONS_TABLE} ("
                " name text PRIMARY KEY, checksum text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now());"
                f" ALTER TABLE {quoted}.{MIGRATIONS_TABLE} ENABLE ROW LEVEL SECURITY"
            )
            recorded = await connection.fetchval(
                f"SELECT checksum FROM {quoted}.{MIGRATIONS_TABLE} WHERE name = $1", migration.name
            )
            if recorded is not None:
                if recorded != migration.checksum:
                    log.warning("migrate.changed_after_apply", migration=migration.name)
                continue
            await connection.execute(f"SET LOCAL search_path TO {quoted}")
            await connection.execute(migration.sql)
            await connection.execute(
                f"INSERT INTO {quoted}.{MIGRATIONS_TABLE} (name, checksum) VALUES ($1, $2)",
                migration.name,
                migration.checksum,
            )
        log.info("migrate.applied", migration=migration.name)
        applied_now.append(migration.name)
    await revoke_api_access(connection, schema)
    return applied_now


async def revoke_api_access(
    connection: asyncpg.pool.PoolConnectionProxy | asyncpg.Connection, schema: str
) -> None:
    """Revoke every grant of anon, authenticated and PUBLIC on flowd's objects (idempotent).

    `flowd_revoke_api_access` comes from the grants migration, which calls it too, for
    installs that apply the files with the Supabase CLI instead of `flowd migrate`.
    """
    own = own_objects()
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_ID)
        await connection.execute(
            f"SELECT {quote_ident(schema)}.flowd_revoke_api_access($1::text[], $2::text[])",
            sorted(own.tables),
            sorted(own.functions),
        )
