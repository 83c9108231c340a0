"""The Realtime stand-in (tests/support/realtime_server.py) against the wire contract.

Raw `websockets` clients compare what the stand-in sends with the contract's example frames
(tests/fixtures/frames/, PROTOCOL.md); the real `realtime.AsyncRealtimeClient` shows that the
client library accepts it. Changes are committed to the per-test database through asyncpg.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
import json
import re
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from realtime import AsyncRealtimeClient
from realtime.types import (
    PostgresChangesPayload,
    RealtimePostgresChangesListenEvent,
    RealtimeSubscribeStates,
)
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.conftest import frame
from tests.support.realtime_server import RealtimeStandIn, binding_id
from tests.support.wait import eventually

Frame = dict[str, Any]

TOPIC = "realtime:tasks-daemon"
TASKS: Frame = {"event": "*", "schema": "public", "table": "tasks"}
TASKS_ID = 109446758
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
QUERY = "apikey=test-key&vsn=1.0.0"

FULL_ROW = (
    "INSERT INTO tasks (id, title, priority, status, estimate, tags, meta, due_at, assignee, done)"
    " VALUES ({id}, 'Write realtime contract', 'high', 'open', 3.50, '{{backend,realtime}}',"
    ' \'{{"source": "cli", "points": 5, "labels": {{"area": "infra"}}}}\','
    " '2025-07-01 19:00:00+02', '6f1c2a8e-4b1d-4c55-9a8e-2f7d3c9b1a10', false)"
)
# The statements behind the contract's event frames (PROTOCOL.md, appendix), with the frame
# each one must produce.
CONTRACT_STATEMENTS = [
    (FULL_ROW.format(id=1), "insert_event"),
    ("UPDATE tasks SET status = 'in_progress', estimate = 4.25 WHERE id = 1",
     "update_event_default_identity"),
    ("ALTER TABLE tasks REPLICA IDENTITY FULL", None),
    ("UPDATE tasks SET status = 'done', done = true, tags = array_append(tags, 'shipped')"
     " WHERE id = 1", "update_event"),
    ("DELETE FROM tasks WHERE id = 1", "delete_event"),
    ("ALTER TABLE tasks REPLICA IDENTITY DEFAULT", None),
    (FULL_ROW.format(id=2), "insert_event"),
    ("DELETE FROM tasks WHERE id = 2", "delete_event_default_identity"),
]  # fmt: skip


class RawClient:
    """A bare V1 WebSocket client: sends exactly what it is given, returns decoded frames."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self._refs = itertools.count(1)

    async def send(self, message: Frame) -> None:
        await self.ws.send(json.dumps(message))

    async def push(self, topic: str, event: str, payload: Frame, join_ref: str | None) -> str:
        ref = str(next(self._refs))
        message = {"event": event, "payload": payload, "topic": topic, "ref": ref}
        await self.send({**message, "join_ref": join_ref or ref})
        return ref

    async def join(self, topic: str, *bindings: Frame, token: str = "token-1") -> str:
        config = {**frame("join_request")["payload"]["config"], "postgres_changes": list(bindings)}
        return await self.push(topic, "phx_join", {"config": config, "access_token": token}, None)

    async def join_live(self, topic: str, *bindings: Frame) -> str:
        """Join and wait for the ok reply and ``Subscribed to PostgreSQL``; the join ref."""
        ref = await self.join(topic, *bindings)
        assert (await self.recv())["payload"]["status"] == "ok"
        assert (await self.recv())["payload"]["message"] == "Subscribed to PostgreSQL"
        return ref

    async def recv_text(self, timeout_s: float = 5) -> str:
        async with asyncio.timeout(timeout_s):
            text = await self.ws.recv()
        assert isinstance(text, str)
        return text

    async def recv(self, timeout_s: float = 5) -> Frame:
        decoded: Frame = json.loads(await self.recv_text(timeout_s))
        return decoded

    async def nothing_for(self, seconds: float = 0.3) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                pytest.fail(f"unexpected frame: {await self.ws.recv()!r}")

    async def closed(self, timeout_s: float = 5) -> ConnectionClosed:
        """Wait for the server to end the connection; the exception describing how."""
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    await self.ws.recv()
        except ConnectionClosed as closed:
            return closed


