"""Scheduled flows: run each SCHEDULE flow's ticks over its trigger table as they fall due.

A tick reads the table in pages (keyset by primary key), classifies each row as a
SCHEDULE event at the tick's time, and runs the flow for each row that matches through
the engine, so actions, retries and `flow_executions` are those of change events. The
event key is the tick's time and the row's key: a row runs once per tick.

Only one worker runs a tick: it claims the tick's row in `flow_ticks` under a lease,
renewed while it works, and records its keyset position after each page. A worker that
dies leaves a lease that runs out; whoever claims the tick next resumes from the
position, and rows of the page it re-reads find their executions already there (an
interrupted one is resumed where it stopped). Ticks missed while no flowd ran are not
replayed one by one: the latest one runs, and the log says how many were skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

import asyncpg

from flowd.catalog import Table, quote_ident
from flowd.config import Settings
from flowd.db import DATABASE_ERRORS, worker_id
from flowd.engine import Engine, FlowRun
from flowd.errors import ConfigurationError, describe
from flowd.flows import FlowSet, ScheduledFlow
from flowd.logs import get_logger
from flowd.models import ChangeEvent, Column
from flowd.rules.reltime import evaluated_at
from flowd.summary import Summary

log = get_logger()

PAGE_SIZE = 500
TICK_LEASE_S = 60.0
_RECHECK = timedelta(seconds=1)  # flows may be reloaded: look at them at least this often
_RETRY_AFTER = timedelta(seconds=10)  # after a tick failed (database gone, say)

_CLAIM_SQL = """
INSERT INTO {ticks} AS t (flow_id, scheduled_for, worker, lease_until)
VALUES ($1, $2, $3, now() + make_interval(secs => $4))
ON CONFLICT (flow_id, scheduled_for) DO UPDATE
SET worker = excluded.worker, lease_until = excluded.lease_until, claims = t.claims + 1
WHERE t.finished_at IS NULL AND (t.lease_until < now() OR t.worker = excluded.worker)
RETURNING last_key, rows_done, rows_matched, claims
"""


class Clock(Protocol):
    """What the scheduler knows of time."""

    def now(self) -> datetime: ...

    async def sleep_until(self, instant: datetime) -> None: ...


class SystemClock:
    """The wall clock."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep_until(self, instant: datetime) -> None:
        await asyncio.sleep(max(0.0, (instant - self.now()).total_seconds()))


@dataclass(frozen=True, slots=True)
class TickClaim:
    """A tick this worker may run, and how far an earlier worker got with it."""

    last_key: list[str] | None
    rows_done: int
    rows_matched: int
    claims: int


@dataclass
class TickResult:
    """What one tick did (this run of it)."""

    scheduled_for: datetime
    rows_done: int = 0
    rows_matched: int = 0
    runs: list[FlowRun] = field(default_factory=list)
    stopped: str | None = None  # why not every row was read
    finished: bool = False


