"""Realtime source: keep a live `postgres_changes` subscription, whatever the connection does.

The `realtime` client (`AsyncRealtimeClient`) speaks the protocol; this module supervises
it, because on its own it can go quietly deaf (PROTOCOL.md §9). What we add:

- `_Client` sees every frame (so silence is measurable), keeps a raising callback from
  killing its receive loop, and waits for room in flowd's queue before dispatching the
  next frame (backpressure reaches the socket instead of growing memory).
- A `_Session` is one client and one channel carrying every binding. It is live only
  once the server says "Subscribed to PostgreSQL". Callbacks only enqueue.
- `RealtimeSource.run` is the supervisor: it watches the session (connection, channel
  state, receive loop, heartbeat replies) and rebuilds client and channel with capped,
  jittered backoff for as long as flowd runs. The client's own reconnect is off: one
  owner of the connection's lifecycle, no silent give-up after five tries, no rejoin on
  a live socket. A `system` error naming a binding (table not in the publication, bad
  filter) is a configuration error: logged once with the fix, and that binding is left
  out until the flows change.

Changes committed while no subscription is live are not delivered by Realtime.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import websockets
from pydantic import ValidationError
from realtime import AsyncRealtimeClient, RealtimeSubscribeStates
from realtime.message import Message, ServerMessageAdapter
from realtime.types import (
    ChannelEvents,
    PostgresChangesPayload,
    RealtimePostgresChangesListenEvent,
)

from flowd.backoff import Backoff
from flowd.catalog import REALTIME_PUBLICATION, quote_ident
from flowd.errors import describe
from flowd.logs import get_logger
from flowd.waits import first_of

log = get_logger()

Binding = tuple[str, str, str]  # (schema, table, "INSERT" | "UPDATE" | "DELETE" | "*")
ChangeSink = Callable[[dict[str, Any]], None]

_SUBSCRIBED = "Subscribed to PostgreSQL"
_HEALTHY_AFTER_S = 60.0  # a session live this long resets the backoff
# "[event: *, schema: public, table: taskz, filters: [], select: nil]" in a system error.
_PARAMS = re.compile(
    r"event: (?P<event>[^,\]]+), schema: (?P<schema>[^,\]]+), table: (?P<table>[^,\]]+)"
)
_CONFIGURATION_ERRORS = ("Unable to subscribe", "Error parsing `filter`", "No subscription params")


def compact(bindings: set[Binding]) -> frozenset[Binding]:
    """One binding per table where a `*` covers the others, so a change fires one callback."""
    starred = {(schema, table) for schema, table, event in bindings if event == "*"}
    return frozenset(b for b in bindings if b[2] == "*" or (b[0], b[1]) not in starred)


@dataclass(frozen=True, slots=True)
class Timing:
    """How patient the supervisor is; all in seconds."""

    ready_timeout: float = 20.0  # join + "Subscribed to PostgreSQL"
    heartbeat: float = 25.0  # our own heartbeat, whose replies we check
    stall: float = 60.0  # no frame at all for this long: the connection is dead
    backoff: float = 1.0  # first rebuild delay, doubled per failure
    max_backoff: float = 30.0


class _Client(AsyncRealtimeClient):
    """The realtime client, with a receive loop that observes, survives and waits.

    Overrides `_listen` (realtime 2.34): the same dispatch, plus `last_frame_at`, a guard
    around each dispatch, and `await room()` before it. Reconnecting is the supervisor's
    job (`auto_reconnect=False`), so a closed socket just marks the channels errored.
    """

    def __init__(self, url: str, key: str, room: Callable[[], Awaitable[None]]) -> None:
        super().__init__(url, key, auto_reconnect=False, max_retries=1)
        self.last_frame_at = time.monotonic()
        self.waiting_for_room = False
        self.closed_reason: str | None = None
        self._room = room

    async def _listen(self) -> None:
        connection = self._ws_connection
        if connection is None:
            return
        try:
            async for raw in connection:
                self.waiting_for_room = True
                await self._room()
                self.waiting_for_room = False
                self.last_frame_at = time.monotonic()
                self._dispatch(raw)
        except websockets.exceptions.ConnectionClosed as exc:
            close = exc.rcvd
            self.closed_reason = (
                f"closed: code {close.code} {close.reason}".strip() if close else "connection lost"
            )
        else:
            self.closed_reason = f"closed by the server: code {connection.close_code}"
        if self._ws_connection is connection:
            self._ws_connection = None
            self._set_channels_errored(ConnectionError(self.closed_reason))

    def _dispatch(self, raw: str | bytes) -> None:
        if self._dispatch_change(raw):
            return
        try:
            message = ServerMessageAdapter.validate_json(raw)
        except ValidationError:
            log.warning("realtime.frame_unreadable", frame=str(raw)[:300])
            return
        try:
            if channel := self.channels.get(message.topic):
                channel._handle_message(message)
        except Exception:
            log.exception("realtime.dispatch_failed", topic=message.topic)

    def _dispatch_change(self, raw: str | bytes) -> bool:
        """A well-formed `postgres_changes` frame goes to its channel's callbacks as the client
        would send it, without the client's model validation, which costs more than the rest
        of receiving the frame (`ChangeEvent` checks the data). False: not such a frame."""
        try:
            frame = json.loads(raw)
        except (ValueError, RecursionError):  # RecursionError: nested too deep to decode
            return False
        if not isinstance(frame, dict) or frame.get("event") != "postgres_changes":
            return False
        payload = frame.get("payload")
        if not isinstance(payload, dict):
            return False  # the client's validation says what is wrong with it
        data = payload.get("data")
        if not (
            isinstance(data, dict)
            and isinstance(data.get("type"), str)
            and isinstance(payload.get("ids"), list)
        ):
            return False
        # A frame without a topic (None) finds no channel, as an unknown topic does.
        channel = self.channels.get(frame.get("topic"))  # type: ignore[arg-type]
        try:
            for callback in channel.postgres_changes_callbacks if channel else ():
                # The frame's payload as checked above; the client's type names its own model.
                callback(payload)  # type: ignore[arg-type]
        except Exception:
            log.exception("realtime.dispatch_failed", topic=frame.get("topic"))
        return True

    async def probe(self) -> None:
        """Send a heartbeat; the server's reply shows up as a frame (`last_frame_at`)."""
        ref = self._make_ref()
        await self.send(
            Message(topic="phoenix", event=ChannelEvents.heartbeat, payload={}, ref=ref)
        )