@contextlib.asynccontextmanager
async def raw_client(rt: RealtimeStandIn, query: str = QUERY) -> AsyncIterator[RawClient]:
    async with connect(f"{rt.ws_url}?{query}") as ws:
        yield RawClient(ws)


@pytest.fixture
async def rt(database_url: str) -> AsyncIterator[RealtimeStandIn]:
    async with RealtimeStandIn(database_url) as standin:
        yield standin


async def insert(
    db: asyncpg.Connection, task_id: int, status: str = "open", estimate: int = 1
) -> None:
    await db.execute(
        "INSERT INTO tasks (id, title, status, estimate) VALUES ($1, $2, $3, $4)",
        task_id, f"task {task_id}", status, Decimal(estimate),
    )  # fmt: skip


def shape(value: Any) -> Any:
    """Keys at every level and the type of every value."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(item) for item in value]
    return type(value).__name__


def without_timestamp(event: Frame) -> Frame:
    copied = copy.deepcopy(event)
    assert TIMESTAMP.match(copied["payload"]["data"].pop("commit_timestamp"))
    return copied


def event_summary(event: Frame) -> tuple[str, int, list[int]]:
    data = event["payload"]["data"]
    row = data.get("record") or data["old_record"]
    return data["type"], row["id"], event["payload"]["ids"]


# ----------------------------------------------------------------------------- contract frames


async def test_change_frames_match_the_contract_frames(
    rt: RealtimeStandIn, db: asyncpg.Connection
) -> None:
    """PROTOCOL.md's statements yield frames equal to the contract's, bar commit_timestamp."""
    await db.execute("SET TimeZone = 'America/New_York'")  # the frames must still say UTC
    async with raw_client(rt) as client:
        await client.send(frame("join_request"))
        assert await client.recv() == frame("join_reply_ok")
        assert await client.recv() == frame("system_subscribed")
        for statement, _ in CONTRACT_STATEMENTS:
            await db.execute(statement)
        names = [name for _, name in CONTRACT_STATEMENTS if name is not None]
        texts = [await client.recv_text() for _ in names]
        await client.nothing_for(0.2)

    events = [json.loads(text) for text in texts]
    for event, name in zip(events, names, strict=True):
        assert shape(event) == shape(frame(name)), name
    second_insert = events.pop(4)
    names.pop(4)
    for event, name in zip(events, names, strict=True):
        assert without_timestamp(event) == without_timestamp(frame(name)), name
    assert second_insert["payload"]["data"]["record"] == {
        **frame("insert_event")["payload"]["data"]["record"],
        "id": 2,
    }
    assert '"estimate": 3.50' in texts[0]  # numeric digits as Postgres wrote them
    stamps = [json.loads(text)["payload"]["data"]["commit_timestamp"] for text in texts]
    assert stamps == sorted(stamps)


async def test_heartbeat_join_and_leave_replies_are_the_contract_frames(
    rt: RealtimeStandIn,
) -> None:
    """Heartbeat, join and leave get exactly the contract's replies; Subscribed follows the join."""
    async with raw_client(rt) as client:
        await client.send(frame("heartbeat_request"))
        assert await client.recv() == frame("heartbeat_reply")
        await client.send(frame("join_request"))
        assert await client.recv() == frame("join_reply_ok")
        assert await client.recv() == frame("system_subscribed")
        assert rt.live_bindings() == {("public", "tasks", "*")}
        await client.send(frame("phx_leave_request"))
        assert await client.recv() == frame("phx_leave_reply")
        assert await client.recv() == frame("phx_close")
        assert rt.live_bindings() == set()
    assert rt.received == [
        frame(n) for n in ("heartbeat_request", "join_request", "phx_leave_request")
    ]
    assert rt.sent[1:3] == [frame("join_reply_ok"), frame("system_subscribed")]
    assert rt.connection_count == 1


