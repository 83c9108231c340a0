"""`flowd run`: the daemon on the configured feed, until SIGTERM.

The daemon is composed here: the feed FLOWD_DELIVERY names (`FEEDS`), the engine it
feeds, and as side tasks the scheduler and the listener (`flowd.listener`: a flow edit
reloads the flows within a second, in either delivery). A new event source is a feed
module in `flowd.feeds`, one entry in `FEEDS`, and its settings.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from flowd.app import App, open_app
from flowd.chain import OwnWrites
from flowd.config import Settings
from flowd.daemon import Daemon, SideTask
from flowd.engine import Engine
from flowd.feeds.base import Feed
from flowd.feeds.durable import EventLogFeed
from flowd.feeds.realtime import RealtimeFeed
from flowd.feeds.schedule import Scheduler, TickRunner
from flowd.flows import FlowSet
from flowd.listener import FLOWS_CHANNEL, Listener
from flowd.logs import get_logger
from flowd.ops.health import Health
from flowd.secrets import Secrets

log = get_logger()

# A feed and the engine it feeds, for the flows loaded at start.
FeedFactory = Callable[[App, FlowSet], tuple[Feed[Any], Engine]]


def _realtime(app: App, flow_set: FlowSet) -> tuple[Feed[Any], Engine]:
    # Realtime does not say who made a change: flowd's own writes are recognised by value.
    engine = app.engine(flow_set, own_writes=OwnWrites())
    # Flow edits come over Realtime only where the listener cannot hear them.
    flow_edits = app.settings.through_transaction_pooler
    return RealtimeFeed(app.settings, engine, app.recorder, flow_edits=flow_edits), engine


def _event_log(app: App, flow_set: FlowSet) -> tuple[Feed[Any], Engine]:
    feed = EventLogFeed(app.settings, app.database, app.available, app.recorder)
    return feed, app.engine(flow_set)


FEEDS: dict[str, FeedFactory] = {"realtime": _realtime, "durable": _event_log}


def tick_runner(app: App, **options: Any) -> TickRunner:
    """Runs ticks of scheduled flows through this app's engine (resumable: the tick's lease
    makes this worker the only one on its rows)."""
    return TickRunner(app.database, app.settings, app.engine, **options)


def scheduler(app: App) -> SideTask:
    """The scheduled flows, as a side task of the daemon."""

    def start(daemon: Daemon[Any]) -> Coroutine[Any, Any, None]:
        runner = tick_runner(app, stopping=daemon.stopping)
        grace_s = app.settings.shutdown_timeout_s
        return Scheduler(runner, lambda: daemon.flows, grace_s=grace_s).run()

    return start


def daemon_health(app: App) -> Health:
    """Readiness starts with the database answering."""
    health = Health(redact=app.secrets.redact)
    health.add_probe("database", lambda: app.database.fetchval("SELECT 1"))
    return health


def listener(app: App, feed: Feed[Any]) -> SideTask:
    """The database's notices: a flow edit reloads the daemon, the feed's channels wake it."""

    def start(daemon: Daemon[Any]) -> Coroutine[Any, Any, None]:
        heard = Listener(app.settings.require_database_url())
        heard.on(FLOWS_CHANNEL, daemon.reload)  # the daemon gathers a burst into one reload
        for channel, wake in feed.channels().items():
            heard.on(channel, wake)
        return heard.run()

    return start


def side_tasks(app: App, feed: Feed[Any]) -> list[tuple[str, SideTask]]:
    """The scheduler, and the listener where the connection allows LISTEN."""
    tasks = [("scheduler", scheduler(app))]
    if not app.settings.through_transaction_pooler:
        tasks.append(("listener", listener(app, feed)))
    else:
        reason = "LISTEN needs a direct or session connection, not the transaction pooler"
        log.info("listener.polling_only", reason=reason)
    return tasks


async def build_daemon(app: App, *, save_events: Path | None = None) -> Daemon[Any]:
    """The daemon on FLOWD_DELIVERY's feed, with the scheduler and the listener beside it."""
    feed, engine = FEEDS[app.settings.delivery](app, await app.load_flows())
    return Daemon(
        feed,
        engine,
        settings=app.settings,
        load_flows=lambda current: app.load_flows(previous=current),
        available=app.available,
        health=daemon_health(app),
        side_tasks=side_tasks(app, feed),
        save_events=save_events,
    )


async def main(args: argparse.Namespace, settings: Settings, secrets: Secrets) -> int:
    save_events = Path(args.save_events) if args.save_events else None
    if settings.delivery != "durable":
        settings.require_supabase()
    async with open_app(settings, secrets, database=True) as app:
        daemon = await build_daemon(app, save_events=save_events)
        return await daemon.run()