@dataclass
class _Session:
    """One connection with one channel carrying every binding."""

    url: str
    key: str
    bindings: frozenset[Binding]
    sink: ChangeSink
    room: Callable[[], Awaitable[None]]
    name: str
    live: asyncio.Event = field(default_factory=asyncio.Event)
    trouble: asyncio.Event = field(default_factory=asyncio.Event)
    problems: list[str] = field(default_factory=list)
    rejected: set[Binding] = field(default_factory=set)
    client: _Client | None = None

    async def open(self) -> None:
        self.client = _Client(self.url, self.key, self.room)
        await self.client.connect()
        channel = self.client.channel(self.name)
        for schema, table, event in sorted(self.bindings):
            channel.on_postgres_changes(
                RealtimePostgresChangesListenEvent(event),
                self._on_change,
                table=table,
                schema=schema,
            )
        channel.on_system(self._on_system)
        await channel.subscribe(self._on_state)

    async def close(self) -> None:
        if self.client is not None:
            with contextlib.suppress(Exception):
                await self.client.close()

    def _on_change(self, payload: PostgresChangesPayload) -> None:
        try:
            self.sink(dict(payload["data"]))
        except Exception:
            log.exception("realtime.callback_failed")

    def _on_system(self, payload: Any) -> None:
        try:
            if getattr(payload, "message", None) == _SUBSCRIBED and not self.live.is_set():
                self.live.set()
        except Exception:
            log.exception("realtime.callback_failed")

    def _on_state(self, state: RealtimeSubscribeStates, error: Exception | None) -> None:
        try:
            if state == RealtimeSubscribeStates.SUBSCRIBED:
                log.info("realtime.joined", channel=self.name)
                return
            reason = str(error) if error else state.value
            self._note_rejected(reason)
            self.problems.append(f"{state.value}: {reason}")
            self.trouble.set()
        except Exception:
            log.exception("realtime.callback_failed")

    def _note_rejected(self, reason: str) -> None:
        """Remember the binding a configuration error (PROTOCOL.md §4) names."""
        try:
            payload = json.loads(reason)
        except ValueError:
            return
        if not isinstance(payload, dict) or payload.get("extension") != "postgres_changes":
            return
        message = str(payload.get("message", ""))
        if not message.startswith(_CONFIGURATION_ERRORS):
            return
        found = _PARAMS.search(message)
        if found is None:  # no binding named: the whole set is at fault
            self.rejected.update(self.bindings)
            return
        event = found["event"].strip().upper()
        self.rejected.add((found["schema"].strip(), found["table"].strip(), event))

    def check(self, timing: Timing) -> str | None:
        """Why this session must be rebuilt, or None while it is healthy."""
        client = self.client
        if client is None:
            return "no client"
        if self.problems:
            return self.problems[0]
        if not client.is_connected:
            return client.closed_reason or "disconnected"
        listener = client._listen_task
        if listener is None or listener.done():
            return "receive loop ended"
        silent = time.monotonic() - client.last_frame_at
        if silent > timing.stall and not client.waiting_for_room:
            return f"no frame for {silent:.0f} s"
        return None


