"""`flowd run`: the daemon. A feed → pipeline (bounded, in order per row) → engine.

`Daemon` owns what both delivery modes share: the flows kept current (a periodic
re-read as a safety net, SIGHUP, and the feed's own change notices), the pipeline, and
the lifecycle: on SIGTERM or SIGINT it stops taking events, lets in-flight work finish
within FLOWD_SHUTDOWN_TIMEOUT_S, hands what is left to the feed and exits 0.
The feeds are in `flowd.feeds`: `realtime` (Supabase Realtime) and `durable` (the
event log).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import json
from collections.abc import Hashable, Iterator
from pathlib import Path
from typing import IO, Generic, TypeVar

from flowd.app import App
from flowd.chain import Cause
from flowd.db import is_outage
from flowd.engine import Engine
from flowd.errors import describe
from flowd.feeds.schedule import Scheduler, TickRunner
from flowd.flows import FlowSet
from flowd.logs import get_logger
from flowd.models import ChangeEvent
from flowd.ops import metrics
from flowd.ops.health import Health
from flowd.ops.signals import handle_signals
from flowd.ops.supervision import Supervision
from flowd.pipeline import Pipeline

log = get_logger()

_DEBOUNCE_S = 0.3  # a flow is usually written in several statements

Item = TypeVar("Item")


class Daemon(abc.ABC, Generic[Item]):
    """The lifecycle around one feed of events (`Item`s) into the engine."""

    feed_name = "feed"

    def __init__(self, app: App, *, save_events: Path | None = None) -> None:
        self._app = app
        self._settings = app.settings
        self._save_events_path = save_events
        self._saved: IO[str] | None = None
        self._stopping = asyncio.Event()
        self._reload = asyncio.Event()
        self.started = asyncio.Event()  # the feed is set up; events are being taken

    def stop(self) -> None:
        """Ask the daemon to finish (as SIGTERM does)."""
        self._stopping.set()

    @abc.abstractmethod
    def _make_engine(self, flow_set: FlowSet) -> Engine: ...

    @abc.abstractmethod
    async def _start(self, flow_set: FlowSet) -> None:
        """Prepare the feed for these flows (before any task runs)."""

    @abc.abstractmethod
    async def _feed(self) -> None:
        """Put events into the pipeline until `_stopping` is set."""

    @abc.abstractmethod
    async def _work(self, item: Item) -> None:
        """Handle one event (the pipeline calls this)."""

    @abc.abstractmethod
    def _row_key(self, item: Item) -> Hashable:
        """Events of one row share a key, so they run in order."""

    @abc.abstractmethod
    async def _flows_changed(self, flow_set: FlowSet) -> None:
        """The flows were reloaded: follow their tables."""

    @abc.abstractmethod
    async def _finish(self, unfinished: list[Item]) -> None:
        """After the drain: account for what was cut short or never started."""

    def _side_tasks(self) -> list[asyncio.Task[None]]:
        """Further tasks that live as long as the daemon: scheduled flows, the feed's own."""
        scheduler = Scheduler(
            TickRunner(self._app, stopping=self._stopping),
            lambda: self._engine.flows,
            grace_s=self._settings.shutdown_timeout_s,
        )
        return [asyncio.create_task(scheduler.run(), name="scheduler")]

    def _request_reload(self) -> None:
        self._reload.set()

    async def run(self) -> int:
        settings = self._settings
        flow_set = await self._app.load_flows()
        self._engine = self._make_engine(flow_set)
        # Every event held is worked on; FLOWD_CONCURRENCY bounds the flows running their
        # actions (`ActionRunner`), so claims and outcomes are written in large groups.
        self._pipeline: Pipeline[Item] = Pipeline(
            self._work,
            self._row_key,
            concurrency=settings.queue_size,
            capacity=settings.queue_size,
        )
        with handle_signals(self.stop, self._request_reload), self._open_save_file():
            await self._start(flow_set)
            self.started.set()
            supervision = await Supervision(self._health()).start(settings, self._stopping)
            feed = asyncio.create_task(self._feed(), name=self.feed_name)
            dispatcher = asyncio.create_task(self._pipeline.run(), name="pipeline")
            reloader = asyncio.create_task(self._reload_loop(), name="reloader")
            side = self._side_tasks()
            code = await self._until_stopped(feed, dispatcher, reloader, *side)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(feed, 10)  # no new events from here on
            await self._drain()
            self._app.available.give_up()  # what is left is accounted for by `_finish`
            for task in (feed, dispatcher, reloader, *side):
                task.cancel()
            await asyncio.gather(feed, dispatcher, reloader, *side, return_exceptions=True)
            await self._finish(await self._pipeline.stop())
            await supervision.stop()
        return code

    def _health(self) -> Health:
        """Readiness: the database answers, and the feed's own checks (`_watch_health`)."""
        health = Health(redact=self._app.secrets.redact)
        health.add_probe("database", lambda: self._app.database.fetchval("SELECT 1"))
        metrics.QUEUE_DEPTH.set_function(lambda: self._pipeline.held)
        self._watch_health(health)
        return health

    def _watch_health(self, health: Health) -> None:
        """Add the feed's readiness checks and gauges."""

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

    async def _handle_waiting_out_outages(
        self, item: Item, event: ChangeEvent, cause: Cause | None = None
    ) -> bool:
        """Handle one event; wait out a database outage rather than lose the event.

        False when, after an outage, the feed says the event is no longer ours.
        """
        available = self._app.available
        while True:
            try:
                await self._engine.handle(event, cause)
                return True
            except Exception as exc:
                if not is_outage(exc) or self._stopping.is_set():
                    raise
                log.warning("event.retry", error=describe(exc))
                available.mark_lost(exc)
                await available.wait_available()
                if not await self._still_ours(item):
                    return False

    async def _still_ours(self, item: Item) -> bool:
        """After an outage: may this process still work on `item`?"""
        return True

    def _save(self, event: ChangeEvent) -> None:
        if self._saved is not None:
            self._saved.write(json.dumps(event.to_wire(), default=str) + "\n")

    async def _reload_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reload.wait(), self._settings.reload_interval_s)
            await asyncio.sleep(_DEBOUNCE_S)
            self._reload.clear()
            try:
                await self._swap(await self._app.load_flows(previous=self._engine.flows))
            except Exception as exc:  # a failed reload keeps the current flows running
                log.error("flows.reload_failed", error=describe(exc))

    async def _swap(self, flow_set: FlowSet) -> None:
        old = self._engine.flows
        if old.by_id == flow_set.by_id and old.refused == flow_set.refused:
            return
        self._engine.flows = flow_set
        await self._flows_changed(flow_set)
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