async def test_join_reply_echoes_every_binding_with_a_stable_id(rt: RealtimeStandIn) -> None:
    """Bindings come back exactly as sent plus the phash2 ids of PROTOCOL §3, same on rejoin."""
    bindings: list[Frame] = [
        {"event": "INSERT", "schema": "public", "table": "tasks"},
        {"event": "UPDATE", "schema": "public", "table": "tasks", "filter": "status=eq.open"},
        {"event": "INSERT", "schema": "public"},
        {"event": "DELETE", "schema": "public", "table": "tasks", "select": ["title"]},
    ]
    ids = [9019328, 3018333, 100468891, binding_id(bindings[3])]
    echoed = [{"id": i, **b} for i, b in zip(ids, bindings, strict=True)]
    async with raw_client(rt) as client:
        for topic in (TOPIC, "realtime:again"):
            ref = await client.join(topic, *bindings)
            assert await client.recv() == {
                "ref": ref,
                "event": "phx_reply",
                "payload": {"status": "ok", "response": {"postgres_changes": echoed}},
                "topic": topic,
            }
            subscribed = await client.recv()
            assert subscribed["payload"]["message"] == "Subscribed to PostgreSQL"
            assert subscribed["payload"]["channel"] == topic.removeprefix("realtime:")
        ref = await client.join("realtime:empty")
        reply = await client.recv()
        assert reply["payload"] == {"status": "ok", "response": {"postgres_changes": []}}
        await client.nothing_for(0.2)  # no bindings: no Subscribed message
    assert 0 <= ids[3] < 2**27


# ------------------------------------------------------------------------------- real client


# realtime 2.34.1 reads ConnectionClosed.code/.reason when a socket drops, which websockets 15
# deprecates; with filterwarnings=error the warning would kill the client's receive loop.
@pytest.mark.filterwarnings(
    r"ignore:ConnectionClosed\.(code|reason) is deprecated:DeprecationWarning"
)
async def test_real_client_receives_an_insert_made_through_asyncpg(
    rt: RealtimeStandIn, db: asyncpg.Connection
) -> None:
    """realtime.AsyncRealtimeClient gets the INSERT callback, and again after a dropped socket."""
    payloads: list[PostgresChangesPayload] = []
    states: list[RealtimeSubscribeStates] = []
    client = AsyncRealtimeClient(f"{rt.url}/realtime/v1", "service-role-token")
    try:
        channel = client.channel("tasks-daemon")
        everything = RealtimePostgresChangesListenEvent.All
        channel.on_postgres_changes(everything, payloads.append, table="tasks", schema="public")
        await channel.subscribe(lambda state, _error: states.append(state))
        await rt.wait_until_live("public", "tasks")
        await db.execute(FULL_ROW.format(id=1))
        await eventually(lambda: len(payloads) == 1)

        await rt.drop_connections()  # the client reconnects at once and rejoins
        await eventually(lambda: rt.connection_count == 2)
        await rt.wait_until_live("public", "tasks")
        await insert(db, 2)
        await eventually(lambda: len(payloads) == 2)
    finally:
        await client.close()

    assert [p["ids"] for p in payloads] == [[TASKS_ID], [TASKS_ID]]
    assert [p["data"]["type"] for p in payloads] == ["INSERT", "INSERT"]
    first, second = (p["data"].get("record") or {} for p in payloads)
    assert first["title"] == "Write realtime contract"
    assert first["estimate"] == 3.5  # the client parses numeric as float
    assert second["id"] == 2
    assert [state.value for state in states] == ["SUBSCRIBED", "CHANNEL_ERROR", "SUBSCRIBED"]
    [join] = [m for m in rt.received if m["event"] == "phx_join"][:1]
    assert join["payload"]["config"] == frame("join_request")["payload"]["config"]