class Ticks:
    """`flow_ticks` for one worker: claim a tick, record progress, finish, let go."""

    def __init__(self, pool: asyncpg.Pool, schema: str, *, worker: str, lease_s: float) -> None:
        self._pool = pool
        self._table = f"{quote_ident(schema)}.flow_ticks"
        self.worker = worker
        self.lease_s = lease_s

    async def latest(self, flow_id: int) -> tuple[datetime, bool] | None:
        """The flow's latest recorded tick and whether it finished, or None."""
        row = await self._pool.fetchrow(
            f"SELECT scheduled_for, finished_at IS NOT NULL AS finished FROM {self._table}"
            " WHERE flow_id = $1 ORDER BY scheduled_for DESC LIMIT 1",
            flow_id,
        )
        return None if row is None else (row["scheduled_for"], row["finished"])

    async def claim(self, flow_id: int, scheduled_for: datetime) -> TickClaim | None:
        """Take the tick (or take over one whose worker's lease ran out); None if not ours."""
        row = await self._pool.fetchrow(
            _CLAIM_SQL.format(ticks=self._table), flow_id, scheduled_for, self.worker, self.lease_s
        )
        if row is None:
            return None
        return TickClaim(row["last_key"], row["rows_done"], row["rows_matched"], row["claims"])

    async def progress(
        self, flow_id: int, scheduled_for: datetime, last_key: list[str], done: int, matched: int
    ) -> bool:
        """Record the keyset position and renew the lease; False if the tick is not ours."""
        return bool(
            await self._pool.fetchval(
                f"UPDATE {self._table} SET last_key = $4, rows_done = $5, rows_matched = $6,"
                " lease_until = now() + make_interval(secs => $7)"
                " WHERE flow_id = $1 AND scheduled_for = $2 AND worker = $3"
                " AND finished_at IS NULL RETURNING true",
                flow_id,
                scheduled_for,
                self.worker,
                last_key,
                done,
                matched,
                self.lease_s,
            )
        )

    async def renew(self, flow_id: int, scheduled_for: datetime) -> bool:
        return bool(
            await self._pool.fetchval(
                f"UPDATE {self._table} SET lease_until = now() + make_interval(secs => $4)"
                " WHERE flow_id = $1 AND scheduled_for = $2 AND worker = $3"
                " AND finished_at IS NULL RETURNING true",
                flow_id,
                scheduled_for,
                self.worker,
                self.lease_s,
            )
        )

    async def finish(self, flow_id: int, scheduled_for: datetime, result: TickResult) -> None:
        await self._pool.execute(
            f"UPDATE {self._table} SET finished_at = now(), rows_done = $4, rows_matched = $5,"
            " stopped = $6 WHERE flow_id = $1 AND scheduled_for = $2 AND worker = $3",
            flow_id,
            scheduled_for,
            self.worker,
            result.rows_done,
            result.rows_matched,
            result.stopped,
        )

    async def release(self, flow_id: int, scheduled_for: datetime) -> None:
        """Give an unfinished tick back, so another worker need not wait out the lease."""
        await self._pool.execute(
            f"UPDATE {self._table} SET lease_until = now()"
            " WHERE flow_id = $1 AND scheduled_for = $2 AND worker = $3 AND finished_at IS NULL",
            flow_id,
            scheduled_for,
            self.worker,
        )


def _page_sql(table: Table, *, first: bool) -> str:
    """SQL: $1 rows in key order; after the first page, those after the keyset position $2
    (the key's values as text, cast back to the columns' types)."""
    key = [f"t.{quote_ident(column)}" for column in table.primary_key]
    after = ", ".join(
        f"($2::text[])[{number}]::{table.columns[column].sql_type}"
        for number, column in enumerate(table.primary_key, start=1)
    )
    where = "" if first else f" WHERE ({', '.join(key)}) > ({after})"
    return (
        f"SELECT to_jsonb(t)::text AS record, ARRAY[{', '.join(k + '::text' for k in key)}] AS key"
        f" FROM {table.qualified} AS t{where} ORDER BY {', '.join(key)} LIMIT $1"
    )


def tick_time(instant: datetime) -> str:
    """A tick's time as events carry it (`commit_timestamp`): UTC, milliseconds."""
    utc = instant.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


