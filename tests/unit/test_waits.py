"""first_of: returns with the first of its waits and leaves none of the others running."""

from __future__ import annotations

import asyncio

from flowd.waits import first_of


async def test_the_first_wait_to_complete_ends_it_and_the_others_are_cancelled() -> None:
    woken, never = asyncio.Event(), asyncio.Event()
    slow = asyncio.ensure_future(asyncio.sleep(3600))
    asyncio.get_running_loop().call_soon(woken.set)

    await asyncio.wait_for(first_of(slow, never.wait(), woken.wait()), 5)

    assert slow.cancelled()
    assert not never.is_set()


async def test_a_sleep_among_the_waits_bounds_the_pause() -> None:
    stopping = asyncio.Event()

    await asyncio.wait_for(first_of(asyncio.sleep(0.01), stopping.wait()), 5)

    assert not stopping.is_set()
