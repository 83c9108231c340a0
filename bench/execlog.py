"""Section: `flow_executions` rows written per second through a burst, side by side.

**The execution log** (`flowd.record.Recorder`, what writes `flow_executions`): a burst of
executions, as many at once as the daemon holds events (FLOWD_QUEUE_SIZE), every write
group-committed; each claimed RUNNING and then finished with one API_CALL's outcome, or
written finished at once as for a flow without actions. **Drained by `flowd run`**, end
to end: a burst of changes is committed while no flowd runs (500 INSERTs to a
transaction, the capture trigger attached ahead), each matching one flow that has no
action; then the real `flowd run` (durable, default settings) drains it, and rows/s is
the number of executions over the time from the first `triggered_at` to the last
`finished_at`, so the daemon's start-up is left out. The baseline writes the same number
of finished execution rows plainly, one INSERT per transaction on one connection.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass

import asyncpg

from bench.daemon import CAPTURE_SQL, Flowd, Server, insert_tasks, status_kib, wait_until_handled
from bench.report import Row, Samples, render
from flowd.config import Settings
from flowd.db import create_pool
from flowd.models import ActionOutcome, ChangeEvent, Flow
from flowd.record import Recorder, execution_log

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


async def _recorder(url: str, ids: range, *, claimed: bool, held: int = 1000) -> float:
    """flowd's Recorder: one execution per id, `held` at a time; each claimed and then
    finished (a flow with an API_CALL), or written finished at once (a flow without actions)."""
    pool = await create_pool(Settings(DATABASE_URL=url))
    recorder = Recorder(pool, "public", lambda text: text)
    flow = Flow(flow_id=1, name="burst", trigger_table="tasks")
    outcome = ActionOutcome(action_id=1, type="API_CALL", ok=True, attempts=1, http_status=200)
    pending = iter(ids)

    async def execute() -> None:
        for row_id in pending:
            event = ChangeEvent.model_validate(
                {
                    "schema": "public",
                    "table": "tasks",
                    "type": "INSERT",
                    "commit_timestamp": "2026-11-27T00:00:00Z",
                    "record": {"id": row_id, "title": f"task {row_id}", "priority": "high"},
                }
            )
            if not claimed:
                log = execution_log(flow, event, [])
                await recorder.record_without_actions(flow, event, log, durable=True)
                continue
            claim = await recorder.claim_durable(flow, event)
            assert claim is not None
            log = execution_log(flow, event, [outcome])
            await recorder.finish(claim.execution_id, "SUCCESS", log, [outcome], run=claim.run)

    try:
        started = time.perf_counter()
        await asyncio.gather(*(execute() for _ in range(held)))
        return len(ids) / (time.perf_counter() - started)
    finally:
        await pool.close()


async def _measure(size: int, runs: int) -> dict[str, list[float]]:
    figures: dict[str, list[float]] = {"claimed": [], "one write": [], "drain": [], "plain": []}
    with Server() as server:
        url = await server.database()
        await prepare(url)
        for run in range(runs):
            ids = range(1 + run * size, 1 + (run + 1) * size)
            figures["drain"].append((await drain_burst(url, ids)).rows_per_s)
            figures["plain"].append(await _plain(url, ids, run))
            # Other event keys than the drain's: negative ids, a range per figure.
            claimed_ids, once_ids = (
                range(-ids.stop, -ids.start),
                range(-ids.stop - 10**7, -ids.start - 10**7),
            )
            figures["claimed"].append(await _recorder(url, claimed_ids, claimed=True))
            figures["one write"].append(await _recorder(url, once_ids, claimed=False))
    return figures


def run(quick: bool, runs: int) -> str:
    """The section's Markdown."""
    size = 500 if quick else 10_000
    figures = asyncio.run(_measure(size, runs))
    baseline = Samples(tuple(figures["plain"]), "rows/s")
    claimed = Samples(tuple(figures["claimed"]), "rows/s")
    plain_name = "one transaction per execution"
    rows = [
        Row(
            f"{size:,} executions claimed, then finished (flows with actions)",
            claimed,
            baseline,
            plain_name,
            f"≥ {TARGET_ROWS:,} rows/s",
            claimed.median >= TARGET_ROWS,
        ),
        Row(
            f"{size:,} executions written finished (flows without actions)",
            Samples(tuple(figures["one write"]), "rows/s"),
            baseline,
            plain_name,
        ),
        Row(
            f"{size:,} executions, drained by `flowd run`",
            Samples(tuple(figures["drain"]), "rows/s"),
            baseline,
            plain_name,
        ),
    ]
    notes = [
        "The first two rows: `flowd.record.Recorder`, what writes `flow_executions`, under"
        " a burst of 1,000 executions at once (the daemon holds FLOWD_QUEUE_SIZE events),"
        " every write group-committed; rows/s over the whole burst, the events' making"
        " included. Claimed, then finished: an INSERT of a RUNNING row, then an UPDATE with"
        " the API_CALL's details and the log text. Written finished: one INSERT.",
        "Drained by `flowd run`: each run commits a fresh burst while flowd is stopped, then"
        " starts it (durable, default settings): each change matches one flow without"
        " actions, so every execution is one INSERT and a handled mark, after the claim from"
        " the event log and the classification. Rows/s from the first `triggered_at` to the"
        " last `finished_at`; the baseline is timed around its loop.",
    ]
    return render("Execution log", rows, notes)
