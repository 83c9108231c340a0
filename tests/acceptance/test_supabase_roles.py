"""Supabase's API roles keep nothing on flowd's objects, in a database set up the way
Supabase sets up its roles and default privileges before `flowd migrate`.

Supabase grants `anon`, `authenticated` and `service_role` everything on every new table,
sequence and function in `public` (default privileges), and Postgres grants EXECUTE on
functions to PUBLIC. After `flowd migrate`, every privilege of every object flowd created
is checked role by role; then `anon` tries what issue 12 found it could do.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import asyncpg
import pytest

from flowd.migrate import MIGRATIONS_TABLE, load_migrations
from tests.conftest import Databases
from tests.support.flowd_cli import run_flowd
from tests.support.supabase import API_ROLES, DEFAULT_PRIVILEGES_SQL, ROLES_SQL

GRANTS_MIGRATION = "20261203010000_flowd_grants"

# The application's own table, created after Supabase's default privileges: its grants stay.
_NOTES_SQL = (
    "CREATE TABLE public.notes (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, body text)"
)

# Every privilege a role can hold on each kind of object, and the function that asks.
_HELD_SQL = """
WITH objects AS (
    SELECT c.oid, c.relname AS name, CASE WHEN c.relkind = 'S' THEN 'sequence' ELSE 'table' END
           AS kind
    FROM pg_class c
    WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
    UNION ALL
    SELECT p.oid, p.oid::regprocedure::text, 'function' FROM pg_proc p
    WHERE p.pronamespace = 'public'::regnamespace
), privileges (kind, privilege) AS (
    VALUES ('table', 'SELECT'), ('table', 'INSERT'), ('table', 'UPDATE'), ('table', 'DELETE'),
           ('table', 'TRUNCATE'), ('table', 'REFERENCES'), ('table', 'TRIGGER'),
           ('column', 'SELECT'), ('column', 'INSERT'), ('column', 'UPDATE'),
           ('column', 'REFERENCES'),
           ('sequence', 'USAGE'), ('sequence', 'SELECT'), ('sequence', 'UPDATE'),
           ('function', 'EXECUTE')
)
SELECT r.rolname AS role, o.name, p.kind, p.privilege,
       CASE p.kind
           WHEN 'table' THEN has_table_privilege(r.oid, o.oid, p.privilege)
           WHEN 'column' THEN has_any_column_privilege(r.oid, o.oid, p.privilege)
           WHEN 'sequence' THEN has_sequence_privilege(r.oid, o.oid, p.privilege)
           ELSE has_function_privilege(r.oid, o.oid, p.privilege)
       END AS held
FROM objects o
JOIN privileges p ON p.kind = o.kind OR (o.kind = 'table' AND p.kind = 'column')
CROSS JOIN pg_roles r
WHERE r.rolname = ANY ($1::text[])
"""


async def _held(connection: asyncpg.Connection) -> dict[str, set[tuple[str, str]]]:
    """Each object in `public` (by name): the (role, privilege) pairs API roles hold on it."""
    rows = await connection.fetch(_HELD_SQL, list(API_ROLES))
    held: dict[str, set[tuple[str, str]]] = {row["name"]: set() for row in rows}
    for row in rows:
        if row["held"]:
            held[row["name"]].add((row["role"], f"{row['kind']} {row['privilege']}"))
    return held


@pytest.fixture
async def supabase_like(databases: Databases) -> AsyncIterator[str]:
    """An empty database with Supabase's roles and default privileges, flowd not yet in it."""
    await databases.admin(ROLES_SQL)
    name = f"flowd_supabase_{os.getpid()}"
    await databases.admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    await databases.admin(f"CREATE DATABASE {name} TEMPLATE template0")
    url = databases.url(name)
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(DEFAULT_PRIVILEGES_SQL)
        await connection.execute(_NOTES_SQL)
    finally:
        await connection.close()
    yield url
    await databases.drop(name)


async def _migrate_as_the_old_flowd(connection: asyncpg.Connection) -> None:
    """What `flowd migrate` did before the grants migration: the earlier files only."""
    await connection.execute(
        f"CREATE TABLE {MIGRATIONS_TABLE} (name text PRIMARY KEY, checksum text NOT NULL,"
        f" applied_at timestamptz NOT NULL DEFAULT now());"
        f" ALTER TABLE {MIGRATIONS_TABLE} ENABLE ROW LEVEL SECURITY"
    )
    for migration in load_migrations():
        if migration.name >= GRANTS_MIGRATION:
            break
        async with connection.transaction():
            await connection.execute("SET LOCAL search_path TO public")
            await connection.execute(migration.sql)
            await connection.execute(
                f"INSERT INTO {MIGRATIONS_TABLE} VALUES ($1, $2)",
                migration.name,
                migration.checksum,
            )