async def test_real_client_closes_its_channel_after_a_postgres_changes_error(
    rt: RealtimeStandIn,
) -> None:
    """PROTOCOL §9 hazard 1 with the real client: it rejoins the live channel and loses it."""
    states: list[RealtimeSubscribeStates] = []
    client = AsyncRealtimeClient(f"{rt.url}/realtime/v1", "service-role-token")
    try:
        channel = client.channel("tasks-daemon")
        channel.on_postgres_changes(
            RealtimePostgresChangesListenEvent.All, lambda _p: None, table="tasks"
        )
        await channel.subscribe(lambda state, _error: states.append(state))
        await rt.wait_until_live("public", "tasks")
        await rt.send_postgres_changes_error('{:error, "Too many database timeouts"}')
        await eventually(lambda: len(states) == 4)  # the client rejoins after 1 s
    finally:
        await client.close()
    assert [s.value for s in states] == ["SUBSCRIBED", "CHANNEL_ERROR", "SUBSCRIBED", "CLOSED"]
    closes = [f for f in rt.sent if f["event"] == "phx_close"]
    assert [f["ref"] for f in closes] == ["1"]  # the first join's ref


# ------------------------------------------------------------------------ delivery semantics


async def test_changes_without_a_live_subscription_are_lost(
    rt: RealtimeStandIn, db: asyncpg.Connection
) -> None:
    """Changes before the join, after a leave, or before Subscribed to PostgreSQL never arrive."""
    await insert(db, 1)  # nobody connected
    async with raw_client(rt) as client:
        join_ref = await client.join_live(TOPIC, TASKS)
        await insert(db, 2)
        assert event_summary(await client.recv()) == ("INSERT", 2, [TASKS_ID])

        await client.push(TOPIC, "phx_leave", {}, join_ref)
        assert (await client.recv())["event"] == "phx_reply"
        assert (await client.recv())["event"] == "phx_close"
        await insert(db, 3)  # left: nobody subscribed

        rt.subscribe_delay_s = 0.5
        await client.join(TOPIC, TASKS)
        assert (await client.recv())["payload"]["status"] == "ok"
        await insert(db, 4)  # joined, but not yet "Subscribed to PostgreSQL"
        assert (await client.recv())["payload"]["message"] == "Subscribed to PostgreSQL"
        await insert(db, 5)
        assert event_summary(await client.recv()) == ("INSERT", 5, [TASKS_ID])
        await client.nothing_for(0.3)


async def test_one_frame_per_change_and_channel_with_matching_ids(
    rt: RealtimeStandIn, db: asyncpg.Connection
) -> None:
    """Overlapping bindings share one frame (ids in reverse binding order); channels get a copy."""
    inserts = {"event": "INSERT", "schema": "public", "table": "tasks"}
    deletes = {"event": "DELETE", "schema": "public", "table": "tasks"}
    async with raw_client(rt) as client:
        await client.join_live(TOPIC, TASKS, inserts, deletes)
        await client.join_live("realtime:second", inserts)
        await insert(db, 1)
        await db.execute("UPDATE tasks SET status = 'done' WHERE id = 1")
        await db.execute("DELETE FROM tasks WHERE id = 1")
        frames = [await client.recv() for _ in range(4)]
        await client.nothing_for(0.2)
    assert [(f["topic"], *event_summary(f)) for f in frames] == [
        (TOPIC, "INSERT", 1, [9019328, TASKS_ID]),
        ("realtime:second", "INSERT", 1, [9019328]),
        (TOPIC, "UPDATE", 1, [TASKS_ID]),
        (TOPIC, "DELETE", 1, [29350925, TASKS_ID]),
    ]


async def test_filters_pick_rows_like_rt(rt: RealtimeStandIn, db: asyncpg.Connection) -> None:
    """eq/gt/in filters test the new row; a DELETE is tested on its (pk-only) old row."""
    open_tasks = {**TASKS, "filter": "status=eq.open"}
    big = {**TASKS, "event": "INSERT", "filter": "estimate=gt.10"}
    chosen = {**TASKS, "event": "INSERT", "filter": "id=in.(2,3)"}
    ids = {name: binding_id(b) for name, b in (("open", open_tasks), ("big", big), ("in", chosen))}
    async with raw_client(rt) as client:
        await client.join_live(TOPIC, open_tasks, big, chosen)
        await insert(db, 1, "open", 3)
        await insert(db, 2, "done", 12)  # 12 > 10 numerically, though "12" < "10" as text
        await insert(db, 3, "open", 2)
        await db.execute("UPDATE tasks SET status = 'done' WHERE id = 1")  # leaves the filter
        await db.execute("DELETE FROM tasks WHERE id = 3")  # old row = {"id": 3} only
        await insert(db, 4, "open")
        frames = [await client.recv() for _ in range(4)]
        await client.nothing_for(0.3)
    assert [event_summary(f) for f in frames] == [
        ("INSERT", 1, [ids["open"]]),
        ("INSERT", 2, [ids["in"], ids["big"]]),
        ("INSERT", 3, [ids["in"], ids["open"]]),
        ("INSERT", 4, [ids["open"]]),
    ]


