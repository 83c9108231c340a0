"""Durable delivery: `flowd run` and `flowd --once` with FLOWD_DELIVERY=durable.

Events come from the event log (`flowd.feeds.eventlog`), where a trigger wrote them in the
changing transaction, so nothing committed is lost while flowd, the network or
Realtime is down. The daemon claims events in batches under a lease, hands them to the
pipeline (in order per row), and marks each handled once the engine is done with it;
marks are written in groups. A notice on `flowd_events` (heard by the daemon's
listener, `flowd.listener`) wakes the claim loop, and the log is polled every
FLOWD_POLL_INTERVAL_S regardless: a wake-up saves time, the poll guarantees progress.
Leases are renewed while events are held. On shutdown the leases of unfinished events
are given back, and an execution cut short stays RUNNING, to be resumed where it stopped
by whichever worker claims its event next.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable, Mapping
from functools import partial

import asyncpg

from flowd.backoff import Backoff
from flowd.config import Settings
from flowd.db import DATABASE_ERRORS, is_outage, worker_id
from flowd.errors import ExecutionTakenOver, describe
from flowd.feeds.base import Delivery, Intake, SideTasks, Work
from flowd.feeds.eventlog import (
    MAX_TRIES,
    CaptureTriggers,
    ColumnsOf,
    EventLog,
    LoggedEvent,
    UnreadableEvent,
)
from flowd.flows import FlowSet
from flowd.listener import EVENTS_CHANNEL
from flowd.logs import get_logger
from flowd.models import Column
from flowd.ops.health import Health
from flowd.outage import Availability
from flowd.record import Recorder
from flowd.summary import Summary
from flowd.waits import first_of

log = get_logger()

CLAIM_BATCH = 100
_MARK_RETRY_S = 1.0


def columns_of(flow_set: FlowSet) -> ColumnsOf:
    """The wire's `columns` of a watched table, from the catalog the flows were loaded with."""
    cache: dict[tuple[str, str], tuple[Column, ...]] = {}

    def lookup(schema: str, name: str) -> tuple[Column, ...]:
        key = (schema, name)
        if key not in cache:
            table = flow_set.tables.get(key)
            columns = table.columns.values() if table is not None else ()
            cache[key] = tuple(Column(name=c.name, type=c.typname) for c in columns)
        return cache[key]

    return lookup


async def _count_failed_try(event_log: EventLog, event_id: int, reason: str) -> bool:
    """An event could not be read or handled (not for an outage): count the try; True once
    the event is set aside. A database that fails this write too leaves the event's lease
    to run out, and the event is tried again."""
    try:
        tries = await event_log.try_failed(event_id, reason)
    except DATABASE_ERRORS as exc:
        log.warning("eventlog.mark_failed", error=describe(exc), event_id=event_id)
        return False
    if tries is None:
        return False
    if tries < MAX_TRIES:
        log.warning("event.try_failed", event_id=event_id, tries=tries, error=reason)
        return False
    log.error("event.set_aside", event_id=event_id, tries=tries, reason=reason)
    return True