async def test_migrate_leaves_the_api_roles_nothing_on_flowds_objects(supabase_like: str) -> None:
    """Role by role, object by object, privilege by privilege: anon and authenticated hold
    nothing on flowd's tables, sequences and functions; the app's own table keeps its grants."""
    migrated = await run_flowd("migrate", env={"DATABASE_URL": supabase_like})
    assert migrated.code == 0, migrated.stderr
    connection = await asyncpg.connect(supabase_like)
    try:
        held = await _held(connection)
        app_objects = {"notes", "notes_id_seq"}
        flowds = {name: privileges for name, privileges in held.items() if name not in app_objects}
        assert {"flows", MIGRATIONS_TABLE, "flows_flow_id_seq", "flowd_capture()"} <= set(flowds)
        assert {name: privileges for name, privileges in flowds.items() if privileges} == {}
        for role in API_ROLES:  # the audit sees grants where they are
            assert (role, "table TRUNCATE") in held["notes"]
            assert (role, "sequence UPDATE") in held["notes_id_seq"]
        token_readers = await connection.fetchval(
            "SELECT count(*) FROM pg_roles"
            " WHERE rolname IN ('anon', 'authenticated', 'service_role')"
            "   AND has_table_privilege(oid, 'flowd_cause_token', 'SELECT')"
        )
        assert token_readers == 0
    finally:
        await connection.close()


async def test_every_test_database_has_supabases_grants_and_flowds_objects_stay_closed(
    db: asyncpg.Connection,
) -> None:
    """The session's databases (where every other attack test runs) are set up as Supabase
    sets up a project: the example `tasks` table, created after flowd's migrations, is
    granted to the API roles by default; flowd's own objects are not."""
    held = await _held(db)
    app_objects = {"tasks", "projects"}
    for role in API_ROLES:
        assert (role, "table TRUNCATE") in held["tasks"]
    flowds = {name: privileges for name, privileges in held.items() if name not in app_objects}
    assert {"flows", "flow_events", MIGRATIONS_TABLE, "flowd_capture()"} <= set(flowds)
    assert {name: privileges for name, privileges in flowds.items() if privileges} == {}


@pytest.mark.parametrize("role", API_ROLES)
async def test_an_api_role_cannot_truncate_setval_or_use_the_capture_function(
    supabase_like: str, role: str
) -> None:
    """As anon (or authenticated): TRUNCATE flowd_migrations, setval on flows' identity
    sequence, calling flowd_capture() and attaching it to a table of its own all fail."""
    assert (await run_flowd("migrate", env={"DATABASE_URL": supabase_like})).code == 0
    connection = await asyncpg.connect(supabase_like)
    attempts = [
        f"TRUNCATE {MIGRATIONS_TABLE}",
        "SELECT setval('flows_flow_id_seq', 1000000)",
        "SELECT flowd_capture()",
        "CREATE TRIGGER steal AFTER INSERT ON notes FOR EACH ROW EXECUTE FUNCTION flowd_capture()",
    ]
    try:
        for sql in attempts:
            async with connection.transaction():
                await connection.execute(f"SET LOCAL ROLE {role}")
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await connection.execute(sql)
        applied = await connection.fetchval(f"SELECT count(*) FROM {MIGRATIONS_TABLE}")
        assert applied == len(load_migrations())
    finally:
        await connection.close()


async def test_migrate_revokes_what_an_install_from_the_earlier_files_granted(
    supabase_like: str,
) -> None:
    """An install migrated before the grants migration: anon could TRUNCATE flowd_migrations,
    setval the sequences and EXECUTE flowd_capture(); the next `flowd migrate` revokes it."""
    connection = await asyncpg.connect(supabase_like)
    try:
        await _migrate_as_the_old_flowd(connection)
        before = await _held(connection)
        assert ("anon", "table TRUNCATE") in before[MIGRATIONS_TABLE]
        assert ("anon", "sequence UPDATE") in before["flows_flow_id_seq"]
        assert ("anon", "function EXECUTE") in before["flowd_capture()"]

        migrated = await run_flowd("migrate", env={"DATABASE_URL": supabase_like})
        assert migrated.code == 0, migrated.stderr
        later = [m for m in load_migrations() if m.name >= GRANTS_MIGRATION]
        assert f"{len(later)} migration(s) applied" in migrated.stdout
        after = await _held(connection)
        assert {n: p for n, p in after.items() if p and not n.startswith("notes")} == {}
        # Granted by hand since: the next migrate, with nothing to apply, revokes it again.
        await connection.execute("GRANT ALL ON flow_executions TO anon")
        assert (await run_flowd("migrate", env={"DATABASE_URL": supabase_like})).code == 0
        assert (await _held(connection))["flow_executions"] == set()
    finally:
        await connection.close()
