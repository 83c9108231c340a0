"""Signals: SIGTERM/SIGINT ask the daemon to stop (a second one exits at once), SIGHUP reloads."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from flowd.logs import get_logger

log = get_logger()
FORCED_EXIT_CODE = 1


@contextmanager
def handle_signals(on_stop: Callable[[], None], on_reload: Callable[[], None]) -> Iterator[None]:
    """Install the handlers on the running loop; restore the previous ones on exit."""
    loop = asyncio.get_running_loop()
    stops = 0

    def stop(signum: int) -> None:
        nonlocal stops
        stops += 1
        name = signal.Signals(signum).name
        if stops > 1:
            log.warning("shutdown.forced", signal=name)
            os._exit(FORCED_EXIT_CODE)
        log.info("shutdown.requested", signal=name)
        on_stop()

    def reload(signum: int) -> None:
        log.info("flows.reload_requested", signal=signal.Signals(signum).name)
        on_reload()

    handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    previous = {signum: signal.getsignal(signum) for signum in handled}
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop, signum)
    loop.add_signal_handler(signal.SIGHUP, reload, signal.SIGHUP)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            loop.remove_signal_handler(signum)
            signal.signal(signum, handler)
