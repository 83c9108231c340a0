"""Fixtures: a real PostgreSQL per session, a fresh migrated database per test, HTTP targets.

The session starts its own temporary cluster (or uses FLOWD_TEST_DATABASE_URL). A
template database gets Supabase's API roles and default privileges, then flowd's migrations
and the example `tasks` table, once; each test gets a clone of it, so tests never see each
other's rows, and every test meets the grants a Supabase project has.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from flowd.local_postgres import TemporaryCluster
from flowd.migrate import migrate
from tests.support import sentinels, supabase
from tests.support.http_target import HttpTarget

TEMPLATE = "flowd_test_template"
FIXTURES = Path(__file__).parent / "fixtures"
_database_numbers = itertools.count(1)


def frame(name: str) -> dict[str, Any]:
    """An example frame of the Realtime contract, as a decoded JSON object."""
    loaded: dict[str, Any] = json.loads((FIXTURES / "frames" / f"{name}.json").read_text())
    return loaded


def _with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


class Databases:
    """Creates databases on the test server, as clones of the migrated template."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url

    async def _admin(self, sql: str) -> None:
        connection = await asyncpg.connect(self.admin_url)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    async def admin(self, sql: str) -> None:
        """Run `sql` on the server's admin database (cluster-wide roles, say)."""
        await self._admin(sql)

    async def build_template(self) -> None:
        await self._admin(f"DROP DATABASE IF EXISTS {TEMPLATE} WITH (FORCE)")
        await self._admin(f"CREATE DATABASE {TEMPLATE}")
        await self._admin(supabase.ROLES_SQL)
        connection = await asyncpg.connect(self.url(TEMPLATE))
        try:
            await connection.execute(supabase.DEFAULT_PRIVILEGES_SQL)
            await migrate(connection, "public")
            await connection.execute((Path(__file__).parent / "support" / "schema.sql").read_text())
        finally:
            await connection.close()

    def url(self, database: str) -> str:
        return _with_database(self.admin_url, database)

    async def clone(self) -> str:
        name = f"flowd_test_{os.getpid()}_{next(_database_numbers)}"
        await self._admin(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
        return name

    async def drop(self, name: str) -> None:
        await self._admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="session")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The admin URL of the test PostgreSQL server."""
    if url := os.environ.get("FLOWD_TEST_DATABASE_URL"):
        yield url
        return
    with _started(TemporaryCluster(tmp_path_factory.mktemp("pg"))) as cluster:
        yield cluster.dsn


@pytest.fixture(scope="module")
def own_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TemporaryCluster]:
    """A server of the test module's own, which its tests may stop and restart."""
    with _started(TemporaryCluster(tmp_path_factory.mktemp("pg-own"))) as cluster:
        yield cluster


@contextlib.contextmanager
def _started(cluster: TemporaryCluster) -> Iterator[TemporaryCluster]:
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
async def databases(server_url: str) -> Databases:
    created = Databases(server_url)
    await created.build_template()
    return created


@pytest.fixture
async def database_url(databases: Databases) -> AsyncIterator[str]:
    """A fresh database with flowd's tables and the example `tasks` table, for one test."""
    name = await databases.clone()
    sentinels.SEEN.clear()
    yield databases.url(name)
    # No secret of any flowd this test started may be stored in flow_executions.
    connection = await asyncpg.connect(databases.url(name))
    try:
        stored = await connection.fetchval(
            "SELECT coalesce(string_agg(to_jsonb(e)::text, ' '), '') FROM flow_executions e"
        )
    except asyncpg.UndefinedTableError:  # a test that dropped or renamed flowd's tables
        stored = ""
    finally:
        await connection.close()
    await databases.drop(name)
    sentinels.assert_absent([stored], sentinels.SEEN, "flow_executions")


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(database_url)
    yield connection
    await connection.close()


@pytest.fixture
async def http_target() -> AsyncIterator[HttpTarget]:
    async with HttpTarget() as target:
        yield target


@pytest.fixture
async def proxy(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[HttpTarget]:
    """A loopback target set as the HTTP proxy: whatever flowd sends ends up here."""
    async with HttpTarget() as target:
        for name in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTP_PROXY", target.url)
        yield target
