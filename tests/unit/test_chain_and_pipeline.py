"""Own-write recognition (loop safety) and the ordered, bounded pipeline."""

from __future__ import annotations

import asyncio
from typing import Any

from flowd.chain import EXTERNAL, Cause, OwnWrites
from flowd.models import ChangeEvent
from flowd.pipeline import Pipeline


def update(task_id: int, **record: Any) -> ChangeEvent:
    return ChangeEvent.model_validate(
        {
            "schema": "public",
            "table": "tasks",
            "type": "UPDATE",
            "record": {"id": task_id, **record},
            "old_record": {"id": task_id},
        }
    )


def test_own_write_is_recognised_once_with_its_cause() -> None:
    """The UPDATE carrying the values flowd wrote inherits the write's cause, once."""
    writes = OwnWrites()
    cause = Cause().then(7)
    writes.remember("public", "tasks", ["id"], ["status"], [{"id": 1, "status": "x"}], cause)
    assert writes.recognise(update(2, status="x")) == EXTERNAL
    assert writes.recognise(update(1, status="someone else's")) == EXTERNAL
    assert writes.recognise(update(1, status="x")) == Cause(1, (7,))
    assert writes.recognise(update(1, status="x")) == EXTERNAL


def test_own_writes_expire_and_are_bounded() -> None:
    """A write whose event never comes is forgotten after the TTL; memory has a cap."""
    now = [0.0]
    writes = OwnWrites(ttl_s=10, max_rows=2, clock=lambda: now[0])
    for task_id in (1, 2, 3):
        writes.remember("public", "tasks", ["id"], ["s"], [{"id": task_id, "s": 1}], Cause(1))
    assert writes.recognise(update(1, s=1)) == EXTERNAL  # evicted: the oldest of three
    now[0] = 11.0
    assert writes.recognise(update(3, s=1)) == EXTERNAL  # expired


def test_causes_chain_depth_and_flows() -> None:
    """Each flowd write is one step deeper and appends the flow that made it."""
    assert Cause().then(1).then(2) == Cause(2, (1, 2))


async def test_pipeline_keeps_row_order_and_runs_rows_side_by_side() -> None:
    """Events of one key run in arrival order; other keys overlap; capacity is respected."""
    log: list[tuple[str, int]] = []
    running = 0
    most_running = 0

    async def work(item: tuple[str, int]) -> None:
        nonlocal running, most_running
        running += 1
        most_running = max(most_running, running)
        await asyncio.sleep(0.01 * (3 - item[1] % 3))
        log.append(item)
        running -= 1

    pipeline: Pipeline[tuple[str, int]] = Pipeline(
        work, lambda item: item[0], concurrency=3, capacity=5
    )
    dispatcher = asyncio.create_task(pipeline.run())
    held_at_most = 0
    for number in range(12):
        await pipeline.room()
        pipeline.put((f"row{number % 3}", number))
        held_at_most = max(held_at_most, pipeline.held)
    await asyncio.wait_for(pipeline.idle(), 5)
    dispatcher.cancel()
    await asyncio.gather(dispatcher, return_exceptions=True)
    for row in ("row0", "row1", "row2"):
        numbers = [number for key, number in log if key == row]
        assert numbers == sorted(numbers)
        assert len(numbers) == 4
    assert most_running == 3
    assert held_at_most <= 5


async def test_pipeline_stop_returns_what_did_not_finish() -> None:
    """stop() cancels running work and hands back running, parked and queued events."""
    started = asyncio.Event()

    async def work(item: int) -> None:
        started.set()
        await asyncio.sleep(60)

    pipeline: Pipeline[int] = Pipeline(work, lambda item: item % 2, concurrency=1, capacity=10)
    dispatcher = asyncio.create_task(pipeline.run())
    for item in range(4):
        pipeline.put(item)
    await started.wait()
    await asyncio.sleep(0.01)
    dispatcher.cancel()
    await asyncio.gather(dispatcher, return_exceptions=True)
    assert sorted(await pipeline.stop()) == [0, 1, 2, 3]
