"""`flowd run`: the daemon. A feed → pipeline (bounded, in order per row) → engine.

`Daemon` drives one `Feed` (see `flowd.feeds.base`) and owns what every feed shares: the
flows kept current (notices of flow edits, gathered into one reload; SIGHUP; a periodic
re-read as the guarantee), the pipeline, outages waited out, and the lifecycle: on
SIGTERM or SIGINT it stops taking events, lets in-flight work finish within
FLOWD_SHUTDOWN_TIMEOUT_S, hands what is left to the feed and exits 0. `run_until_idle` is
the same daemon for a feed that stops by itself once nothing is pending (`flowd --once`
in durable delivery).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, Generic

from flowd.config import Settings
from flowd.db import is_outage
from flowd.engine import Engine, FlowRun
from flowd.errors import describe
from flowd.feeds.base import Feed, Handle, Work
from flowd.flows import FlowSet
from flowd.logs import get_logger
from flowd.models import ChangeEvent
from flowd.ops import metrics
from flowd.ops.health import Health
from flowd.ops.signals import handle_signals
from flowd.ops.supervision import Supervision
from flowd.outage import Availability
from flowd.pipeline import Pipeline

log = get_logger()

_DEBOUNCE_S = 0.3  # a flow is usually written in several statements
_FEED_WIND_DOWN_S = 10.0

FlowLoader = Callable[[FlowSet], Awaitable[FlowSet]]  # the flows again, given the current ones
# A task composed in from outside (the scheduler, say), started with the daemon it serves.
SideTask = Callable[["Daemon[Any]"], Coroutine[Any, Any, None]]


class Daemon(Generic[Handle]):
    """The lifecycle around one feed of work into the engine."""

    def __init__(
        self,
        feed: Feed[Handle],
        engine: Engine,
        *,
        settings: Settings,
        load_flows: FlowLoader,
        available: Availability,
        health: Health | None = None,
        side_tasks: Sequence[tuple[str, SideTask]] = (),
        ran: Callable[[list[FlowRun]], None] = lambda runs: None,
        save_events: Path | None = None,
        capacity: int | None = None,
    ) -> None:
        self._feed = feed
        self.engine = engine
        self._settings = settings
        self._load_flows = load_flows
        self._available = available
        self._health = health or Health()
        self._side_tasks = side_tasks
        self._ran = ran  # told the runs of each piece of work handled
        self._save_events_path = save_events
        self._saved: IO[str] | None = None
        self.stopping = asyncio.Event()
        self._reload = asyncio.Event()
        self._reload_asked_at = 0.0  # monotonic time of the notice the next reload answers
        self.started = asyncio.Event()  # the feed is set up; events are being taken
        # Every event held is worked on; FLOWD_CONCURRENCY bounds the flows running their
        # actions (`ActionRunner`), so claims and outcomes are written in large groups.
        size = capacity or settings.queue_size
        self._pipeline: Pipeline[Work[Handle]] = Pipeline(
            self._work, feed.row_key, concurrency=size, capacity=size
        )

    @property
    def flows(self) -> FlowSet:
        return self.engine.flows

    def stop(self) -> None:
        """Ask the daemon to finish (as SIGTERM does)."""
        self.stopping.set()

    # ------------------------------------------------- the intake (what a feed sees)

    @property
    def held(self) -> int:
        return self._pipeline.held

    async def room(self) -> None:
        await self._pipeline.room()

    async def idle(self) -> None:
        await self._pipeline.idle()

    def put(self, work: Work[Handle]) -> None:
        metrics.event_received(work.event.commit_timestamp)
        self._save(work.event)
        self._pipeline.put(work)

    def reload(self) -> None:
        if not self._reload.is_set():
            self._reload_asked_at = time.monotonic()  # the first notice, for `delay_s`
            self._reload.set()

    # ------------------------------------------------------------- lifecycle

    async def run(self) -> int:
        """Until SIGTERM (or a task that dies); the exit code."""
        with handle_signals(self.stop, self._reload_signalled), self._open_save_file():
            await self._feed.start(self.engine.flows, self)
            self.started.set()
            supervision = await Supervision(self._watch_health()).start(
                self._settings, self.stopping
            )
            feed = asyncio.create_task(self._feed.run(), name=self._feed.name)
            stop = asyncio.ensure_future(self.stopping.wait())
            reloader = asyncio.create_task(self._reload_loop(), name="reloader")
            try:
                code = await self._serve(feed, stop, reloader)
            finally:
                await supervision.stop()
        return code

    async def run_until_idle(self) -> int:
        """Until the feed has nothing more to put (it returns); the exit code.

        A feed that raises ends the daemon with its error, after the leftovers are handed
        back to it."""
        await self._feed.start(self.engine.flows, self)
        self.started.set()
        feed = asyncio.create_task(self._feed.run(), name=self._feed.name)
        code = await self._serve(feed, feed, drain=False)
        if not feed.cancelled() and (error := feed.exception()) is not None:
            raise error
        return code

    async def _serve(
        self,
        feed: asyncio.Task[None],
        stop: asyncio.Future[Any],
        *tasks: asyncio.Task[None],
        drain: bool = True,
    ) -> int:
        """Work until `stop` is done; then drain, stop every task and finish the feed."""
        dispatcher = asyncio.create_task(self._pipeline.run(), name="pipeline")
        side = [
            *(
                asyncio.create_task(task, name=name)
                for name, task in self._feed.side_tasks().items()
            ),
            *(asyncio.create_task(start(self), name=name) for name, start in self._side_tasks),
        ]
        everything = {feed, dispatcher, *tasks, *side}
        code = await self._until_stopped(stop, everything - {stop})
        with contextlib.suppress(Exception):
            await asyncio.wait_for(feed, _FEED_WIND_DOWN_S)  # no new events
        if drain:
            await self._drain()
        self._available.give_up()  # what is left is accounted for by the feed's `finish`
        for task in everything - {feed}:
            task.cancel()
        feed.cancel()
        await asyncio.gather(*everything, return_exceptions=True)
        await self._feed.finish(await self._pipeline.stop())
        return code

    def _watch_health(self) -> Health:
        """Readiness: the probes given (the database), and the feed's own checks."""
        metrics.QUEUE_DEPTH.set_function(lambda: self._pipeline.held)
        self._feed.watch_health(self._health)
        return self._health

    async def _until_stopped(
        self, stop: asyncio.Future[Any], tasks: set[asyncio.Task[None]]
    ) -> int:
        """Wait for `stop`; any other task that ends by itself also stops the daemon."""
        done, _ = await asyncio.wait({stop, *tasks}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        # A task that returned in the same turn as the stop (the feed seeing it) ended by it.
        stopped = stop in done
        died = [task for task in tasks if task in done and not (stopped and _returned(task))]
        for task in died:
            # Exit non-zero, so the service manager restarts flowd.
            error = None if task.cancelled() else task.exception()
            log.error("daemon.task_died", task=task.get_name(), error=repr(error))
        self.stopping.set()
        return 1 if died else 0

    async def _drain(self) -> None:
        timeout = self._settings.shutdown_timeout_s
        log.info("shutdown.draining", events=self._pipeline.held, timeout_s=timeout)
        try:
            await asyncio.wait_for(self._pipeline.idle(), timeout)
        except TimeoutError:
            log.warning("shutdown.timeout", events=self._pipeline.held, timeout_s=timeout)

    # ------------------------------------------------------------------ work

    async def _work(self, work: Work[Handle]) -> None:
        """Handle one piece of work (the pipeline calls this); the feed accounts for it."""
        try:
            runs = await self._handle_waiting_out_outages(work)
        except Exception as exc:
            await self._feed.failed(work, exc)
            return
        if runs is not None:
            self._ran(runs)
        await self._feed.handled(work, runs is not None)

    async def _handle_waiting_out_outages(self, work: Work[Handle]) -> list[FlowRun] | None:
        """Handle one event; wait out a database outage rather than lose the event.

        None when, after an outage, the feed says the event is no longer ours.
        """
        available = self._available
        while True:
            try:
                return await self.engine.handle(work)
            except Exception as exc:
                if not is_outage(exc) or self.stopping.is_set():
                    raise
                log.warning("event.retry", error=describe(exc))
                available.mark_lost(exc)
                await available.wait_available()
                if not await self._feed.still_ours(work):
                    return None

    def _save(self, event: ChangeEvent) -> None:
        if self._saved is not None:
            self._saved.write(json.dumps(event.to_wire(), default=str) + "\n")

    # ---------------------------------------------------------------- reload

    def _reload_signalled(self) -> None:
        self._feed.reload_signalled()
        self.reload()

    async def _reload_loop(self) -> None:
        """Reload on the first notice (after a pause that gathers the rest of an edit
        written in several statements) or at the periodic re-read, whichever comes first."""
        while True:
            try:
                await asyncio.wait_for(self._reload.wait(), self._settings.reload_interval_s)
            except TimeoutError:
                self._reload_asked_at = time.monotonic()  # the periodic tick
            await asyncio.sleep(_DEBOUNCE_S)
            asked_at = self._reload_asked_at
            self._reload.clear()  # a notice from now on asks for the next reload
            try:
                await self._swap(await self._load_flows(self.engine.flows), asked_at)
            except Exception as exc:  # a failed reload keeps the current flows running
                log.error("flows.reload_failed", error=describe(exc))

    async def _swap(self, flow_set: FlowSet, asked_at: float) -> None:
        old = self.engine.flows
        if old.by_id == flow_set.by_id and old.refused == flow_set.refused:
            return
        self.engine.flows = flow_set
        await self._feed.flows_changed(flow_set)
        log.info(
            "flows.reloaded",
            delay_s=round(time.monotonic() - asked_at, 3),
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


def _returned(task: asyncio.Task[None]) -> bool:
    """The task ended without an error (and was not cancelled)."""
    return not task.cancelled() and task.exception() is None
