"""Section: `flow_executions` rows written per second through a burst, side by side.

A burst of changes is committed while no flowd runs (500 INSERTs to a transaction, the
capture trigger attached ahead), each matching one flow that has no action. Then the
real `flowd run` (durable, default settings) drains it; rows/s is the number of
executions over the time from the first `triggered_at` to the last `finished_at`, so
the daemon's start-up is left out. The baseline writes the same number of finished
execution rows plainly, one INSERT per transaction on one connection.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass

import asyncpg

from bench.daemon import CAPTURE_SQL, Flowd, Server, insert_tasks, status_kib, wait_until_handled
from bench.report import Row, Samples, render

__all__ = ["Burst", "drain_burst", "run"]

TARGET_ROWS = 20_000  # rows/s, issue 6


@dataclass(frozen=True, slots=True)
class Burst:
    rows_per_s: float
    peak_kib: int  # VmHWM of the daemon after the drain


async def prepare(url: str, flows: int = 0) -> None:
    """One flow without actions matching every `high` task; `flows` more that never match."""
    connection = await asyncpg.connect(url)
    try:
        await connection.execute(CAPTURE_SQL)
        flow_id = await connection.fetchval(
            "INSERT INTO flows (name, trigger_table, trigger_event)"
            " VALUES ('burst', 'tasks', 'INSERT') RETURNING flow_id"
        )
        await connection.execute(
            "INSERT INTO rules (flow_id, field, operator, value)"
            " VALUES ($1, 'priority', '=', 'high')",
            flow_id,
        )
        await add_idle_flows(connection, flows)
    finally:
        await connection.close()


async def add_idle_flows(connection: asyncpg.Connection, count: int) -> None:
    """`count` tenant-like flows with an API_CALL each, whose rules the burst never meets."""
    for number in range(count):
        flow_id = await connection.fetchval(
            "INSERT INTO flows (name, trigger_table, trigger_event) VALUES ($1, 'tasks', '*')"
            " RETURNING flow_id",
            f"idle {number}",
        )
        await connection.executemany(
            "INSERT INTO rules (flow_id, field, operator, value) VALUES ($1, $2, $3, $4)",
            [
                (flow_id, "status", "=", f"state-{number}"),
                (flow_id, "estimate", ">", str(number % 50)),
                (flow_id, "title", "CONTAINS", f"word{number % 7}"),
            ],
        )
        config = {"url": "http://127.0.0.1:9/never", "body": {"id": "{{ new.id }}"}}
        await connection.execute(
            "INSERT INTO actions (flow_id, type, config) VALUES ($1, 'API_CALL', $2::jsonb)",
            flow_id,
            json.dumps(config),
        )


async def drain_burst(url: str, ids: range) -> Burst:
    """Commit the burst `ids`, start the daemon, wait until every event is handled."""
    await insert_tasks(url, ids)
    flowd = await Flowd({"DATABASE_URL": url, "FLOWD_DELIVERY": "durable"}).start(
        "eventlog.started"
    )
    connection = await asyncpg.connect(url)
    try:
        await wait_until_handled(url)
        peak = status_kib(flowd.pid, "VmHWM")
        span = await connection.fetchval(
            "SELECT extract(epoch FROM max(finished_at) - min(triggered_at))::float8"
            " FROM flow_executions WHERE (event -> 'record' ->> 'id')::bigint BETWEEN $1 AND $2",
            ids.start,
            ids.stop - 1,
        )
    finally:
        await connection.close()
        await flowd.stop()
    return Burst(len(ids) / span, peak)


async def _plain(url: str, ids: range, run: int) -> float:
    """One INSERT of a finished execution per transaction, for the burst's events."""
    connection = await asyncpg.connect(url)
    try:
        events = await connection.fetch(
            "SELECT event_id, record::text AS record FROM flow_events"
            " WHERE (record ->> 'id')::bigint BETWEEN $1 AND $2",
            ids.start,
            ids.stop - 1,
        )
        started = time.perf_counter()
        for event in events:
            await connection.execute(
                "INSERT INTO flow_executions (flow_id, event_key, status, event, finished_at, log)"
                " VALUES (1, $1, 'SUCCESS', $2::jsonb, now(), 'plain')",
                f"plain-{run}-{event['event_id']}",
                event["record"],
            )
        return len(events) / (time.perf_counter() - started)
    finally:
        await connection.close()


async def _measure(size: int, runs: int) -> tuple[list[float], list[float]]:
    flowd: list[float] = []
    plain: list[float] = []
    with Server() as server:
        url = await server.database()
        await prepare(url)
        for run in range(runs):
            ids = range(1 + run * size, 1 + (run + 1) * size)
            flowd.append((await drain_burst(url, ids)).rows_per_s)
            plain.append(await _plain(url, ids, run))
    return flowd, plain


def run(quick: bool, runs: int) -> str:
    """The section's Markdown."""
    size = 500 if quick else 10_000
    flowd, plain = asyncio.run(_measure(size, runs))
    measured = Samples(tuple(flowd), "rows/s")
    rows = [
        Row(
            f"{size:,} executions, drained by `flowd run`",
            measured,
            Samples(tuple(plain), "rows/s"),
            "one transaction per execution",
            f"≥ {TARGET_ROWS:,} rows/s",
            measured.median >= TARGET_ROWS,
        )
    ]
    notes = [
        "Each run commits a fresh burst while flowd is stopped, then starts it (durable,"
        " FLOWD_CONCURRENCY 16): each change matches one flow without actions, so every"
        " execution is a claim, an outcome and a handled mark. Rows/s from the first"
        " `triggered_at` to the last `finished_at`; the baseline is timed around its loop.",
    ]
    return render("Execution log", rows, notes)
