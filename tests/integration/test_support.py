"""Self-tests for the test-support helpers (temporary Postgres cluster, scripted HTTP target)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from flowd.local_postgres import TemporaryCluster, find_pg_bin
from tests.support.http_target import HttpTarget, Reply


@pytest.fixture(scope="module")
def cluster(own_cluster: TemporaryCluster) -> TemporaryCluster:
    return own_cluster


@pytest.fixture
async def target() -> AsyncIterator[HttpTarget]:
    async with HttpTarget() as server:
        yield server


def test_find_pg_bin_locates_server_binaries() -> None:
    """find_pg_bin returns a directory containing initdb and pg_ctl."""
    bin_dir = find_pg_bin()
    assert (bin_dir / "initdb").is_file()
    assert (bin_dir / "pg_ctl").is_file()


def test_find_pg_bin_rejects_bad_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A FLOWD_TEST_PG_BIN without the server binaries is a clear error, not a silent fallback."""
    monkeypatch.setenv("FLOWD_TEST_PG_BIN", str(tmp_path))
    with pytest.raises(RuntimeError, match="FLOWD_TEST_PG_BIN"):
        find_pg_bin()


async def test_cluster_accepts_asyncpg_connection(cluster: TemporaryCluster) -> None:
    """The cluster accepts an asyncpg connection on its DSN, answers select 1, has logical WAL."""
    assert cluster.dsn == f"postgresql://postgres@127.0.0.1:{cluster.port}/postgres"
    conn = await asyncpg.connect(cluster.dsn)
    try:
        assert await conn.fetchval("select 1") == 1
        assert await conn.fetchval("show wal_level") == "logical"
        assert await conn.fetchval("select current_user") == "postgres"
    finally:
        await conn.close()


async def test_cluster_creates_second_database(cluster: TemporaryCluster) -> None:
    """create_database makes a new database reachable through dsn_for / the returned DSN."""
    dsn = cluster.create_database("flowd_support_selftest")
    assert dsn == cluster.dsn_for("flowd_support_selftest")
    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval("select current_database()") == "flowd_support_selftest"
    finally:
        await conn.close()
    assert cluster.psql("select count(*) from pg_database where datname = 'flowd_support_selftest'")
    cluster.drop_database("flowd_support_selftest")
    assert cluster.psql("select datname from pg_database where datname like 'flowd_support%'") == ""


async def test_http_target_records_post(target: HttpTarget) -> None:
    """A POST with a JSON body and custom headers is recorded with lower-cased header names."""
    async with httpx.AsyncClient() as client:
        response = await client.post(
            f"{target.url}/hooks/order?x=1",
            json={"id": 7, "status": "paid"},
            headers={"Authorization": "Bearer t0ken", "X-Flowd-Rule": "notify"},
        )
    assert response.status_code == 200
    assert response.json() == {"ok": True}
    [request] = await target.wait_for_requests("/hooks/order", 1)
    assert request.method == "POST"
    assert request.query == "x=1"
    assert request.json() == {"id": 7, "status": "paid"}
    assert request.headers["authorization"] == "Bearer t0ken"
    assert request.headers["x-flowd-rule"] == "notify"
    assert request.headers["content-type"] == "application/json"


async def test_http_target_scripted_replies_in_order(target: HttpTarget) -> None:
    """Scripted replies are served in order (500, 429 + Retry-After), then the default 200."""
    target.script(
        "/fn",
        Reply(status=500, body="boom"),
        Reply(status=429, headers={"Retry-After": "1"}, body={"error": "slow down"}),
    )
    async with httpx.AsyncClient(base_url=target.url) as client:
        first = await client.post("/fn", content=b"1")
        second = await client.post("/fn", content=b"2")
        third = await client.post("/fn", content=b"3")
        other = await client.get("/elsewhere")
    assert (first.status_code, first.text) == (500, "boom")
    assert second.status_code == 429
    assert second.headers["retry-after"] == "1"
    assert second.json() == {"error": "slow down"}
    assert third.status_code == 200
    assert other.status_code == 200
    assert [r.body for r in target.requests_to("/fn")] == [b"1", b"2", b"3"]
    target.reset()
    assert target.requests == []


async def test_http_target_delay_causes_read_timeout(target: HttpTarget) -> None:
    """A reply delayed beyond the client's timeout makes httpx raise ReadTimeout."""
    target.script("/slow", Reply(delay_s=5.0))
    async with httpx.AsyncClient(timeout=httpx.Timeout(0.3)) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.post(f"{target.url}/slow", json={})
        # The server dropped the abandoned connection; a fresh request is answered normally.
        response = await client.post(f"{target.url}/slow", json={})
    assert response.status_code == 200
    assert len(target.requests_to("/slow")) == 2


async def test_http_target_keep_alive(target: HttpTarget) -> None:
    """Several requests from one client are served over one kept-alive connection."""
    async with httpx.AsyncClient(base_url=target.url) as client:
        for i in range(5):
            response = await client.put(f"/item/{i}", json={"i": i})
            assert response.status_code == 200
            assert response.headers["connection"] == "keep-alive"
    assert target.connections_accepted == 1
    assert [r.json() for r in target.requests] == [{"i": i} for i in range(5)]