class TickRunner:
    """Runs one tick of one scheduled flow, claimed in the database, to its end."""

    def __init__(
        self,
        database: asyncpg.Pool,
        settings: Settings,
        engine_for: Callable[[FlowSet], Engine],
        *,
        worker: str | None = None,
        page_size: int = PAGE_SIZE,
        lease_s: float = TICK_LEASE_S,
        stopping: asyncio.Event | None = None,
        row_done: Callable[[int], None] | None = None,
    ) -> None:
        self._database = database
        self._engine_for = engine_for
        self.ticks = Ticks(
            database, settings.schema_name, worker=worker or worker_id(), lease_s=lease_s
        )
        self._page_size = page_size
        self._max_rows = settings.schedule_max_rows
        self._stopping = stopping or asyncio.Event()
        self._row_done = row_done  # after each row, with the tick's rows done (tests stop here)

    def stop(self) -> None:
        """Take no further row; a tick under way is left for whoever claims it next."""
        self._stopping.set()

    async def run(
        self, scheduled: ScheduledFlow, scheduled_for: datetime, flows: FlowSet
    ) -> TickResult | None:
        """Run the tick due at `scheduled_for`; None when another worker has it or had it."""
        flow = scheduled.flow
        table = scheduled.table
        if table is None or not table.primary_key:
            log.error(
                "schedule.no_table",
                flow_id=flow.flow_id,
                table=flow.trigger_table,
                reason="the table does not exist" if table is None else "it has no primary key",
            )
            return None
        claim = await self.ticks.claim(flow.flow_id, scheduled_for)
        if claim is None:
            log.info("schedule.tick_taken", flow_id=flow.flow_id, scheduled_for=scheduled_for)
            return None
        result = TickResult(scheduled_for, claim.rows_done, claim.rows_matched)
        log.info(
            "schedule.tick_started" if claim.claims == 1 else "schedule.tick_resumed",
            flow_id=flow.flow_id,
            scheduled_for=scheduled_for,
            rows_done=claim.rows_done,
        )
        renewing = asyncio.create_task(self._renew(flow.flow_id, scheduled_for))
        try:
            with evaluated_at(scheduled_for):
                await self._pages(scheduled, table, claim.last_key, result, flows)
            if result.finished:
                await self.ticks.finish(flow.flow_id, scheduled_for, result)
                log.info(
                    "schedule.tick_finished",
                    flow_id=flow.flow_id,
                    scheduled_for=scheduled_for,
                    rows_done=result.rows_done,
                    rows_matched=result.rows_matched,
                )
        finally:
            renewing.cancel()
            if not result.finished:
                with contextlib.suppress(Exception):
                    await asyncio.shield(self.ticks.release(flow.flow_id, scheduled_for))
        return result

    async def _pages(
        self,
        scheduled: ScheduledFlow,
        table: Table,
        position: list[str] | None,
        result: TickResult,
        flows: FlowSet,
    ) -> None:
        flow = scheduled.flow
        engine = self._engine_for(flows)
        columns = tuple(Column(name=c.name, type=c.typname) for c in table.columns.values())
        while True:
            after = () if position is None else (position,)
            rows = await self._database.fetch(
                _page_sql(table, first=position is None), self._page_size, *after
            )
            for row in rows:
                if self._stopping.is_set():
                    return
                event = ChangeEvent(
                    schema=table.schema,
                    table=table.name,
                    type="SCHEDULE",
                    commit_timestamp=tick_time(result.scheduled_for),
                    columns=columns,
                    record=json.loads(row["record"]),
                    primary_key=table.primary_key,
                )
                if scheduled.compiled.evaluate(event)[0]:
                    if result.rows_matched >= self._max_rows:
                        result.stopped = f"more than FLOWD_SCHEDULE_MAX_ROWS ({self._max_rows})"
                        log.warning(
                            "schedule.max_rows",
                            flow_id=flow.flow_id,
                            max_rows=self._max_rows,
                            rows_done=result.rows_done,
                        )
                        result.finished = True
                        return
                    result.rows_matched += 1
                    result.runs.append(await engine.run_scheduled(flow, event))
                result.rows_done += 1
                if self._row_done is not None:
                    self._row_done(result.rows_done)
            if rows:
                position = list(rows[-1]["key"])
                if not await self.ticks.progress(
                    flow.flow_id,
                    result.scheduled_for,
                    position,
                    result.rows_done,
                    result.rows_matched,
                ):
                    log.warning("schedule.tick_lost", flow_id=flow.flow_id)
                    return
            if len(rows) < self._page_size:
                result.finished = True
                return

    async def _renew(self, flow_id: int, scheduled_for: datetime) -> None:
        while True:
            await asyncio.sleep(self.ticks.lease_s / 3)
            try:
                await self.ticks.renew(flow_id, scheduled_for)
            except DATABASE_ERRORS as exc:
                log.warning("schedule.lease_renewal_failed", error=describe(exc))


