"""Templates under a budget: no render blocks the event loop or takes unbounded CPU or memory.

A plain template (`flowd.act.template_shape.is_plain`: lookups, constants, linear filters;
nearly every real one) renders in process: its cost is that of reading its inputs. Any
other renders in a small pool of worker processes (pebble), each with an address-space
rlimit of its start size plus FLOWD_TEMPLATE_MEMORY_MB, and each render with a deadline of
FLOWD_TEMPLATE_TIMEOUT_S, past which pebble kills the worker and starts another. The
event loop only awaits the result. Workers render with the very same sandbox and output
cap as the process does (`flowd.act.templates.render_action`).

A render past its deadline, out of memory, or whose worker died fails its action at once
(`PermanentActionError`, no retries): the same template would do it again.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import resource
from collections.abc import Mapping
from concurrent.futures import CancelledError
from typing import Any

import pebble

from flowd.act.template_shape import is_plain
from flowd.act.templates import render_action, strings_in
from flowd.config import Settings
from flowd.errors import PermanentActionError, describe
from flowd.logs import get_logger

OVER_BUDGET = "template exceeded its time/memory budget"
_CLOSE_WAIT_S = 5.0

log = get_logger()


def _address_space_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[0]) * resource.getpagesize()


def _limit_memory(headroom_bytes: int) -> None:
    """The worker's initializer: past its start size, at most `headroom_bytes` more."""
    limit = _address_space_bytes() + headroom_bytes
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _render_in_worker(parts: dict[str, Any], context: dict[str, Any]) -> dict[str, Any]:
    try:
        return render_action(parts, context)
    except MemoryError:
        raise PermanentActionError(OVER_BUDGET) from None


class TemplateSandbox:
    """Renders action templates: plain ones in process, the rest in the worker pool."""

    def __init__(self, *, timeout_s: float, memory_mb: int, workers: int) -> None:
        self._timeout_s = timeout_s
        self._memory_bytes = memory_mb * 1024 * 1024
        self._workers = workers
        self._pool: pebble.ProcessPool | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> TemplateSandbox:
        return cls(
            timeout_s=settings.template_timeout_s,
            memory_mb=settings.template_memory_mb,
            workers=settings.template_workers,
        )

    async def render(self, parts: Mapping[str, Any], context: Mapping[str, Any]) -> dict[str, Any]:
        """`render_action(parts, context)`, within the budget."""
        if all(is_plain(source) for source in strings_in(dict(parts))):
            return render_action(parts, context)
        future = self._started().schedule(
            _render_in_worker, args=(dict(parts), dict(context)), timeout=self._timeout_s
        )
        try:
            result: dict[str, Any] = await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            future.cancel()  # pebble stops the worker: nothing keeps rendering for nobody
            raise
        except PermanentActionError:
            raise
        except (TimeoutError, MemoryError, CancelledError, pebble.ProcessExpired):
            raise PermanentActionError(OVER_BUDGET) from None
        except RuntimeError as exc:  # the pool broke (a worker could not start): a new one next
            log.error("templates.pool_broken", error=describe(exc))
            self._discard()
            raise PermanentActionError(OVER_BUDGET) from None
        return result

    def _started(self) -> pebble.ProcessPool:
        if self._pool is None or not self._pool.active:
            self._pool = pebble.ProcessPool(
                max_workers=self._workers,
                initializer=_limit_memory,
                initargs=(self._memory_bytes,),
                # a fresh interpreter: nothing of the daemon's (threads, sockets) is inherited
                context=multiprocessing.get_context("spawn"),
            )
        return self._pool

    def _discard(self) -> None:
        if self._pool is not None:
            self._pool.stop()
            self._pool = None

    async def close(self) -> None:
        """Stop the workers (at daemon stop and the end of `--once`): none is left behind."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        pool.close()  # idle workers exit; one still starting is let finish first
        try:
            await asyncio.to_thread(pool.join, _CLOSE_WAIT_S)
        except TimeoutError:  # a render still running: stop it
            pool.stop()
            await asyncio.to_thread(pool.join)
