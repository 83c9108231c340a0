"""The daemon's face to its supervisor: health endpoint, readiness to systemd, watchdog, draining.

`Supervision.start` is called once the daemon has built its event source and registered
its readiness checks on a `Health`: READY=1 goes to systemd the first time every check
passes, STOPPING=1 as soon as a stop is requested (when /readyz turns to "draining"),
and the watchdog is pinged from the event loop for as long as it turns.
"""

from __future__ import annotations

import asyncio

from flowd.config import Settings
from flowd.logs import get_logger
from flowd.ops.health import Address, Health
from flowd.ops.sdnotify import Notifier

log = get_logger()


class Supervision:
    def __init__(self, health: Health, notifier: Notifier | None = None) -> None:
        self.health = health
        self.address: Address | None = None
        self._notifier = notifier or Notifier()
        self._ready_sent = False
        self._tasks: list[asyncio.Task[None]] = []
        health.on_change(self._readiness_changed)

    async def start(self, settings: Settings, stopping: asyncio.Event) -> Supervision:
        """Serve health on FLOWD_HTTP_ADDR, ping the watchdog, report readiness and stops."""
        self.address = await self.health.start(settings.http_address)
        self._tasks = [
            asyncio.create_task(self._notifier.keep_alive(), name="watchdog"),
            asyncio.create_task(self._watch_stop(stopping), name="stop-watch"),
        ]
        return self

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.health.stop()

    def _readiness_changed(self, reasons: list[str]) -> None:
        if reasons:
            log.info("health.not_ready", reasons=reasons)
            self._notifier.status("not ready: " + "; ".join(reasons))
            return
        log.info("health.ready")
        if self._ready_sent:
            self._notifier.status("ready")
        else:
            self._ready_sent = True
            self._notifier.ready()

    async def _watch_stop(self, stopping: asyncio.Event) -> None:
        await stopping.wait()
        self.health.draining = True
        self._notifier.stopping()