# ---------------------------------------------------------------------------- binding errors


async def test_bad_bindings_get_rt_system_errors(
    rt: RealtimeStandIn, db: asyncpg.Connection
) -> None:
    """Unknown table, bad filter, unknown column: ok reply, RT's system error, nothing live."""
    cases = [
        ({**TASKS, "table": "taskz"}, frame("system_postgres_changes_error_unknown_table")),
        ({**TASKS, "filter": "status=foo.open"}, frame("system_postgres_changes_error_bad_filter")),
    ]
    for binding, expected in cases:
        async with raw_client(rt) as client:
            await client.send(
                {**frame("join_request"), "payload": {"config": {"postgres_changes": [binding]}}}
            )
            assert (await client.recv())["payload"]["status"] == "ok"
            assert await client.recv() == expected
    async with raw_client(rt) as client:
        await client.join("realtime:columns", {**TASKS, "filter": "nope=eq.1"})
        await client.recv()
        error = await client.recv()
        assert error["payload"]["message"] == (
            "Unable to subscribe to changes with given parameters. An exception happened so"
            " please check your connect parameters: [event: *, schema: public, table: tasks,"
            ' filters: [{"nope", "eq", "1", false}], select: nil]. Exception: ERROR P0001'
            " (raise_exception) invalid column for filter nope"
        )
        assert rt.live_bindings() == set()
        await insert(db, 1)
        await client.nothing_for(0.3)


async def test_one_bad_binding_fails_its_whole_channel(
    rt: RealtimeStandIn, db: asyncpg.Connection
) -> None:
    """As in RT (one transaction per channel), a good binding beside a bad one is not live."""
    async with raw_client(rt) as client:
        await client.join(TOPIC, {**TASKS, "table": "projects"}, TASKS)  # projects: unpublished
        assert (await client.recv())["payload"]["status"] == "ok"
        error = await client.recv()
        assert (
            "[event: *, schema: public, table: projects, filters: [], select: nil]"
            in (error["payload"]["message"])
        )
        await client.join_live("realtime:other", TASKS)  # other channels are unaffected
        await insert(db, 1)
        assert event_summary(await client.recv()) == ("INSERT", 1, [TASKS_ID])
        await client.nothing_for(0.3)


async def test_isolated_binding_errors_keep_the_good_bindings(
    database_url: str, db: asyncpg.Connection
) -> None:
    """With isolate_binding_errors=True the good binding of the same join goes live."""
    async with (
        RealtimeStandIn(database_url, isolate_binding_errors=True) as rt,
        raw_client(rt) as client,
    ):
        await client.join(TOPIC, {**TASKS, "table": "taskz"}, TASKS)
        assert (await client.recv())["payload"]["status"] == "ok"
        assert await client.recv() == frame("system_postgres_changes_error_unknown_table")
        assert await client.recv() == frame("system_subscribed")
        await insert(db, 1)
        assert event_summary(await client.recv()) == ("INSERT", 1, [TASKS_ID])


# ----------------------------------------------------------------------------------- protocol


async def test_handshake_refusals(rt: RealtimeStandIn) -> None:
    """Missing apikey → 401 JSON, vsn 2.0.0 → 403 empty, refuse_connections → that status."""
    cases = [
        ("vsn=1.0.0", 401, b'{"error":"No apikey provided"}'),
        ("apikey=k&vsn=2.0.0", 403, b""),
    ]
    for query, status, body in cases:
        with pytest.raises(InvalidStatus) as info:
            async with raw_client(rt, query):
                pass
        assert (info.value.response.status_code, info.value.response.body) == (status, body)
    rt.refuse_connections = 503
    with pytest.raises(InvalidStatus) as info:
        async with raw_client(rt):
            pass
    assert info.value.response.status_code == 503
    rt.refuse_connections = None
    async with raw_client(rt, "apikey=k") as client:  # vsn absent = 1.0.0
        await client.send(frame("heartbeat_request"))
        assert await client.recv() == frame("heartbeat_reply")
    assert rt.connection_count == 1


