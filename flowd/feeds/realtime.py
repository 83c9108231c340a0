"""The Realtime feed: events from Supabase Realtime, at most once.

What was cut short or never started at shutdown is recorded FAILURE, so
`flowd --once --failed` can run it later.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable, Mapping
from typing import TYPE_CHECKING, Any

from flowd.config import Settings
from flowd.engine import Engine
from flowd.errors import EventError
from flowd.feeds.base import Delivery, Intake, SideTasks, Work
from flowd.feeds.events import parse_event
from flowd.flows import FlowSet
from flowd.logs import get_logger
from flowd.ops import metrics
from flowd.ops.health import Health
from flowd.record import Recorder

if TYPE_CHECKING:
    from flowd.feeds.realtime_client import Binding, RealtimeSource

log = get_logger()

CONTROL_TABLES = ("flows", "rules", "actions")
NOT_STARTED = "not run: flowd stopped before this event was worked on"
CUT_SHORT = "cut short: flowd stopped before this flow finished"


class RealtimeFeed:
    """Events from Supabase Realtime: at most once, so what is cut short is recorded FAILURE.

    `engine` is the daemon's (it recognises flowd's own writes by their values). With
    `flow_edits`, changes of flowd's own tables are subscribed too and reload the flows
    (where the daemon cannot LISTEN for them; the tables are then optional in the
    publication)."""

    name = "realtime"

    def __init__(
        self, settings: Settings, engine: Engine, recorder: Recorder, *, flow_edits: bool
    ) -> None:
        self._settings = settings
        self._engine = engine
        self._recorder = recorder
        tables = CONTROL_TABLES if flow_edits else ()
        self._control = {(settings.schema_name, table) for table in tables}

    async def start(self, flow_set: FlowSet, intake: Intake[None]) -> None:
        # Imported here: the Realtime client (websockets, its many pydantic models) takes
        # megabytes that durable delivery does without.
        from flowd.feeds.realtime_client import RealtimeSource, Timing

        settings = self._settings
        url, key = settings.require_supabase()
        self._intake = intake
        self._source: RealtimeSource = RealtimeSource(
            url=url,
            key=key,
            sink=self._receive,
            room=intake.room,
            timing=Timing(
                ready_timeout=settings.realtime_ready_timeout_s,
                heartbeat=settings.realtime_heartbeat_s,
                stall=settings.realtime_stall_s,
                backoff=settings.realtime_backoff_s,
                max_backoff=settings.realtime_max_backoff_s,
            ),
        )
        self._source.set_bindings(self._bindings(flow_set))

    async def run(self) -> None:
        await self._source.run(self._intake.stopping)

    def _receive(self, data: dict[str, Any]) -> None:
        """The Realtime callback: only parse and enqueue (never raise, never block)."""
        if (data.get("schema"), data.get("table")) in self._control:
            self._intake.reload()
            return
        try:
            event = parse_event(data)
        except EventError as exc:
            log.error("event.unreadable", error=str(exc))
            return
        self._intake.put(Work(event, None, Delivery.AT_MOST_ONCE, None))

    async def handled(self, work: Work[None], done: bool) -> None:
        """Recorded by the engine already."""

    async def failed(self, work: Work[None], error: Exception) -> None:
        raise error  # the pipeline logs the event crashed

    async def still_ours(self, work: Work[None]) -> bool:
        return True  # no lease: nobody else has it

    def row_key(self, work: Work[None]) -> Hashable:
        """Events of one row share a key (the table's whole, if its key is unknown)."""
        item = work.event
        table = self._engine.flows.tables.get((item.schema_name, item.table))
        row = item.old if item.type == "DELETE" else item.new
        if table is None or not table.primary_key or any(c not in row for c in table.primary_key):
            return (item.schema_name, item.table)
        values = tuple(json.dumps(row[column], sort_keys=True) for column in table.primary_key)
        return (item.schema_name, item.table, values)

    def watch_health(self, health: Health) -> None:
        """Every binding is live (flowd's own tables are optional)."""
        optional = {(schema, table) for schema, table in self._control}
        health.add_check("realtime", lambda: self._source.not_live(optional))
        metrics.REALTIME_CONNECTED.set_function(lambda: self._source.live.is_set())

    def side_tasks(self) -> SideTasks:
        return {}

    def channels(self) -> Mapping[str, Callable[[], None]]:
        return {}  # changes come over Realtime

    def _bindings(self, flow_set: FlowSet) -> set[Binding]:
        control = {(schema, table, "*") for schema, table in self._control}
        return set(flow_set.index.bindings()) | control

    def reload_signalled(self) -> None:
        self._source.retry_rejected()

    async def flows_changed(self, flow_set: FlowSet) -> None:
        self._source.set_bindings(self._bindings(flow_set))

    async def finish(self, unfinished: list[Work[None]]) -> None:
        """Record FAILURE for what was cut short or never started, so nothing is lost."""
        cut_short = await self._recorder.abandon(CUT_SHORT, NOT_STARTED)
        for work in unfinished:
            try:
                await self._engine.record_not_started(work.event, NOT_STARTED)
            except Exception as exc:  # the database may be gone too; say what was lost
                log.error("event.lost", change=work.event.to_wire(), error=repr(exc))
        log.info(
            "shutdown.finished",
            cut_short_executions=cut_short,
            events_not_finished=len(unfinished),
        )
