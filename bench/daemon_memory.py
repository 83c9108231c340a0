"""The daemon's figures of the memory section: `flowd run` (durable) idle and through a burst.

VmRSS a second after the daemon started taking events, with 1,000 flows loaded and its
connections open; VmHWM once a burst committed while it runs is handled. The baseline is
the same daemon with no flows.
"""

from __future__ import annotations

import asyncio

import asyncpg

from bench.daemon import CAPTURE_SQL, Flowd, Server, insert_tasks, status_kib, wait_until_handled
from bench.execlog import add_idle_flows
from bench.report import Row, Samples

__all__ = ["rows"]

# Issue 6's targets for the daemon, MiB.
TARGET_IDLE_MIB, TARGET_PEAK_MIB = 50, 150


async def _daemon_rss(url: str, burst: range | None) -> tuple[int, int]:
    """(VmRSS a second after start, VmHWM after `burst` was committed and handled), KiB."""
    flowd = await Flowd({"DATABASE_URL": url, "FLOWD_DELIVERY": "durable"}).start(
        "eventlog.started"
    )
    try:
        await asyncio.sleep(1.0)
        idle = status_kib(flowd.pid, "VmRSS")
        if burst is not None:
            await insert_tasks(url, burst)
            await wait_until_handled(url)
        return idle, status_kib(flowd.pid, "VmHWM")
    finally:
        await flowd.stop()


async def _daemon(flow_count: int, event_count: int, runs: int) -> list[list[int]]:
    """[no flows idle, flows idle, flows peak] in KiB, a value per run each."""
    figures: list[list[int]] = [[], [], []]
    with Server() as server:
        empty_url, url = await server.database(), await server.database()
        connection = await asyncpg.connect(url)
        try:
            await connection.execute(CAPTURE_SQL)
            await add_idle_flows(connection, flow_count)
        finally:
            await connection.close()
        for run in range(runs):
            figures[0].append((await _daemon_rss(empty_url, None))[0])
            burst = range(1 + run * event_count, 1 + (run + 1) * event_count)
            idle, peak = await _daemon_rss(url, burst)
            figures[1].append(idle)
            figures[2].append(peak)
    return figures


def rows(quick: bool, runs: int) -> list[Row]:
    flow_count, event_count = (20, 1000) if quick else (1000, 100_000)
    empty, idle, peak = asyncio.run(_daemon(flow_count, event_count, runs))

    def mib(values: list[int]) -> Samples:
        return Samples(tuple(v / 1024 for v in values), "MiB", lower_is_better=True)

    idle_mib, peak_mib = mib(idle), mib(peak)
    return [
        Row(
            f"`flowd run` idle RSS, {flow_count:,} flows, connections open",
            idle_mib,
            mib(empty),
            "no flows",
            f"≤ {TARGET_IDLE_MIB} MiB",
            idle_mib.median <= TARGET_IDLE_MIB,
        ),
        Row(
            f"`flowd run` peak RSS through {event_count:,} events",
            peak_mib,
            mib(empty),
            "no flows, idle",
            f"≤ {TARGET_PEAK_MIB} MiB",
            peak_mib.median <= TARGET_PEAK_MIB,
        ),
    ]