async def test_topic_errors(rt: RealtimeStandIn) -> None:
    """`realtime:` needs a name; other topics and pushes to unjoined topics are unmatched."""
    async with raw_client(rt) as client:
        ref = await client.join("realtime:", TASKS)
        reply = await client.recv()
        assert reply == {
            "ref": ref,
            "event": "phx_reply",
            "payload": {
                "status": "error",
                "response": {"reason": "TopicNameRequired: You must provide a topic name"},
            },
            "topic": "realtime:",
        }
        for topic, event in (("room:lobby", "phx_join"), ("realtime:nope", "access_token")):
            ref = await client.push(topic, event, {}, None)
            unmatched = {"status": "error", "response": {"reason": "unmatched topic"}}
            assert await client.recv() == {
                "ref": ref,
                "event": "phx_reply",
                "payload": unmatched,
                "topic": topic,
            }


async def test_access_token_refresh_resends_subscribed(rt: RealtimeStandIn) -> None:
    """A new token brings a new Subscribed to PostgreSQL; the same or an sb_ key brings nothing."""
    async with raw_client(rt) as client:
        await client.send(frame("join_request"))
        await client.recv()
        await client.recv()
        await client.send(frame("access_token"))
        assert await client.recv() == frame("system_subscribed")
        await client.send(frame("access_token"))
        sb_key = copy.deepcopy(frame("access_token"))
        sb_key["payload"]["access_token"] = "sb_secret_abc"
        await client.send(sb_key)
        await client.nothing_for(0.3)


async def test_idle_sockets_are_closed(rt: RealtimeStandIn) -> None:
    """With no inbound frame for idle_timeout_s the server closes the socket (1000)."""
    rt.idle_timeout_s = 0.5
    async with raw_client(rt) as client:
        for _ in range(8):  # heartbeats keep it open
            await asyncio.sleep(0.1)
            await client.send(frame("heartbeat_request"))
            await client.recv()
        closed = await client.closed()
    assert closed.rcvd is not None
    assert closed.rcvd.code == 1000


# ------------------------------------------------------------------------------------ faults


@pytest.mark.parametrize("code", [1000, 1001, 1012])
async def test_close_connections_sends_the_close_code(rt: RealtimeStandIn, code: int) -> None:
    """close_connections(code, reason) ends the socket with that close frame."""
    async with raw_client(rt) as client:
        await client.join_live(TOPIC, TASKS)
        await rt.close_connections(code, "bye")
        closed = await client.closed()
    assert closed.rcvd is not None
    assert (closed.rcvd.code, closed.rcvd.reason) == (code, "bye")
    assert rt.live_bindings() == set()


async def test_drop_connections_aborts_without_close_frame(rt: RealtimeStandIn) -> None:
    """drop_connections() cuts TCP: the client gets no close frame (1006)."""
    async with raw_client(rt) as client:
        await client.join_live(TOPIC, TASKS)
        await rt.drop_connections()
        closed = await client.closed()
    assert closed.rcvd is None
    assert client.ws.close_code == 1006


async def test_send_server_disconnect(rt: RealtimeStandIn) -> None:
    """The contract's `Server requested disconnect` frame, then close code 1012."""
    async with raw_client(rt) as client:
        await client.send(frame("join_request"))
        await client.recv()
        await client.recv()
        await rt.send_server_disconnect()
        assert await client.recv() == frame("system_server_requested_disconnect")
        closed = await client.closed()
    assert closed.rcvd is not None
    assert closed.rcvd.code == 1012


