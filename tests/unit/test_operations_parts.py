"""The operational parts in isolation: log hygiene, /livez on a stuck loop, sd_notify datagrams."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from flowd import logs
from flowd.logs import get_logger
from flowd.ops import metrics
from flowd.ops.health import Health, probe_url
from flowd.ops.sdnotify import Notifier


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    yield io.StringIO()
    logs.configure(stream=io.StringIO())  # leave no test's redaction behind


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_traceback_without_local_variables_and_secrets_redacted(stream: io.StringIO) -> None:
    """A logged exception carries its traceback but not the frame's local values; a secret
    in the message is masked, also where JSON escaping changed how it is written."""
    secret = "s3cr" + chr(92) + "et"  # a backslash: JSON writes it escaped
    logs.configure(log_format="json", stream=stream, redact=lambda t: t.replace(secret, "***"))

    def fail() -> None:
        local_marker = "local-value-7c1d"
        raise RuntimeError(f"failed with {secret} {local_marker[:5]}")

    try:
        fail()
    except RuntimeError:
        get_logger().exception("event.crashed")
    [line] = _lines(stream)
    assert "Traceback" in str(line["exception"])
    assert "local-value-7c1d" not in stream.getvalue()
    assert "s3cr" not in stream.getvalue()


def test_apikey_in_a_url_is_masked_even_when_not_a_known_secret(stream: io.StringIO) -> None:
    logs.configure(log_format="json", stream=stream)
    get_logger().warning("library.log", message="connect ws://x/socket?apikey=abc123&vsn=1.0.0")
    assert "abc123" not in stream.getvalue()
    assert "apikey=***&vsn=1.0.0" in stream.getvalue()


def test_log_lines_have_the_spec_fields_and_context_ids(stream: io.StringIO) -> None:
    logs.configure(log_format="json", stream=stream)
    with structlog.contextvars.bound_contextvars(table="public.tasks", event_key="k1", flow_id=3):
        get_logger().info("flow.executed", status="SUCCESS", duration_ms=5)
    [line] = _lines(stream)
    assert {"timestamp", "level", "event", "table", "event_key", "flow_id", "status"} <= set(line)
    assert str(line["timestamp"]).endswith("Z")


def test_metrics_count_events_below_the_log_level(stream: io.StringIO) -> None:
    """At FLOWD_LOG_LEVEL=warning an info event is not printed, but it is still counted."""
    logs.configure(log_format="json", level="warning", stream=stream)
    counter = metrics.EXECUTIONS.labels("990", "SUCCESS")
    before = counter._value.get()
    with structlog.contextvars.bound_contextvars(flow_id=990):
        get_logger().info("flow.executed", status="SUCCESS")
    assert counter._value.get() == before + 1
    assert stream.getvalue() == ""


def test_noisy_libraries_are_quiet_below_warning(stream: io.StringIO) -> None:
    import logging

    logs.configure(log_format="json", level="debug", stream=stream)
    logging.getLogger("httpx").info("HTTP Request: POST https://hooks.example/secret-path")
    logging.getLogger("websockets.client").debug("> GET /socket?apikey=k")
    assert stream.getvalue() == ""


async def test_livez_fails_while_the_event_loop_is_stuck() -> None:
    """/livez answers from its own thread: 200 while the loop turns, 503 while it is blocked."""
    health = Health(stuck_after_s=0.5)
    address = await health.start(("127.0.0.1", 0))
    assert address is not None

    def get(path: str) -> int:
        try:
            with urllib.request.urlopen(probe_url(address, path), timeout=5) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return exc.code

    try:
        await asyncio.sleep(0.6)
        assert await asyncio.to_thread(get, "/livez") == 200
        results: list[int] = []

        def ask_while_stuck() -> None:
            time.sleep(1.2)
            results.append(get("/livez"))

        asker = threading.Thread(target=ask_while_stuck)
        asker.start()
        time.sleep(2.0)  # noqa: ASYNC251 - the event loop is stuck here, on purpose
        asker.join()
        assert results == [503]
        await asyncio.sleep(0.6)
        assert await asyncio.to_thread(get, "/livez") == 200
    finally:
        await health.stop()


async def test_readiness_reasons_come_from_checks_and_probes() -> None:
    health = Health()
    state: dict[str, str | None] = {"source": "2 of 2 bindings not live"}
    health.add_check("source", lambda: state["source"])

    async def unreachable() -> None:
        raise OSError("connection refused")

    health.add_probe("database", unreachable, interval_s=0.1)
    changes: list[list[str]] = []
    health.on_change(changes.append)
    await health.start(None)
    try:
        await asyncio.sleep(0.7)
        assert health.readiness() == [
            "source: 2 of 2 bindings not live",
            "database: unreachable (OSError: connection refused)",
        ]
        state["source"] = None
        health.draining = True
        assert health.readiness()[0].startswith("draining")
    finally:
        await health.stop()
    assert changes[0][0] == "source: 2 of 2 bindings not live"


async def test_sd_notify_datagrams_and_watchdog(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind(str(path))
        manager.settimeout(5)
        notifier = Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "200000"})
        assert notifier.watchdog_s == 0.2
        notifier.ready()
        assert manager.recv(100).decode() == "READY=1\nSTATUS=ready"
        pinging = asyncio.create_task(notifier.keep_alive())
        await asyncio.sleep(0.35)
        pinging.cancel()
        await asyncio.gather(pinging, return_exceptions=True)
        pings = 0
        manager.settimeout(0)
        with contextlib.suppress(BlockingIOError):
            while manager.recv(100) == b"WATCHDOG=1":
                pings += 1
        assert pings >= 2
        manager.settimeout(5)
        notifier.stopping()
        assert manager.recv(100).decode() == "STOPPING=1\nSTATUS=stopping"
    assert Notifier({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"}).watchdog_s is None
    Notifier({}).ready()  # no manager: nothing happens
