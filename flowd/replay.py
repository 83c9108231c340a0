"""`flowd --once`: replay a file of change events (or the events of failed executions).

Events run one after another, in file order, through the same engine as the daemon.
A bad line is reported with its number and skipped; the exit code says whether
anything failed.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO

from flowd import flows as flow_store
from flowd.app import App
from flowd.db import worker_id
from flowd.engine import FlowRun
from flowd.errors import ConfigurationError
from flowd.eventlog import EventLog
from flowd.logs import get_logger
from flowd.models import ChangeEvent
from flowd.source import read_events

log = get_logger()


@dataclass
class Summary:
    events: int = 0
    bad_lines: int = 0
    runs: Counter[str] = field(default_factory=Counter)
    matched: int | None = None  # set by a dry run: events that matched some flow
    set_aside: int = 0  # durable: poison events set aside (or, with --failed, listed)

    @property
    def exit_code(self) -> int:
        return 1 if self.bad_lines or self.set_aside or self.runs["FAILURE"] else 0

    def add(self, runs: list[FlowRun]) -> None:
        self.runs.update(run.status for run in runs)

    def line(self) -> str:
        text = f"flowd: {self.events} event(s)"
        if self.bad_lines:
            text += f", {self.bad_lines} bad line(s)"
        executions = self.runs["SUCCESS"] + self.runs["FAILURE"]
        if self.matched is not None:
            return text + f"; {self.matched} matched a flow (dry run: nothing ran)"
        text += f"; {executions} execution(s): {self.runs['SUCCESS']} SUCCESS"
        text += f", {self.runs['FAILURE']} FAILURE; {self.runs['SKIPPED']} already ran"
        if self.set_aside:
            text += f"; {self.set_aside} event(s) set aside"
        return text


@contextmanager
def open_events(path: str) -> Iterator[IO[bytes]]:
    """The events file as bytes: each line is decoded alone (`read_events`)."""
    if path == "-":
        yield sys.stdin.buffer
        return
    try:
        stream = Path(path).open("rb")  # noqa: SIM115 - closed below; open errors are ours
    except OSError as exc:
        raise ConfigurationError(f"cannot read events file {path}: {exc.strerror}") from None
    with stream:
        yield stream


def _good_events(stream: IO[bytes], summary: Summary) -> Iterator[tuple[int, ChangeEvent]]:
    """The events of the stream, counted; bad lines are counted and logged, then skipped."""
    for line in read_events(stream):
        if line.event is None:
            summary.bad_lines += 1
            log.error("event.bad_line", line=line.number, error=line.error)
            continue
        summary.events += 1
        yield line.number, line.event


async def dry_run(app: App, events_path: str, flows_file: str | None) -> Summary:
    """Classify only: one JSON line of matched flow ids per event on stdout."""
    index = (await app.load_flows(flows_file)).index
    summary = Summary()
    matched = 0
    with open_events(events_path) as stream:
        for number, event in _good_events(stream, summary):
            flow_ids = [flow.flow_id for flow in index.classify(event).flows]
            matched += bool(flow_ids)
            print(json.dumps({"line": number, "flows": flow_ids}), flush=True)
    summary.matched = matched
    return summary


async def replay(app: App, events_path: str, flows_file: str | None, *, force: bool) -> Summary:
    """Run every event of the file through classify → act → record."""
    flows = await app.load_flows(flows_file)
    if flows_file is not None:
        await flow_store.require_stored(app.database, app.settings.schema_name, flows, flows_file)
    engine = app.engine(flows, force=force)
    summary = Summary()
    with open_events(events_path) as stream:
        for _, event in _good_events(stream, summary):
            summary.add(await engine.handle(event))
    return summary


async def rerun_failed(app: App, *, since: datetime | None, flow_id: int | None) -> Summary:
    """Run again the flows of executions that ended FAILURE, with today's definitions.

    In durable delivery, also list the events set aside (without --flow: they belong to
    no flow); they are not run again here."""
    flow_set = await app.load_flows()
    engine = app.engine(flow_set)
    recorder = app.recorder
    summary = Summary()
    if app.settings.delivery == "durable" and flow_id is None:
        await _list_set_aside(app, since, summary)
    for failed in await recorder.failed(since=since, flow_id=flow_id):
        summary.events += 1
        flow = flow_set.by_id.get(failed.flow_id)
        if flow is None:
            log.warning("flow.not_runnable", flow_id=failed.flow_id, reason="disabled or refused")
            summary.runs["FAILURE"] += 1
            continue
        if flow not in engine.matching(failed.event):
            log.warning("flow.no_longer_matches", flow_id=flow.flow_id)
            continue
        if not await recorder.claim_failed(failed.execution_id):
            summary.runs["SKIPPED"] += 1
            continue
        summary.add([await engine.rerun(flow, failed.event, failed.execution_id)])
    return summary


async def _list_set_aside(app: App, since: datetime | None, summary: Summary) -> None:
    settings = app.settings
    event_log = EventLog(
        app.database, settings.schema_name, worker=worker_id(), lease_s=settings.lease_s
    )
    for event in await event_log.set_aside(since):
        summary.set_aside += 1
        log.error(
            "event.set_aside",
            event_id=event.event_id,
            table=event.table,
            type=event.type,
            tries=event.tries,
            reason=event.failure,
            failed_at=event.failed_at.isoformat(),
        )
