"""`flowd --once`: replay an events file, failed executions, or the pending event log.

Events run one after another, in file order, through the same engine as the daemon.
A bad line is reported with its number and skipped; the exit code says whether
anything failed.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime

from flowd import flows as flow_store
from flowd.app import App, open_app
from flowd.commands.run import tick_runner
from flowd.config import Settings
from flowd.daemon import Daemon
from flowd.db import worker_id
from flowd.errors import ConfigurationError
from flowd.feeds.base import Delivery, Work
from flowd.feeds.durable import EventLogFeed
from flowd.feeds.eventlog import EventLog
from flowd.feeds.files import good_events, open_events
from flowd.feeds.schedule import run_once
from flowd.logs import get_logger
from flowd.secrets import Secrets
from flowd.summary import Summary

log = get_logger()


async def main(args: argparse.Namespace, settings: Settings, secrets: Secrets) -> int:
    if args.schedule is not None:
        async with open_app(settings, secrets, database=True) as app:
            runner = tick_runner(app)
            summary = await run_once(runner, await app.load_flows(), args.schedule)
        print(summary.line(), file=sys.stderr)
        return summary.exit_code
    if not (args.events or args.failed) and settings.delivery != "durable":
        raise ConfigurationError(
            "--once needs --events FILE or --failed"
            " (or FLOWD_DELIVERY=durable, to drain the pending events of the event log;"
            " or --schedule FLOW_ID, to run a tick of a scheduled flow)"
        )
    needs_database = not (args.dry_run and args.flows)
    async with open_app(settings, secrets, database=needs_database) as app:
        if args.dry_run:
            summary = await dry_run(app, args.events, args.flows)
        elif args.failed:
            summary = await rerun_failed(app, since=args.since, flow_id=args.flow)
        elif args.events is None:
            summary = await drain_event_log(app)
        else:
            summary = await replay(app, args.events, args.flows, force=args.force)
    print(summary.line(), file=sys.stderr)
    return summary.exit_code


async def dry_run(app: App, events_path: str, flows_file: str | None) -> Summary:
    """Classify only: one JSON line of matched flow ids (and keys, where flows have them)
    per event on stdout."""
    index = (await app.load_flows(flows_file)).index
    summary = Summary()
    matched = 0
    with open_events(events_path) as stream:
        for number, event in good_events(stream, summary):
            flows = index.classify(event).flows
            result: dict[str, object] = {"line": number, "flows": [f.flow_id for f in flows]}
            if any(flow.key is not None for flow in flows):  # a flows file's flows have no id
                result["keys"] = [flow.key for flow in flows]
            matched += bool(flows)
            print(json.dumps(result), flush=True)
    summary.matched = matched
    return summary


async def drain_event_log(app: App) -> Summary:
    """Durable delivery: the daemon on the event log until nothing is pending (as a burst)."""
    settings = app.settings
    feed = EventLogFeed(settings, app.database, app.available, app.recorder, until_idle=True)
    summary = feed.summary
    daemon = Daemon(
        feed,
        app.engine(await app.load_flows()),
        settings=settings,
        load_flows=lambda current: app.load_flows(previous=current),
        available=app.available,
        ran=summary.add,
        capacity=feed.capacity,
    )
    summary.task_died = bool(await daemon.run_until_idle())
    return summary


async def replay(app: App, events_path: str, flows_file: str | None, *, force: bool) -> Summary:
    """Run every event of the file through classify → act → record."""
    flows = await app.load_flows(flows_file)
    if flows_file is not None:
        await flow_store.require_stored(app.database, app.settings.schema_name, flows, flows_file)
    engine = app.engine(flows)
    delivery = Delivery.FORCED if force else Delivery.AT_MOST_ONCE
    summary = Summary()
    with open_events(events_path) as stream:
        for _, event in good_events(stream, summary):
            summary.add(await engine.handle(Work(event, None, delivery, None)))
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
