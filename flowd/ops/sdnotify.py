"""sd_notify: tell systemd (`Type=notify`) that flowd is ready, stopping, or still alive.

The protocol is one datagram to the AF_UNIX socket named by `$NOTIFY_SOCKET` (a leading
`@` is the abstract namespace); without that variable every call does nothing.
"""

from __future__ import annotations

import asyncio
import os
import socket

from flowd.errors import describe
from flowd.logs import get_logger

log = get_logger()


class Notifier:
    """Sends `KEY=value` lines to the service manager, if there is one."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        environ = dict(os.environ if environ is None else environ)
        address = environ.get("NOTIFY_SOCKET", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self._watchdog_s: float | None = None
        usec = environ.get("WATCHDOG_USEC", "")
        pid = environ.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self._watchdog_s = int(usec) / 1_000_000
        self._warned = False

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    @property
    def watchdog_s(self) -> float | None:
        """`WatchdogSec=` of the unit, when systemd asked this process to ping."""
        return self._watchdog_s

    def notify(self, *lines: str) -> None:
        if not self._address:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto("\n".join(lines).encode(), self._address)
        except OSError as exc:
            if not self._warned:  # once: the manager may be gone while we shut down
                self._warned = True
                log.warning("sdnotify.failed", error=describe(exc))

    def ready(self, status: str = "ready") -> None:
        self.notify("READY=1", f"STATUS={status}")

    def stopping(self) -> None:
        self.notify("STOPPING=1", "STATUS=stopping")

    def status(self, text: str) -> None:
        self.notify(f"STATUS={text}")

    async def keep_alive(self) -> None:
        """Ping the watchdog at half its interval, for as long as the event loop turns.

        Deliberately unconditional: an unreachable database or Supabase is an outage to
        wait out (see /readyz), not a reason for systemd to restart flowd.
        """
        if self._watchdog_s is None:
            return
        while True:
            self.notify("WATCHDOG=1")
            await asyncio.sleep(self._watchdog_s / 2)