class Scheduler:
    """The daemons' side task: starts each scheduled flow's due tick, one at a time per flow."""

    def __init__(
        self,
        runner: TickRunner,
        flows: Callable[[], FlowSet],
        *,
        clock: Clock | None = None,
        grace_s: float = 25.0,
    ) -> None:
        self._runner = runner
        self._flows = flows
        self._clock = clock or SystemClock()
        self._grace_s = grace_s  # for ticks under way to finish their row, on the way out
        self._last: dict[int, datetime] = {}  # latest tick started (or seen taken), per flow
        self._not_before: dict[int, datetime] = {}  # after a failure
        self.running: dict[int, asyncio.Task[TickResult | None]] = {}

    async def run(self) -> None:
        """Until cancelled; then ticks under way finish their row (within the drain time)."""
        try:
            while True:
                now = self._clock.now()
                await self.start_due(now)
                await self._clock.sleep_until(self._next_wake(now))
        finally:
            await self._wind_down()

    async def start_due(self, now: datetime) -> None:
        """Start the tick of every scheduled flow that fell due by `now` and is not running."""
        for flow_id, scheduled in sorted(self._flows().schedules.items()):
            task = self.running.get(flow_id)
            if (task is not None and not task.done()) or self._not_before.get(flow_id, now) > now:
                continue  # a tick still running: the next one waits, then runs once
            last = self._last.get(flow_id)
            if last is None:
                try:
                    last = self._last[flow_id] = await self._baseline(scheduled, now)
                except DATABASE_ERRORS as exc:
                    log.warning(
                        "schedule.unavailable",
                        flow_id=flow_id,
                        error=describe(exc),
                    )
                    self._not_before[flow_id] = now + _RETRY_AFTER
                    continue
                if flow_id in self.running and not self.running[flow_id].done():
                    continue  # resuming an unfinished tick
            due, count = scheduled.schedule.last_due(last, now)
            if due is None:
                continue
            if count > 1:
                log.warning(
                    "schedule.missed",
                    flow_id=flow_id,
                    skipped=count - 1,
                    running=due,
                    since=last,
                )
            self._start(scheduled, due)

    async def _baseline(self, scheduled: ScheduledFlow, now: datetime) -> datetime:
        """Where the flow's ticks count from: its latest recorded tick (resumed if it did
        not finish), else now: a flow first seen is not run for ticks before it."""
        flow_id = scheduled.flow.flow_id
        latest = await self._runner.ticks.latest(flow_id)
        if latest is None:
            return now
        scheduled_for, finished = latest
        if not finished:
            self._start(scheduled, scheduled_for)
        return scheduled_for

    def _start(self, scheduled: ScheduledFlow, due: datetime) -> None:
        flow_id = scheduled.flow.flow_id
        self._last[flow_id] = max(due, self._last.get(flow_id, due))
        self.running[flow_id] = asyncio.create_task(
            self._tick(scheduled, due), name=f"tick-{flow_id}"
        )

    async def _tick(self, scheduled: ScheduledFlow, due: datetime) -> TickResult | None:
        flow_id = scheduled.flow.flow_id
        try:
            return await self._runner.run(scheduled, due, self._flows())
        except Exception as exc:  # one flow's failed tick must not stop the others
            # Counted from the database again: the unfinished tick is resumed.
            self._last.pop(flow_id, None)
            self._not_before[flow_id] = self._clock.now() + _RETRY_AFTER
            log.error(
                "schedule.tick_failed",
                flow_id=flow_id,
                scheduled_for=due,
                error=describe(exc),
                retry_in_s=_RETRY_AFTER.total_seconds(),
            )
            return None

    def _next_wake(self, now: datetime) -> datetime:
        wake = now + _RECHECK
        for flow_id, scheduled in self._flows().schedules.items():
            if (last := self._last.get(flow_id)) is not None:
                wake = min(wake, scheduled.schedule.next_after(max(last, now)))
        return wake

    async def _wind_down(self) -> None:
        self._runner.stop()
        tasks = [task for task in self.running.values() if not task.done()]
        if not tasks:
            return
        _, late = await asyncio.wait(tasks, timeout=self._grace_s)
        for task in late:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def run_once(
    runner: TickRunner, flows: FlowSet, flow_id: int, clock: Clock | None = None
) -> Summary:
    """`flowd --once --schedule FLOW_ID`: one tick of the flow, now (to the second)."""
    scheduled = flows.schedules.get(flow_id)
    if scheduled is None:
        raise ConfigurationError(
            f"flow {flow_id} is not an enabled SCHEDULE flow that works"
            " (see `flowd validate` and the flow.refused log)"
        )
    now = (clock or SystemClock()).now().replace(microsecond=0)
    result = await runner.run(scheduled, now, flows)
    summary = Summary()
    if result is not None:
        summary.events = result.rows_done
        summary.add(result.runs)
    return summary
