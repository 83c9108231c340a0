"""Migrations: apply the SQL files of `migrations/`, each once, in order.

Each file runs in its own transaction under a transaction-level advisory lock (so two
`flowd migrate` never interleave, also through a transaction-mode pooler) and is
recorded in `flowd_migrations` with its checksum. Applied files are immutable: a file
whose text changed after it was applied is reported, not re-run.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import asyncpg

from flowd.catalog import quote_ident
from flowd.logs import get_logger

# Any stable 64-bit number; it only has to differ from other applications' locks.
_LOCK_ID = 0x666C6F7764  # "flowd"

log = get_logger()


@dataclass(frozen=True, slots=True)
class Migration:
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def migrations_dir() -> Path:
    """The SQL files: inside the installed package, or at the top of a source checkout."""
    packaged = Path(str(resources.files("flowd"))) / "migrations"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "migrations"


def load_migrations(directory: Path | None = None) -> list[Migration]:
    directory = directory or migrations_dir()
    return [Migration(path.stem, path.read_text()) for path in sorted(directory.glob("*.sql"))]


async def migrate(
    connection: asyncpg.pool.PoolConnectionProxy | asyncpg.Connection, schema: str
) -> list[str]:
    """Apply what is not applied yet; return the names applied now."""
    quoted = quote_ident(schema)
    applied_now = []
    for migration in load_migrations():
        async with connection.transaction():
            await connection.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_ID)
            await connection.execute(f"CREATE SCHEMA IF NOT EXISTS {quoted}")
            await connection.execute(
                f"CREATE TABLE IF NOT EXISTS {quoted}.flowd_migrations ("
                " name text PRIMARY KEY, checksum text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now());"
                f" ALTER TABLE {quoted}.flowd_migrations ENABLE ROW LEVEL SECURITY"
            )
            recorded = await connection.fetchval(
                f"SELECT checksum FROM {quoted}.flowd_migrations WHERE name = $1", migration.name
            )
            if recorded is not None:
                if recorded != migration.checksum:
                    log.warning("migrate.changed_after_apply", migration=migration.name)
                continue
            await connection.execute(f"SET LOCAL search_path TO {quoted}")
            await connection.execute(migration.sql)
            await connection.execute(
                f"INSERT INTO {quoted}.flowd_migrations (name, checksum) VALUES ($1, $2)",
                migration.name,
                migration.checksum,
            )
        log.info("migrate.applied", migration=migration.name)
        applied_now.append(migration.name)
    return applied_now