class EventLogFeed:
    """The event log, claimed under leases: resumable delivery.

    With `until_idle` (`flowd --once`) it claims no more than can start at once, so none
    waits out its lease in a queue, and stops once nothing is pending; `summary` counts
    the events and those set aside."""

    name = "event-log"

    def __init__(
        self,
        settings: Settings,
        database: asyncpg.Pool,
        available: Availability,
        recorder: Recorder,
        *,
        until_idle: bool = False,
    ) -> None:
        self._settings = settings
        self._log = EventLog(
            database, settings.schema_name, worker=worker_id(), lease_s=settings.lease_s
        )
        self._triggers = CaptureTriggers(database, settings.schema_name)
        self._available = available
        self._recorder = recorder
        self._until_idle = until_idle
        self.capacity = settings.concurrency if until_idle else settings.queue_size
        self._batch = self.capacity if until_idle else CLAIM_BATCH
        self.summary = Summary()
        self._seen: set[int] = set()  # until idle: an event tried again is one event
        self._wake = asyncio.Event()
        self._held: set[int] = set()  # claimed here; handled mark not yet written
        self._handled: list[int] = []  # handled; mark not yet written
        self._marking: set[int] = set()  # handled; mark being written
        self._writing = asyncio.Lock()
        self._handled_added = asyncio.Event()

    async def start(self, flow_set: FlowSet, intake: Intake[LoggedEvent]) -> None:
        self._intake = intake
        await self.flows_changed(flow_set)
        if not self._until_idle:
            await self._report_backlog()

    def watch_health(self, health: Health) -> None:
        """Every watched table carries the capture trigger."""
        health.add_check("capture", self._uncaptured)

    def _uncaptured(self) -> str | None:
        failed = self._trigger_sync.failed
        return f"no capture trigger on {', '.join(failed)}" if failed else None

    async def flows_changed(self, flow_set: FlowSet) -> None:
        self._columns_of = columns_of(flow_set)
        self._trigger_sync = await self._triggers.sync(flow_set.tables.values())

    def reload_signalled(self) -> None:
        """The daemon reloads; nothing of the feed's own to retry."""

    def side_tasks(self) -> SideTasks:
        tasks = {"handled-marks": self._write_handled_marks(), "leases": self._renew_leases()}
        if not self._until_idle:
            tasks |= {"maintenance": self._maintain()}
        return tasks

    def channels(self) -> Mapping[str, Callable[[], None]]:
        """A change logged wakes the claim loop."""
        return {EVENTS_CHANNEL: self._wake.set}

    # ------------------------------------------------------------------ the feed

    async def run(self) -> None:
        if not self._until_idle:
            log.info("eventlog.started", worker=self._log.worker)
        intake = self._intake
        backoff, failed = Backoff(initial=1.0, maximum=30.0), False
        while not intake.stopping.is_set():
            await intake.room()
            limit = min(self._batch, self.capacity - intake.held)
            self._wake.clear()  # before the claim: a change committed during it wakes us
            busy = self._busy()  # before the claim: a mark written during it unblocks a row
            try:
                events = await self._claim(limit, failed)
            except Exception as exc:  # the feed must outlive any failure; the poll goes on
                if self._until_idle:
                    raise
                failed, pause = True, backoff.next()
                self._available.failed(exc, "eventlog.claim_failed", retry_in_s=pause)
                away = not self._available.up.is_set()
                wakes = [intake.stopping, *([self._available.up] if away else [])]
                await first_of(asyncio.sleep(pause), *(wake.wait() for wake in wakes))
                continue
            backoff.reset()
            failed = False
            for logged in events:
                await self._take(logged)
            if self._until_idle:
                if not events and not await self._settled(busy):
                    return
            elif len(events) < limit:
                poll = asyncio.sleep(self._settings.poll_interval_s)
                await first_of(poll, intake.stopping.wait(), self._wake.wait())

    async def _claim(self, limit: int, failed: bool) -> list[LoggedEvent | UnreadableEvent]:
        if self._until_idle:  # an outage is waited out; any other failure ends the run
            claim = partial(self._log.claim, limit, self._columns_of)
            return await self._available.until_done(claim)
        # Only a failed claim can have committed unseen: then find what it leased.
        known = self._held | set(self._handled) | self._marking if failed else None
        return await self._log.claim(limit, self._columns_of, known=known)

    async def _take(self, logged: LoggedEvent | UnreadableEvent) -> None:
        if isinstance(logged, UnreadableEvent):
            await self._count_failed_try(logged.event_id, logged.reason)
            return
        if logged.event_id in self._held:
            return  # its lease ran out during an outage, and it is still worked on here
        if self._until_idle:
            self.summary.events += logged.event_id not in self._seen
            self._seen.add(logged.event_id)
        self._held.add(logged.event_id)
        self._intake.put(Work(logged.event, logged.cause, Delivery.RESUMABLE, logged))

    def _busy(self) -> bool:
        """Work held here, or handled marks not yet written."""
        return bool(self._intake.held or self._held or self._handled or self._marking)

    async def _settled(self, busy_at_claim: bool) -> bool:
        """Until idle, nothing claimed: wait for the work held and its marks (the next
        event of each of those rows may be claimed then); False when nothing was in flight,
        then or when the claim began (a mark committed during the claim may have unblocked
        a row the claim saw blocked: claim again)."""
        if not (busy_at_claim or self._busy()):
            return False
        await self._intake.idle()
        while True:
            if await self._flush_handled():
                return True
            await asyncio.sleep(_MARK_RETRY_S)

    async def _count_failed_try(self, event_id: int, reason: str) -> None:
        self.summary.set_aside += await _count_failed_try(self._log, event_id, reason)

    async def handled(self, work: Work[LoggedEvent], done: bool) -> None:
        self._held.discard(work.handle.event_id)
        if done:
            self._handled.append(work.handle.event_id)
            self._handled_added.set()

    async def failed(self, work: Work[LoggedEvent], error: Exception) -> None:
        event_id = work.handle.event_id
        self._held.discard(event_id)
        if isinstance(error, ExecutionTakenOver):
            log.warning("event.taken_over", event_id=event_id)
            return
        if is_outage(error):
            raise error  # shutting down during an outage: the lease is given back
        # a poison event: tried again, then set aside
        await self._count_failed_try(event_id, describe(error))

    def row_key(self, work: Work[LoggedEvent]) -> Hashable:
        return work.handle.row

    async def still_ours(self, work: Work[LoggedEvent]) -> bool:
        event_id = work.handle.event_id
        renewed = await self._available.until_done(lambda: self._log.renew([event_id]))
        return event_id in renewed

    # ------------------------------------------------------------ side tasks

    async def _write_handled_marks(self) -> None:
        """Group commit: marks that pile up while one write is under way go in the next."""
        while True:
            await self._handled_added.wait()
            self._handled_added.clear()
            if not await self._flush_handled():
                await asyncio.sleep(_MARK_RETRY_S)
                self._handled_added.set()

    async def _flush_handled(self) -> bool:
        async with self._writing:  # after the write under way, if any
            batch, self._handled = self._handled, []
            if not batch:
                return True
            self._marking = set(batch)
            try:
                await self._log.handled(batch)
            except DATABASE_ERRORS as exc:
                self._handled = batch + self._handled
                self._available.failed(exc, "eventlog.mark_failed", retry_in_s=_MARK_RETRY_S)
                return False
            finally:
                self._marking = set()
        self._wake.set()  # the next event of each of these rows may be claimed now
        return True

    async def _renew_leases(self) -> None:
        """Every third of a lease; an outage is waited out, then the leases renewed at once."""
        while True:
            await asyncio.sleep(self._settings.lease_s / 3)
            held = set(self._held) | set(self._handled)
            if not held:
                continue
            try:
                renewed = await self._available.until_done(partial(self._log.renew, held))
            except DATABASE_ERRORS as exc:
                log.warning("eventlog.lease_renewal_failed", error=describe(exc))
                continue
            # Events still worked on here (not merely awaiting their handled mark).
            if lost := (held - renewed) & self._held:
                log.warning("eventlog.leases_lost", event_ids=sorted(lost))

    async def _maintain(self) -> None:
        """Log the backlog and delete handled events past FLOWD_EVENT_RETENTION."""
        while True:
            await asyncio.sleep(self._settings.maintenance_interval_s)
            try:
                await self._report_backlog()
                deleted = await self._log.purge(self._settings.event_retention_s)
            except DATABASE_ERRORS as exc:
                self._available.failed(exc, "eventlog.maintenance_failed")
                continue
            if deleted:
                log.info("eventlog.purged", events=deleted)

    async def _report_backlog(self) -> None:
        backlog = await self._log.backlog()
        log.info(
            "eventlog.backlog",
            pending=backlog.pending,
            oldest_pending_age_s=round(backlog.oldest_age_s, 3)
            if backlog.oldest_age_s is not None
            else None,
            set_aside=backlog.set_aside,
        )

    # -------------------------------------------------------------- shutdown

    async def finish(self, unfinished: list[Work[LoggedEvent]]) -> None:
        """Write the last marks; give back the leases of what was not finished."""
        await self._flush_handled()
        leftover = set(self._held) | {work.handle.event_id for work in unfinished}
        try:
            if leftover:
                await self._log.release(leftover)
        except DATABASE_ERRORS as exc:
            log.warning("eventlog.release_failed", error=describe(exc))
        if self._until_idle:
            return
        log.info(
            "shutdown.finished",
            events_released=len(leftover),
            executions_to_resume=sorted(self._recorder.in_flight),
        )
