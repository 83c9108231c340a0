"""`flowd run`: the daemon. Realtime → pipeline (bounded, in order per row) → engine.

Besides the event path it keeps the flows current (Realtime on flowd's own tables,
a periodic re-read as a safety net, SIGHUP) and owns the lifecycle: on SIGTERM or
SIGINT it stops taking events, lets in-flight work finish within
FLOWD_SHUTDOWN_TIMEOUT_S, records what was cut short or never started as FAILURE
(so `flowd --once --failed` can run it later), and exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Hashable, Iterator
from pathlib import Path
from typing import IO, Any

from flowd import metrics
from flowd.app import App
from flowd.chain import OwnWrites
from flowd.config import Settings
from flowd.db import CONNECTION_LOST
from flowd.engine import Engine
from flowd.errors import EventError
from flowd.flows import FlowSet
from flowd.health import Health
from flowd.logs import get_logger
from flowd.models import ChangeEvent
from flowd.pipeline import Pipeline
from flowd.realtime import Binding, RealtimeSource, Timing
from flowd.service import Supervision
from flowd.signals import handle_signals
from flowd.source import parse_event

log = get_logger()

CONTROL_TABLES = ("flows", "rules", "actions")
_DEBOUNCE_S = 0.3  # a flow is usually written in several statements
NOT_STARTED = "not run: flowd stopped before this event was worked on"
CUT_SHORT = "cut short: flowd stopped before this flow finished"


class Daemon:
    def __init__(self, app: App, *, save_events: Path | None = None) -> None:
        self._app = app
        self._settings = app.settings
        self._save_events_path = save_events
        self._saved: IO[str] | None = None
        self._stopping = asyncio.Event()
        self._reload = asyncio.Event()
        self._control = {(self._settings.schema_name, table) for table in CONTROL_TABLES}

    async def run(self) -> int:
        settings = self._settings
        url, key = settings.require_supabase()
        flow_set = await self._app.load_flows()
        self._engine = Engine(
            flow_set,
            self._app.runner,
            self._app.recorder,
            own_writes=OwnWrites(),
            max_chain_depth=settings.max_chain_depth,
        )
        self._pipeline: Pipeline[ChangeEvent] = Pipeline(
            self._work,
            self._row_key,
            concurrency=settings.concurrency,
            capacity=settings.queue_size,
        )
        self._source = RealtimeSource(
            url=url, key=key, sink=self._receive, room=self._pipeline.room, timing=_timing(settings)
        )
        self._source.set_bindings(self._bindings(flow_set))
        with handle_signals(self._stopping.set, self._request_reload), self._open_save_file():
            supervision = await Supervision(self._health()).start(settings, self._stopping)
            realtime = asyncio.create_task(self._source.run(self._stopping), name="realtime")
            dispatcher = asyncio.create_task(self._pipeline.run(), name="pipeline")
            reloader = asyncio.create_task(self._reload_loop(), name="reloader")
            code = await self._until_stopped(realtime, dispatcher, reloader)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(realtime, 10)  # no new events from here on
            await self._drain()
            for task in (realtime, dispatcher, reloader):
                task.cancel()
            await asyncio.gather(realtime, dispatcher, reloader, return_exceptions=True)
            await self._record_unfinished()
            await supervision.stop()
        return code

    def _health(self) -> Health:
        """Readiness: the database answers, every binding is live (flowd's own tables are
        optional, README step 2); metrics read the queue and the connection."""
        health = Health(redact=self._app.secrets.redact)
        health.add_probe("database", lambda: self._app.database.fetchval("SELECT 1"))
        optional = {(schema, table) for schema, table in self._control}
        health.add_check("realtime", lambda: self._source.not_live(optional))
        metrics.QUEUE_DEPTH.set_function(lambda: self._pipeline.held)
        metrics.REALTIME_CONNECTED.set_function(lambda: self._source.live.is_set())
        return health

    async def _until_stopped(self, *tasks: asyncio.Task[None]) -> int:
        """Wait for a stop signal; a side task that ends by itself also stops the daemon."""
        stop = asyncio.create_task(self._stopping.wait())
        done, _ = await asyncio.wait({stop, *tasks}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        died = [task for task in done if task is not stop]
        for task in died:
            # Exit non-zero, so the service manager restarts flowd.
            error = None if task.cancelled() else task.exception()
            log.error("daemon.task_died", task=task.get_name(), error=repr(error))
        self._stopping.set()
        return 1 if died else 0

    async def _drain(self) -> None:
        timeout = self._settings.shutdown_timeout_s
        log.info("shutdown.draining", events=self._pipeline.held, timeout_s=timeout)
        try:
            await asyncio.wait_for(self._pipeline.idle(), timeout)
        except TimeoutError:
            log.warning("shutdown.timeout", events=self._pipeline.held, timeout_s=timeout)

    async def _record_unfinished(self) -> None:
        """Record FAILURE for what was cut short or never started, so nothing is lost."""
        unfinished = await self._pipeline.stop()
        cut_short = await self._app.recorder.abandon(CUT_SHORT)
        for event in unfinished:
            try:
                await self._engine.record_not_started(event, NOT_STARTED)
            except Exception as exc:  # the database may be gone too; say what was lost
                log.error("event.lost", change=event.to_wire(), error=repr(exc))
        log.info(
            "shutdown.finished",
            cut_short_executions=cut_short,
            events_not_finished=len(unfinished),
        )

    def _receive(self, data: dict[str, Any]) -> None:
        """The Realtime callback: only parse and enqueue (never raise, never block)."""
        if (data.get("schema"), data.get("table")) in self._control:
            self._reload.set()
            return
        try:
            event = parse_event(data)
        except EventError as exc:
            log.error("event.unreadable", error=str(exc))
            return
        metrics.event_received(event.commit_timestamp)
        if self._saved is not None:
            self._saved.write(json.dumps(event.to_wire(), default=str) + "\n")
        self._pipeline.put(event)

    async def _work(self, event: ChangeEvent) -> None:
        """Handle one event; wait out a database outage rather than lose the event."""
        pause = 1.0
        while True:
            try:
                await self._engine.handle(event)
                return
            except CONNECTION_LOST as exc:
                if self._stopping.is_set():
                    raise
                log.warning("event.retry", error=f"{type(exc).__name__}: {exc}", retry_in_s=pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 30.0)

    def _row_key(self, event: ChangeEvent) -> Hashable:
        """Events of one row share a key (the table's whole, if its key is unknown)."""
        table = self._engine.flows.tables.get((event.schema_name, event.table))
        row = event.old if event.type == "DELETE" else event.new
        if table is None or not table.primary_key or any(c not in row for c in table.primary_key):
            return (event.schema_name, event.table)
        values = tuple(json.dumps(row[column], sort_keys=True) for column in table.primary_key)
        return (event.schema_name, event.table, values)

    def _bindings(self, flow_set: FlowSet) -> set[Binding]:
        control = {(schema, table, "*") for schema, table in self._control}
        return set(flow_set.index.bindings()) | control

    def _request_reload(self) -> None:
        self._source.retry_rejected()
        self._reload.set()

    async def _reload_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reload.wait(), self._settings.reload_interval_s)
            await asyncio.sleep(_DEBOUNCE_S)
            self._reload.clear()
            try:
                flow_set = await self._app.load_flows(previous=self._engine.flows)
            except Exception as exc:  # a failed reload keeps the current flows running
                log.error("flows.reload_failed", error=f"{type(exc).__name__}: {exc}")
                continue
            self._swap(flow_set)

    def _swap(self, flow_set: FlowSet) -> None:
        old = self._engine.flows
        if old.by_id == flow_set.by_id and old.refused == flow_set.refused:
            return
        self._engine.flows = flow_set
        self._source.set_bindings(self._bindings(flow_set))
        log.info(
            "flows.reloaded",
            flow_ids=sorted(flow_set.by_id),
            added=sorted(set(flow_set.by_id) - set(old.by_id)),
            removed=sorted(set(old.by_id) - set(flow_set.by_id)),
            changed=sorted(
                i for i in set(old.by_id) & set(flow_set.by_id) if old.by_id[i] != flow_set.by_id[i]
            ),
        )

    @contextlib.contextmanager
    def _open_save_file(self) -> Iterator[None]:
        if self._save_events_path is None:
            yield
            return
        with self._save_events_path.open("a", buffering=1, encoding="utf-8") as saved:
            self._saved = saved
            try:
                yield
            finally:
                self._saved = None


def _timing(settings: Settings) -> Timing:
    return Timing(
        ready_timeout=settings.realtime_ready_timeout_s,
        heartbeat=settings.realtime_heartbeat_s,
        stall=settings.realtime_stall_s,
        backoff=settings.realtime_backoff_s,
        max_backoff=settings.realtime_max_backoff_s,
    )


async def run_daemon(app: App, save_events: str | None) -> int:
    daemon = Daemon(app, save_events=Path(save_events) if save_events else None)
    return await daemon.run()
