"""Waiting for the first of several things: a stop, a wake-up, a sleep running out."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable


async def first_of(*waits: Awaitable[object]) -> None:
    """Return when the first of `waits` completes; cancel the rest.

    A pause that ends early is `first_of(asyncio.sleep(s), stopping.wait(), wake.wait())`.
    """
    tasks = [asyncio.ensure_future(wait) for wait in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
