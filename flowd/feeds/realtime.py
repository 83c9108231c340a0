"""The Realtime feed: events from Supabase Realtime, at most once.

What was cut short or never started at shutdown is recorded FAILURE, so
`flowd --once --failed` can run it later.
"""

from __future__ import annotations

import json
from collections.abc import Hashable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flowd.app import App
from flowd.chain import OwnWrites
from flowd.daemon import Daemon
from flowd.engine import Engine
from flowd.errors import EventError
from flowd.feeds.events import parse_event
from flowd.flows import FlowSet
from flowd.logs import get_logger
from flowd.models import ChangeEvent
from flowd.ops import metrics
from flowd.ops.health import Health

if TYPE_CHECKING:
    from flowd.feeds.realtime_client import Binding

log = get_logger()

CONTROL_TABLES = ("flows", "rules", "actions")
NOT_STARTED = "not run: flowd stopped before this event was worked on"
CUT_SHORT = "cut short: flowd stopped before this flow finished"


class RealtimeDaemon(Daemon[ChangeEvent]):
    """Events from Supabase Realtime: at most once, so what is cut short is recorded FAILURE."""

    feed_name = "realtime"

    def __init__(self, app: App, *, save_events: Path | None = None) -> None:
        super().__init__(app, save_events=save_events)
        self._control = {(self._settings.schema_name, table) for table in CONTROL_TABLES}

    def _make_engine(self, flow_set: FlowSet) -> Engine:
        return self._app.engine(flow_set, own_writes=OwnWrites())

    async def _start(self, flow_set: FlowSet) -> None:
        # Imported here: the Realtime client (websockets, its many pydantic models) takes
        # megabytes that durable delivery does without.
        from flowd.feeds.realtime_client import RealtimeSource, Timing

        settings = self._settings
        url, key = settings.require_supabase()
        self._source = RealtimeSource(
            url=url,
            key=key,
            sink=self._receive,
            room=self._pipeline.room,
            timing=Timing(
                ready_timeout=settings.realtime_ready_timeout_s,
                heartbeat=settings.realtime_heartbeat_s,
                stall=settings.realtime_stall_s,
                backoff=settings.realtime_backoff_s,
                max_backoff=settings.realtime_max_backoff_s,
            ),
        )
        self._source.set_bindings(self._bindings(flow_set))

    async def _feed(self) -> None:
        await self._source.run(self._stopping)

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
        self._save(event)
        self._pipeline.put(event)

    async def _work(self, item: ChangeEvent) -> None:
        await self._handle_waiting_out_outages(item, item)

    def _row_key(self, item: ChangeEvent) -> Hashable:
        """Events of one row share a key (the table's whole, if its key is unknown)."""
        table = self._engine.flows.tables.get((item.schema_name, item.table))
        row = item.old if item.type == "DELETE" else item.new
        if table is None or not table.primary_key or any(c not in row for c in table.primary_key):
            return (item.schema_name, item.table)
        values = tuple(json.dumps(row[column], sort_keys=True) for column in table.primary_key)
        return (item.schema_name, item.table, values)

    def _watch_health(self, health: Health) -> None:
        """Every binding is live (flowd's own tables are optional, README step 2)."""
        optional = {(schema, table) for schema, table in self._control}
        health.add_check("realtime", lambda: self._source.not_live(optional))
        metrics.REALTIME_CONNECTED.set_function(lambda: self._source.live.is_set())

    def _bindings(self, flow_set: FlowSet) -> set[Binding]:
        control = {(schema, table, "*") for schema, table in self._control}
        return set(flow_set.index.bindings()) | control

    def _request_reload(self) -> None:
        self._source.retry_rejected()
        super()._request_reload()

    async def _flows_changed(self, flow_set: FlowSet) -> None:
        self._source.set_bindings(self._bindings(flow_set))

    async def _finish(self, unfinished: list[ChangeEvent]) -> None:
        """Record FAILURE for what was cut short or never started, so nothing is lost."""
        cut_short = await self._app.recorder.abandon(CUT_SHORT, NOT_STARTED)
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
