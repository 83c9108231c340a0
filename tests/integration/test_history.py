"""The execution history (`flowd.history`) on rows the real Recorder wrote: the list and its
filters, one execution in full, flows by key or id, and following executions as they finish."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from datetime import timedelta
from typing import Any

import asyncpg
import pytest

from flowd.errors import NotFound
from flowd.history import (
    ColumnChange,
    Execution,
    ExecutionFilter,
    ExecutionFollower,
    list_executions,
    resolve_flow,
    show_execution,
)
from flowd.models import ActionOutcome, ChangeEvent, Flow, Status
from flowd.record import Recorder
from tests.support.flows import add_flow

SECRET = "hunter2-history"


def _redact(text: str) -> str:
    return text.replace(SECRET, "***")


def _event(task_id: int, *, old: dict[str, Any] | None = None) -> ChangeEvent:
    record = {"id": task_id, "title": f"task {task_id}", "priority": "High", "status": "open"}
    return ChangeEvent.model_validate(
        {
            "schema": "public",
            "table": "tasks",
            "type": "UPDATE" if old is not None else "INSERT",
            "commit_timestamp": "2026-12-04T09:51:01.460Z",
            "record": record,
            "old_record": old,
        }
    )


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    created = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    assert created is not None
    yield created
    await created.close()


@pytest.fixture
def recorder(pool: asyncpg.Pool) -> Recorder:
    return Recorder(pool, "public", _redact)


async def _flow(db: asyncpg.Connection, name: str, key: str | None) -> Flow:
    flow_id = await add_flow(db, name=name)
    await db.execute("UPDATE flows SET key = $1 WHERE flow_id = $2", key, flow_id)
    return Flow(flow_id=flow_id, name=name, trigger_table="tasks")


async def _run(
    recorder: Recorder,
    flow: Flow,
    event: ChangeEvent,
    status: Status = "SUCCESS",
    outcomes: tuple[ActionOutcome, ...] = (),
    log: str = "done",
) -> int:
    execution_id = await recorder.claim(flow, event)
    assert execution_id is not None
    assert await recorder.finish(execution_id, status, log, outcomes)
    return execution_id


async def test_the_list_is_newest_first_and_each_filter_narrows_it(
    db: asyncpg.Connection, pool: asyncpg.Pool, recorder: Recorder
) -> None:
    notify = await _flow(db, "Notify PM", "notify-pm")
    unkeyed = await _flow(db, "No key yet", None)
    first = await _run(recorder, notify, _event(1))
    failed = await _run(recorder, unkeyed, _event(2), "FAILURE")
    last = await _run(recorder, notify, _event(3))
    running = await recorder.claim(notify, _event(4))
    # Triggered in the order they were made, a second apart.
    for offset, execution_id in enumerate([first, failed, last, running]):
        await db.execute(
            "UPDATE flow_executions SET triggered_at = '2026-12-04T10:00:00Z'::timestamptz"
            " + make_interval(secs => $1) WHERE execution_id = $2",
            offset,
            execution_id,
        )

    everything = await list_executions(pool, "public", ExecutionFilter())
    assert [e.execution_id for e in everything] == [running, last, failed, first]
    newest = everything[0]
    assert (newest.flow_id, newest.flow_key, newest.flow_name) == (
        notify.flow_id,
        "notify-pm",
        "Notify PM",
    )
    assert (newest.status, newest.finished_at, newest.duration_ms) == ("RUNNING", None, None)
    assert (newest.event_type, newest.event_table) == ("INSERT", "public.tasks")
    assert newest.event_key == _event(4).key
    assert (everything[2].flow_key, everything[2].flow_name) == (None, "No key yet")

    async def ids(**wanted: Any) -> list[int]:
        found = await list_executions(pool, "public", ExecutionFilter(**wanted))
        return [execution.execution_id for execution in found]

    assert await ids(flow_id=notify.flow_id) == [running, last, first]
    assert await ids(status="FAILURE") == [failed]
    assert await ids(status="SUCCESS", flow_id=notify.flow_id) == [last, first]
    since = everything[1].triggered_at - timedelta(milliseconds=1)
    assert await ids(since=since) == [running, last]
    assert await ids(limit=2) == [running, last]


async def test_show_has_the_update_diff_each_action_and_the_log_redacted(
    db: asyncpg.Connection, pool: asyncpg.Pool, recorder: Recorder
) -> None:
    flow = await _flow(db, "Notify PM", "notify-pm")
    old = {"id": 7, "title": "task 7", "priority": "Low", "status": "open", "gone": 1}
    outcomes = (
        ActionOutcome(action_id=11, type="API_CALL", ok=True, attempts=1, http_status=200),
        ActionOutcome(
            action_id=12,
            type="DB_UPDATE",
            ok=False,
            attempts=3,
            duration_ms=40,
            error=f"PermanentActionError: token {SECRET} refused",
        ),
    )
    execution_id = await _run(
        recorder, flow, _event(7, old=old), "FAILURE", outcomes, log=f"called with {SECRET}"
    )

    detail = await show_execution(pool, "public", execution_id)
    assert detail.execution.execution_id == execution_id
    assert detail.execution.status == "FAILURE"
    assert detail.execution.flow_key == "notify-pm"
    assert detail.event["record"]["priority"] == "High"
    assert detail.changes == (
        ColumnChange("priority", "Low", "High"),
        ColumnChange("gone", 1, None, in_new=False),
    )
    assert [outcome.action_id for outcome in detail.actions] == [11, 12]
    assert detail.actions[0].http_status == 200
    assert detail.actions[1].error == "PermanentActionError: token *** refused"
    assert detail.log == "called with ***"

    with pytest.raises(NotFound, match="no execution 999999"):
        await show_execution(pool, "public", 999999)
    with pytest.raises(NotFound):
        await show_execution(pool, "public", 2**63)  # past bigint: no such id either


async def test_show_of_an_insert_has_no_changes_and_unreadable_actions_say_so(
    db: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    flow_id = await add_flow(db)
    execution_id = await db.fetchval(
        "INSERT INTO flow_executions (flow_id, event_key, status, event, actions)"
        " VALUES ($1, 'k', 'SUCCESS', $2::jsonb, '[{\"type\": 5}]') RETURNING execution_id",
        flow_id,
        _event(1).model_dump_json(by_alias=True),
    )
    detail = await show_execution(pool, "public", execution_id)
    assert detail.changes == ()
    assert detail.event["type"] == "INSERT"
    [unreadable] = detail.actions
    assert not unreadable.ok
    assert str(unreadable.error).startswith("action_id: ")


async def test_a_flow_is_found_by_key_then_by_id(
    db: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    notify = await _flow(db, "Notify PM", "notify-pm")
    digits = await _flow(db, "A key of digits", str(notify.flow_id + 100))

    by_key = await resolve_flow(pool, "public", "notify-pm")
    assert (by_key.flow_id, by_key.key, by_key.name) == (notify.flow_id, "notify-pm", "Notify PM")
    assert (await resolve_flow(pool, "public", str(notify.flow_id))).flow_id == notify.flow_id
    # A key made of digits names its flow before an id does.
    assert (await resolve_flow(pool, "public", str(notify.flow_id + 100))).flow_id == (
        digits.flow_id
    )
    for unknown in ("no-such-flow", "424242", "9" * 30, "١٢"):
        with pytest.raises(NotFound, match="no flow with key or id"):
            await resolve_flow(pool, "public", unknown)


async def _next(found: AsyncIterator[Execution], timeout_s: float = 10) -> Execution:
    return await asyncio.wait_for(anext(found), timeout_s)


@contextlib.asynccontextmanager
async def _following(follower: ExecutionFollower) -> AsyncIterator[AsyncGenerator[Execution]]:
    found = follower.follow()
    try:
        yield found
    finally:
        await found.aclose()


@pytest.mark.parametrize("listen", [True, False], ids=["listen", "poll"])
async def test_the_follower_yields_each_execution_as_it_finishes_once(
    db: asyncpg.Connection,
    pool: asyncpg.Pool,
    recorder: Recorder,
    database_url: str,
    listen: bool,
) -> None:
    flow = await _flow(db, "Notify PM", "notify-pm")
    other = await _flow(db, "Other", "other")
    before = await _run(recorder, flow, _event(1))  # finished before the follower started
    follower = ExecutionFollower(
        pool, "public", flow.flow_id, listen_url=database_url if listen else None
    )
    async with _following(follower) as found:
        started = asyncio.ensure_future(_next(found))
        await asyncio.wait_for(follower.started.wait(), 10)  # its first look: from now on
        assert follower.listening is listen
        running = await recorder.claim(flow, _event(2))
        assert running is not None
        await _run(recorder, other, _event(3))  # another flow's: not followed
        assert await recorder.finish(running, "SUCCESS", "done", ())
        finished = await started
        assert (finished.execution_id, finished.status) == (running, "SUCCESS")
        # A flow without actions is written finished at once, by one INSERT.
        direct = await db.fetchval(
            "INSERT INTO flow_executions (flow_id, event_key, status, event, finished_at)"
            " VALUES ($1, 'direct', 'FAILURE', '{}', now()) RETURNING execution_id",
            flow.flow_id,
        )
        following = await _next(found)
        assert (following.execution_id, following.status) == (direct, "FAILURE")
        assert before not in (finished.execution_id, following.execution_id)
        # Nothing else finishes: nothing else comes (no finish yielded twice).
        with pytest.raises(TimeoutError):
            await _next(found, timeout_s=2)


async def test_only_statements_that_may_finish_an_execution_notify(
    db: asyncpg.Connection, pool: asyncpg.Pool, recorder: Recorder, database_url: str
) -> None:
    flow = await _flow(db, "Notify PM", "notify-pm")
    listener = await asyncpg.connect(database_url)
    heard: asyncio.Queue[str] = asyncio.Queue()
    try:
        await listener.add_listener("flowd_executions", lambda *args: heard.put_nowait(args[3]))
        execution_id = await recorder.claim(flow, _event(1))  # an INSERT
        assert execution_id is not None
        outcome = ActionOutcome(action_id=1, type="API_CALL", ok=True, attempts=1)
        assert await recorder.progress(execution_id, 0, outcome)  # writes `actions` only
        assert await recorder.finish(execution_id, "SUCCESS", "done", (outcome,))
        await db.execute("NOTIFY flowd_executions, 'end'")
        payloads: list[str] = []
        while not payloads or payloads[-1] != "end":  # notices come in commit order
            payloads.append(await asyncio.wait_for(heard.get(), 10))
        assert payloads == ["", "", "end"]  # the claim, the outcome; not the progress
    finally:
        await listener.close()
