"""The outage gate: one log line per change of state, waiting callers, writes retried."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from structlog.testing import capture_logs

from flowd.outage import Availability


class Server:
    """Answers the probe once `up`; refuses the connection before (as a stopped server)."""

    def __init__(self) -> None:
        self.up = False
        self.probes = 0

    async def probe(self) -> None:
        self.probes += 1
        if not self.up:
            raise ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 5432)")


async def test_an_outage_is_logged_once_each_way_and_holds_callers_until_it_ends() -> None:
    server = Server()
    gate = Availability(server.probe)
    with capture_logs() as logs:
        for _ in range(3):  # three callers meet the same outage
            gate.mark_lost(asyncpg.exceptions.CannotConnectNowError("shutting down"))
        waiting = asyncio.create_task(gate.wait_available())
        await asyncio.sleep(0.5)
        assert not waiting.done()
        server.up = True
        await asyncio.wait_for(waiting, 10)
    assert [entry["event"] for entry in logs] == ["eventlog.unavailable", "eventlog.available"]
    assert logs[0]["error"] == "CannotConnectNowError: shutting down"
    assert "exc_info" not in logs[0]
    assert server.probes >= 2


async def test_until_done_retries_a_write_across_an_outage_but_not_a_bad_statement() -> None:
    server = Server()
    gate = Availability(server.probe)
    calls: list[int] = []

    async def write() -> str:
        calls.append(1)
        if len(calls) == 1:
            server.up = True  # back by the next probe
            raise ConnectionResetError("connection reset by peer")
        return "written"

    with capture_logs():
        assert await asyncio.wait_for(gate.until_done(write), 10) == "written"
    assert len(calls) == 2

    async def bad() -> None:
        raise asyncpg.exceptions.UndefinedTableError('relation "nope" does not exist')

    with pytest.raises(asyncpg.exceptions.UndefinedTableError):
        await gate.until_done(bad)


async def test_after_giving_up_an_outage_is_raised_at_once() -> None:
    """Shutdown: what could not be written is reported by the caller, not waited for."""
    gate = Availability(Server().probe)

    async def write() -> None:
        raise ConnectionRefusedError(111, "Connect call failed")

    gate.give_up()
    with capture_logs(), pytest.raises(ConnectionRefusedError):
        await asyncio.wait_for(gate.until_done(write), 5)
    gate.mark_lost(ConnectionRefusedError(111, "refused"))
    await asyncio.wait_for(gate.wait_available(), 1)