async def test_send_phx_error_ends_the_subscription(
    rt: RealtimeStandIn, db: asyncpg.Connection
) -> None:
    """phx_error with the join ref; the channel is gone, later changes are not sent."""
    async with raw_client(rt) as client:
        await client.send(frame("join_request"))
        await client.recv()
        await client.recv()
        await rt.send_phx_error()
        assert await client.recv() == frame("phx_error")
        assert rt.live_bindings() == set()
        await insert(db, 1)
        await client.nothing_for(0.3)


async def test_send_system_error_and_close(rt: RealtimeStandIn) -> None:
    """A channel-level system error then phx_close, exactly the contract's frames."""
    async with raw_client(rt) as client:
        await client.send(frame("join_request"))
        await client.recv()
        await client.recv()
        await rt.send_system_error_and_close(topic="tasks-daemon")
        assert await client.recv() == frame("system_channel_error_token_expired")
        assert await client.recv() == frame("phx_close")
        assert rt.live_bindings() == set()


async def test_postgres_changes_error_keeps_the_channel_and_rejoin_closes_the_old_one(
    rt: RealtimeStandIn, db: asyncpg.Connection
) -> None:
    """The error leaves the channel live; a rejoin gets ok, then phx_close with the OLD ref."""
    async with raw_client(rt) as client:
        await client.send(frame("join_request"))
        await client.recv()
        await client.recv()
        await rt.send_postgres_changes_error('{:error, "Too many database timeouts"}')
        error = await client.recv()
        assert error["payload"] == {
            "message": '{:error, "Too many database timeouts"}',
            "status": "error",
            "extension": "postgres_changes",
            "channel": "tasks-daemon",
        }
        await insert(db, 1)
        assert event_summary(await client.recv()) == ("INSERT", 1, [TASKS_ID])

        await client.send({**frame("join_request"), "ref": "2", "join_ref": "2"})
        assert await client.recv() == {**frame("join_reply_ok"), "ref": "2"}
        assert await client.recv() == frame("phx_close")  # ref "1": the old join
        assert await client.recv() == frame("system_subscribed")
        await insert(db, 2)
        assert event_summary(await client.recv()) == ("INSERT", 2, [TASKS_ID])
        await client.nothing_for(0.2)  # one subscription, not two


async def test_join_reply_faults(rt: RealtimeStandIn) -> None:
    """withhold_join_replies, join_reply_delay_s and join_error shape the join reply."""
    loop = asyncio.get_running_loop()
    async with raw_client(rt) as client:
        rt.withhold_join_replies = True
        await client.send(frame("join_request"))
        await client.nothing_for(0.3)
        assert rt.live_bindings() == set()

        rt.withhold_join_replies = False
        rt.join_error = "InvalidJWTToken: Token has expired 42 seconds ago"
        await client.send(frame("join_request"))
        assert await client.recv() == frame("join_reply_error")
        await client.nothing_for(0.2)

        rt.join_error = None
        rt.join_reply_delay_s = 0.3
        started = loop.time()
        await client.send(frame("join_request"))
        assert await client.recv() == frame("join_reply_ok")
        assert loop.time() - started >= 0.3
        assert await client.recv() == frame("system_subscribed")
        assert await rt.wait_for_sent(lambda f: f["event"] == "system") == frame(
            "system_subscribed"
        )

        rt.join_reply_delay_s = 30  # a pending join does not hold up stop()
        await client.send({**frame("join_request"), "ref": "9", "join_ref": "9"})
        await asyncio.sleep(0.05)
        started = loop.time()
        await rt.stop()
        assert loop.time() - started < 2


async def test_restart_on_the_same_url(rt: RealtimeStandIn, db: asyncpg.Connection) -> None:
    """stop() closes sockets with 1001; start() listens on the same URL again, changes flow."""
    url = rt.url
    async with raw_client(rt) as client:
        await client.join_live(TOPIC, TASKS)
        await rt.stop()
        closed = await client.closed()
    assert closed.rcvd is not None
    assert closed.rcvd.code == 1001
    await insert(db, 1)  # server down: lost
    await rt.start()
    assert rt.url == url
    async with raw_client(rt) as client:
        await client.join_live(TOPIC, TASKS)
        await insert(db, 2)
        assert event_summary(await client.recv()) == ("INSERT", 2, [TASKS_ID])
