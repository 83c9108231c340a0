"""Database outages: what `db.is_outage` calls one, on real errors of a cluster of this
module's own (other tests keep theirs). flowd across a stop and a restart: tests/acceptance/."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from flowd.db import is_outage
from flowd.local_postgres import TemporaryCluster

# ------------------------------------------------------------------ is_outage, real errors


async def test_a_refused_connection_to_a_stopped_server_is_an_outage(
    own_cluster: TemporaryCluster,
) -> None:
    await asyncio.to_thread(own_cluster.pause)
    try:
        with pytest.raises(ConnectionRefusedError) as refused:
            await asyncpg.connect(own_cluster.dsn, timeout=5)
    finally:
        await asyncio.to_thread(own_cluster.resume)
    assert is_outage(refused.value)


async def test_a_terminated_backend_and_its_closed_connection_are_outages(
    own_cluster: TemporaryCluster,
) -> None:
    victim = await asyncpg.connect(own_cluster.dsn)
    admin = await asyncpg.connect(own_cluster.dsn)
    try:
        sleeping = asyncio.create_task(victim.fetchval("SELECT pg_sleep(30)"))
        await asyncio.sleep(0.3)
        await admin.fetchval("SELECT pg_terminate_backend($1)", victim.get_server_pid())
        with pytest.raises(asyncpg.PostgresError) as terminated:
            await asyncio.wait_for(sleeping, 20)
        # 57P01 (admin shutdown), or 08003 when asyncpg sees the socket close first.
        assert terminated.value.sqlstate in {"57P01", "08003"}
        with pytest.raises(asyncpg.InterfaceError) as closed:
            await victim.fetchval("SELECT 1")
    finally:
        await admin.close()
        victim.terminate()
    assert is_outage(terminated.value)
    assert is_outage(closed.value)


async def test_a_read_only_server_is_an_outage_but_a_bad_statement_is_not(
    own_cluster: TemporaryCluster,
) -> None:
    connection = await asyncpg.connect(own_cluster.dsn)
    try:
        await connection.execute("CREATE TEMP TABLE t (id int PRIMARY KEY)")
        await connection.execute("INSERT INTO t VALUES (1)")
        with pytest.raises(asyncpg.PostgresError) as duplicate:
            await connection.execute("INSERT INTO t VALUES (1)")
        with pytest.raises(asyncpg.PostgresError) as syntax:
            await connection.execute("SELEC 1")
        async with connection.transaction(readonly=True):
            with pytest.raises(asyncpg.PostgresError) as read_only:  # as on a standby
                await connection.execute("CREATE TABLE u (id int)")
    finally:
        await connection.close()
    assert read_only.value.sqlstate == "25006"
    assert is_outage(read_only.value)
    assert not is_outage(duplicate.value)
    assert not is_outage(syntax.value)


def test_shutdown_full_server_and_pooler_errors_are_outages() -> None:
    exceptions = asyncpg.exceptions
    assert is_outage(exceptions.CannotConnectNowError("the database system is shutting down"))
    assert is_outage(exceptions.CrashShutdownError("crash"))
    assert is_outage(exceptions.TooManyConnectionsError("sorry, too many clients already"))
    assert is_outage(exceptions.ProtocolViolationError("server conn crashed?"))
    assert is_outage(exceptions.PostgresError("pgbouncer cannot connect to server"))
    assert is_outage(asyncpg.InternalClientError("protocol state"))
    assert is_outage(TimeoutError())
    assert not is_outage(asyncpg.InterfaceError("cannot perform operation: another operation"))
    assert not is_outage(ValueError("connection is closed"))
    assert not is_outage(exceptions.DivisionByZeroError("division by zero"))
