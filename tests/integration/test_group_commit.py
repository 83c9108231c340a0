"""Group commit of `flow_executions`: claims and outcomes asked for together are written
together, and a batch never changes what each caller gets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import asyncpg
import pytest

from flowd.group_commit import GroupWriter
from flowd.models import ActionOutcome, ChangeEvent, Flow
from flowd.record import Claim, Recorder
from tests.support.flows import add_flow, executions


def _event(task_id: int) -> ChangeEvent:
    return ChangeEvent.model_validate(
        {
            "schema": "public",
            "table": "tasks",
            "type": "INSERT",
            "commit_timestamp": "2026-11-27T09:51:01.460Z",
            "record": {"id": task_id, "priority": "high"},
        }
    )


async def test_requests_made_during_a_write_share_the_next_write() -> None:
    writes: list[list[int]] = []
    writing = asyncio.Event()

    async def write(batch: Sequence[int]) -> list[int]:
        writes.append(list(batch))
        writing.set()
        await asyncio.sleep(0.01)
        return [number * 2 for number in batch]

    writer: GroupWriter[int, int] = GroupWriter(write)
    first = asyncio.create_task(writer.submit(0))
    await writing.wait()  # the first write is under way...
    rest = await asyncio.gather(*(writer.submit(number) for number in range(1, 100)))
    assert [await first, *rest] == [number * 2 for number in range(100)]
    assert writes == [[0], list(range(1, 100))]  # ...so all the others share the next one


async def test_a_failed_write_fails_its_own_requests_only() -> None:
    async def write(batch: Sequence[int]) -> list[int]:
        await asyncio.sleep(0)
        if 13 in batch:
            raise ValueError("unlucky batch")
        return list(batch)

    writer: GroupWriter[int, int] = GroupWriter(write, max_batch=1)
    results = await asyncio.gather(
        *(writer.submit(number) for number in (12, 13, 14)), return_exceptions=True
    )
    assert results[0] == 12
    assert isinstance(results[1], ValueError)
    assert results[2] == 14


async def test_a_request_that_spoils_its_group_fails_alone() -> None:
    """A write the database refuses for one request is tried again request by request, so
    the others of its group land; an outage fails the group as it is (nothing to single out)."""
    writes: list[list[int]] = []

    async def write(batch: Sequence[int]) -> list[int]:
        writes.append(list(batch))
        await asyncio.sleep(0)
        if 13 in batch:
            raise ValueError("unlucky request")
        if 99 in batch:
            raise ConnectionResetError("the database went away")
        return list(batch)

    writer: GroupWriter[int, int] = GroupWriter(write, writers=1)
    results = await asyncio.gather(
        *(writer.submit(number) for number in (12, 13, 14)), return_exceptions=True
    )
    assert results[0] == 12
    assert isinstance(results[1], ValueError)
    assert results[2] == 14
    assert writes == [[12, 13, 14], [12], [13], [14]]
    outage = await asyncio.gather(*(writer.submit(n) for n in (98, 99)), return_exceptions=True)
    assert all(isinstance(result, ConnectionResetError) for result in outage)


@pytest.fixture
async def recorder(database_url: str) -> AsyncIterator[Recorder]:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    assert pool is not None
    yield Recorder(pool, "public", lambda text: text)
    await pool.close()


async def test_concurrent_claims_and_outcomes_land_row_by_row(
    recorder: Recorder, db: asyncpg.Connection
) -> None:
    flow_id = await add_flow(db)
    flow = Flow(flow_id=flow_id, name="test flow", trigger_table="tasks")
    events = [_event(task_id) for task_id in range(1, 51)]
    # The same event twice in one batch: claimed once, as if asked one after the other.
    ids = await asyncio.gather(*(recorder.claim(flow, event) for event in [*events, events[0]]))
    assert None not in ids[:50]
    assert len(set(ids[:50])) == 50
    assert ids[50] is None
    outcome = ActionOutcome(action_id=None, type="API_CALL", ok=True, attempts=1)
    await asyncio.gather(
        *(
            recorder.finish(execution_id, "SUCCESS", f"log {execution_id}", [outcome])
            for execution_id in ids[:50]
            if execution_id is not None
        )
    )
    rows = await executions(db)
    assert len(rows) == 50
    assert {row["status"] for row in rows} == {"SUCCESS"}
    assert all(row["log"] == f"log {row['execution_id']}" for row in rows)
    assert all(row["actions"][0]["type"] == "API_CALL" for row in rows)
    assert recorder.in_flight == set()
    # Claiming again finds every execution: a replay runs nothing.
    again = await asyncio.gather(*(recorder.claim(flow, event) for event in events))
    assert again == [None] * 50


async def test_an_event_that_cannot_be_serialised_fails_its_own_claim_only(
    recorder: Recorder, db: asyncpg.Connection
) -> None:
    """A value past the serialiser's depth (it got by the source's checks, say) beside
    ordinary events asked for in the same group: only its own claim fails."""
    flow_id = await add_flow(db)
    flow = Flow(flow_id=flow_id, name="test flow", trigger_table="tasks")
    nested: dict[str, object] = {}
    for _ in range(300):
        nested = {"a": nested}
    poison = _event(2).model_copy(update={"record": {"id": 2, "meta": nested}})
    results = await asyncio.gather(
        *(recorder.claim_durable(flow, event) for event in (_event(1), poison, _event(3))),
        return_exceptions=True,
    )
    assert isinstance(results[1], Exception)
    assert all(isinstance(claim, Claim) for claim in (results[0], results[2]))
    assert len(await executions(db)) == 2