class RealtimeSource:
    """Supervises Realtime sessions for the current set of bindings."""

    def __init__(
        self,
        *,
        url: str,
        key: str,
        sink: ChangeSink,
        room: Callable[[], Awaitable[None]],
        timing: Timing | None = None,
    ) -> None:
        self._url = f"{url}/realtime/v1"
        self._key = key
        self._sink = sink
        self._room = room
        self._timing = timing or Timing()
        self._bindings: frozenset[Binding] = frozenset()
        self._rejected: set[Binding] = set()
        self._changed = asyncio.Event()
        self._generation = 0
        self.live = asyncio.Event()
        self._current: _Session | None = None

    @property
    def client(self) -> AsyncRealtimeClient | None:
        """The live session's client, if any (for inspection)."""
        return self._current.client if self._current is not None and self.live.is_set() else None

    def not_live(self, optional: Collection[tuple[str, str]] = ()) -> str | None:
        """For readiness: how many wanted bindings are not live (tables in `optional` aside)."""
        wanted = {b for b in self._bindings if (b[0], b[1]) not in optional}
        if not wanted:
            return None
        down = wanted if not self.live.is_set() else wanted & self._rejected
        if not down:
            return None
        rejected = sorted({f"{s}.{t}" for s, t, _ in down & self._rejected})
        refused = f" (refused by the server: {', '.join(rejected)})" if rejected else ""
        return f"{len(down)} of {len(wanted)} bindings not live{refused}"

    def set_bindings(self, bindings: set[Binding]) -> None:
        """Subscribe to exactly these bindings from now on (rebuilds when they differ)."""
        wanted = compact(bindings)
        if wanted != self._bindings:
            self._bindings = wanted
            self._rejected.clear()  # a changed flow set gets a fresh chance
            self._changed.set()

    async def run(self, stopping: asyncio.Event) -> None:
        """Keep a session live until `stopping` is set; never gives up on failures.

        When the bindings change, the next session is opened before the current one is
        closed, so tables in both keep being delivered (the overlap may deliver a change
        twice; the execution claim makes that harmless).
        """
        current: _Session | None = None
        backoff = Backoff(self._timing.backoff, self._timing.max_backoff)
        try:
            while not stopping.is_set():
                self._changed.clear()
                bindings = self._bindings - self._rejected
                if not bindings:
                    await self._retire(current)
                    current = None
                    log.info("realtime.idle", reason="no flow needs a table that can be watched")
                    await first_of(stopping.wait(), self._changed.wait())
                    continue
                session = self._new_session(bindings)
                reason = await self._open(session)
                if reason is None:
                    await self._retire(current)
                    current, opened_at = session, time.monotonic()
                    self._current = current
                    self.live.set()
                    log.info("realtime.live", bindings=_describe(bindings))
                    reason = await self._watch(current, stopping)
                    if reason in ("stopping", "bindings changed"):
                        continue
                    await self._retire(current)
                    current = None
                    if time.monotonic() - opened_at > _HEALTHY_AFTER_S:
                        backoff.reset()
                else:
                    await session.close()
                if self._take_rejections(session):
                    continue
                ceiling = backoff.next()
                delay = random.uniform(ceiling / 2, ceiling)
                log.warning("realtime.rebuilding", reason=reason, retry_in_s=round(delay, 2))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(first_of(stopping.wait(), self._changed.wait()), delay)
        finally:
            await self._retire(current)

    def _new_session(self, bindings: frozenset[Binding]) -> _Session:
        self._generation += 1
        log.info("realtime.connecting", bindings=_describe(bindings))
        return _Session(
            self._url, self._key, bindings, self._sink, self._room, f"flowd-{self._generation}"
        )

    async def _retire(self, session: _Session | None) -> None:
        if session is not None:
            self.live.clear()
            if self._current is session:
                self._current = None
            await session.close()

    async def _open(self, session: _Session) -> str | None:
        """Connect, join, and wait for "Subscribed to PostgreSQL"; why not, or None."""
        timing = self._timing
        try:
            await asyncio.wait_for(session.open(), timing.ready_timeout)
            await asyncio.wait_for(
                first_of(session.live.wait(), session.trouble.wait()), timing.ready_timeout
            )
        except TimeoutError:
            return "not subscribed in time"
        except Exception as exc:  # the client raises bare Exceptions when it cannot connect
            return f"connect failed: {describe(exc)}"
        if session.live.is_set() and not session.problems:
            return None
        return session.check(timing) or "join failed"

    async def _watch(self, session: _Session, stopping: asyncio.Event) -> str:
        """Check the live session until it must go; return why."""
        timing = self._timing
        next_probe = time.monotonic() + timing.heartbeat
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(first_of(stopping.wait(), self._changed.wait()), 0.25)
            if stopping.is_set():
                return "stopping"
            if self._changed.is_set():
                return "bindings changed"
            if (reason := session.check(timing)) is not None:
                log.warning("realtime.lost", reason=reason)
                return reason
            if time.monotonic() >= next_probe and session.client is not None:
                next_probe = time.monotonic() + timing.heartbeat
                with contextlib.suppress(Exception):
                    await session.client.probe()

    def _take_rejections(self, session: _Session) -> bool:
        # Only bindings this session asked for: an error naming anything else is handled
        # like any failure (with backoff), never as a reason to reconnect at once.
        new = (session.rejected & session.bindings) - self._rejected
        for schema, table, event in sorted(new):
            log.error(
                "realtime.binding_rejected",
                table=f"{schema}.{table}",
                binding_event=event,
                fix=f"ALTER PUBLICATION {REALTIME_PUBLICATION} ADD TABLE"
                f" {quote_ident(schema)}.{quote_ident(table)};",
                hint="the table must exist and be in the publication; flows on it wait "
                "until the flows change or flowd gets SIGHUP",
            )
        self._rejected |= new
        return bool(new)

    def retry_rejected(self) -> None:
        """Give rejected bindings another chance (SIGHUP)."""
        if self._rejected:
            self._rejected.clear()
            self._changed.set()


def _describe(bindings: frozenset[Binding]) -> list[str]:
    return [f"{event} {schema}.{table}" for schema, table, event in sorted(bindings)]
