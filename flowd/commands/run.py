"""`flowd run`: the daemon on the configured feed, until SIGTERM."""

from __future__ import annotations

import argparse
from pathlib import Path

from flowd.app import open_app
from flowd.config import Settings
from flowd.feeds.durable import DurableDaemon
from flowd.feeds.realtime import RealtimeDaemon
from flowd.secrets import Secrets


async def main(args: argparse.Namespace, settings: Settings, secrets: Secrets) -> int:
    save_events = Path(args.save_events) if args.save_events else None
    if settings.delivery == "durable":
        daemon: type[RealtimeDaemon | DurableDaemon] = DurableDaemon
    else:
        settings.require_supabase()
        daemon = RealtimeDaemon
    async with open_app(settings, secrets, database=True) as app:
        return await daemon(app, save_events=save_events).run()
