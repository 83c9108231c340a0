"""Section: the HTTP client of API_CALL and FUNCTION_CALL, side by side with httpx.

flowd sends its actions with aiohttp (`flowd.act.http.send` on `open_session()`); httpx
was the first choice. Both post the same small JSON body to `bench.receiver` (its own
process), 16 requests in flight (FLOWD_CONCURRENCY's default), each on a client kept
open as flowd keeps its session; the figure is this process's CPU time per request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import httpx

from bench.daemon import Receiver
from bench.report import Row, Samples, render
from flowd.act.http import HttpRequest, open_session, send

__all__ = ["run"]

_IN_FLIGHT = 16
_BODY = b'{"id": 1}'
_HEADERS = {"Content-Type": "application/json", "Idempotency-Key": "0" * 32}


async def _cpu_per_request(post: Callable[[], Awaitable[None]], requests: int) -> float:
    """Milliseconds of this process's CPU per request, `_IN_FLIGHT` at a time."""
    for _ in range(50):  # connections open, caches warm
        await post()
    pending = iter(range(requests))

    async def worker() -> None:
        for _ in pending:
            await post()

    started = time.process_time()
    await asyncio.gather(*(worker() for _ in range(_IN_FLIGHT)))
    return (time.process_time() - started) / requests * 1000


async def _measure(requests: int, runs: int) -> tuple[list[float], list[float]]:
    flowd: list[float] = []
    peer: list[float] = []
    async with Receiver() as receiver:
        request = HttpRequest("POST", receiver.url, _HEADERS, _BODY)
        async with open_session() as session, httpx.AsyncClient() as client:

            async def with_flowd() -> None:
                await send(session, request, 10.0)

            async def with_httpx() -> None:
                response = await client.post(receiver.url, content=_BODY, headers=_HEADERS)
                response.raise_for_status()

            for _ in range(runs):
                flowd.append(await _cpu_per_request(with_flowd, requests))
                peer.append(await _cpu_per_request(with_httpx, requests))
                await receiver.arrivals()  # let the receiver forget them
    return flowd, peer


def run(quick: bool, runs: int) -> str:
    """The section's Markdown."""
    requests = 200 if quick else 3000
    flowd, peer = asyncio.run(_measure(requests, runs))
    rows = [
        Row(
            f"CPU per request, {_IN_FLIGHT} in flight",
            Samples(tuple(flowd), "ms", lower_is_better=True),
            Samples(tuple(peer), "ms", lower_is_better=True),
            "httpx",
        )
    ]
    notes = [
        f"{requests:,} POSTs a run to `bench/receiver.py` over loopback keep-alive"
        " connections; flowd: `flowd.act.http.send` (aiohttp), the peer: httpx's"
        " AsyncClient. CPU time of the sending process only.",
    ]
    return render("HTTP client", rows, notes)
