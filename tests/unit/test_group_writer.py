"""GroupWriter without a database: every request made is written, however the writes interleave."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from flowd.group_commit import GroupWriter


async def _times_ten(requests: Sequence[int]) -> list[int]:
    return [request * 10 for request in requests]


async def test_a_request_made_as_the_last_writer_finishes_is_written() -> None:
    """The caller of the first write wakes before that writer's task is done: its next
    request must start a writer of its own, not wait for one that has already ended."""
    writer: GroupWriter[int, int] = GroupWriter(_times_ten, writers=1)

    async def one_after_another() -> list[int]:
        return [await writer.submit(number) for number in (1, 2, 3)]

    assert await asyncio.wait_for(one_after_another(), 5) == [10, 20, 30]


async def test_requests_from_many_callers_are_each_answered_with_their_own_result() -> None:
    writer: GroupWriter[int, int] = GroupWriter(_times_ten, max_batch=3, writers=2)

    async def caller(start: int) -> list[int]:
        return [await writer.submit(number) for number in range(start, start + 20)]

    results = await asyncio.wait_for(asyncio.gather(*(caller(100 * c) for c in range(8))), 5)

    assert results == [[n * 10 for n in range(100 * c, 100 * c + 20)] for c in range(8)]
