"""Operations end to end: the health endpoint, metrics, sd_notify and the watchdog, exit codes,
credentials and secrets, against a real `flowd run`, real Postgres and the Realtime stand-in.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.acceptance.test_daemon import SERVICE_KEY, hook, insert_task, start_flowd
from tests.support.flowd_cli import RunningFlowd, flowd_env, run_flowd
from tests.support.flows import add_flow, executions
from tests.support.http_target import HttpTarget, Reply
from tests.support.realtime_server import RealtimeStandIn
from tests.support.tcp_proxy import TcpProxy


@pytest.fixture
async def realtime(database_url: str) -> AsyncIterator[RealtimeStandIn]:
    async with RealtimeStandIn(database_url, poll_interval_s=0.02) as standin:
        yield standin


async def wait_for_status(
    flowd: RunningFlowd, path: str, status: int, timeout_s: float = 30
) -> dict[str, Any]:
    """Poll `path` until it answers `status`; return its JSON body (or {})."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        response = await flowd.get(path)
        if response.status_code == status:
            is_json = response.headers["content-type"].startswith("application/json")
            return response.json() if is_json else {}
        if loop.time() > deadline:
            raise AssertionError(f"{path} still {response.status_code}: {response.text}")
        await asyncio.sleep(0.2)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus exposition, by name and sorted labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_readyz_follows_realtime_and_metrics_count_what_happened(
    db: asyncpg.Connection, database_url: str, realtime: RealtimeStandIn, http_target: HttpTarget
) -> None:
    """/readyz is 200 once live, 503 naming Realtime while it is down, 200 again after the
    reconnect; /livez stays 200 throughout; /metrics counts the event, execution, action
    attempts and the reconnect, with bounded labels only."""
    http_target.script("/hook", Reply(500), Reply(200))
    flow_id = await add_flow(db, actions=[hook(http_target, "/hook")])
    flowd = await start_flowd(database_url, realtime)
    assert await wait_for_status(flowd, "/readyz", 200) == {"ready": True, "reasons": []}
    await insert_task(db, 1)
    await flowd.wait_for_log("flow.executed", status="SUCCESS")

    [listening] = flowd.logged("http.listening")
    assert await _healthcheck(listening["address"], "/livez") == 0
    assert await _healthcheck(listening["address"], "/readyz") == 0

    await realtime.stop()
    body = await wait_for_status(flowd, "/readyz", 503)
    assert await _healthcheck(listening["address"], "/readyz") == 1
    assert body["ready"] is False
    assert any(str(r).startswith("realtime: ") for r in body["reasons"]), body
    assert (await flowd.get("/livez")).status_code == 200
    await realtime.start()
    await wait_for_status(flowd, "/readyz", 200)

    response = await flowd.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    found = samples(response.text)
    assert found[("flowd_events_received_total", ())] == 1
    assert found[("flowd_event_lag_seconds_count", ())] == 1
    outcome = (("flow_id", str(flow_id)), ("outcome", "SUCCESS"))
    assert found[("flowd_executions_total", outcome)] == 1
    assert found[("flowd_action_attempts_total", (("action_type", "API_CALL"),))] == 2
    assert found[("flowd_action_duration_seconds_count", (("action_type", "API_CALL"),))] == 1
    assert found[("flowd_realtime_reconnects_total", ())] >= 1
    assert found[("flowd_realtime_connected", ())] == 1
    assert found[("flowd_queue_depth", ())] == 0
    labels = {value for (_, pairs) in found for _, value in pairs}
    row = await db.fetchrow("SELECT event_key FROM flow_executions")
    assert row is not None
    assert row["event_key"] not in labels
    assert not any("http" in value or "/" in value for value in labels), labels
    assert await flowd.stop() == 0
    assert await _healthcheck(listening["address"], "/livez") == 1  # nobody listens now


async def _healthcheck(address: str, path: str) -> int:
    """The container's HEALTHCHECK command against `address`: its exit code."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "flowd.ops.health",
        path,
        env=flowd_env({"FLOWD_HTTP_ADDR": address}),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    return await asyncio.wait_for(process.wait(), 30)


async def test_readyz_fails_while_the_database_is_unreachable(
    db: asyncpg.Connection, database_url: str, realtime: RealtimeStandIn
) -> None:
    """Cutting the database connection makes /readyz 503 "database: unreachable" while
    /livez stays 200 (no restart for an outage); restoring it makes flowd ready again."""
    await add_flow(db)
    parts = urlsplit(database_url)
    assert parts.hostname is not None
    assert parts.port is not None
    async with TcpProxy(parts.hostname, parts.port) as proxy:
        proxied = urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{proxy.port}"))
        flowd = await start_flowd(proxied, realtime)
        await wait_for_status(flowd, "/readyz", 200)
        await proxy.cut()
        body = await wait_for_status(flowd, "/readyz", 503)
        assert any("database: unreachable" in str(r) for r in body["reasons"]), body
        assert (await flowd.get("/livez")).status_code == 200
        await proxy.start()
        await wait_for_status(flowd, "/readyz", 200)
        assert await flowd.stop() == 0


async def test_readyz_says_draining_during_shutdown(
    db: asyncpg.Connection, database_url: str, realtime: RealtimeStandIn, http_target: HttpTarget
) -> None:
    """While SIGTERM's drain waits for a slow webhook, /readyz is 503 "draining"."""
    http_target.script("/slow", Reply(200, delay_s=30))
    await add_flow(db, actions=[hook(http_target, "/slow", timeout_s=60)])
    flowd = await start_flowd(database_url, realtime, FLOWD_SHUTDOWN_TIMEOUT_S="20")
    await insert_task(db, 1)
    await http_target.wait_for_requests("/slow", 1)
    flowd.signal(signal.SIGTERM)
    await flowd.wait_for_log("shutdown.draining")
    body = await wait_for_status(flowd, "/readyz", 503)
    assert any(str(r).startswith("draining") for r in body["reasons"]), body
    assert (await flowd.get("/livez")).status_code == 200
    flowd.signal(signal.SIGINT)  # the second signal: do not wait out the drain
    assert await flowd.wait(timeout_s=10) == 1


class NotifySocket:
    """A datagram socket standing in for systemd's $NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[str] = []

    def drain(self) -> list[str]:
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return self.messages

    async def wait_for(self, line: str, count: int = 1, timeout_s: float = 30) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while sum(line in m.splitlines() for m in self.drain()) < count:
            if loop.time() > deadline:
                raise AssertionError(f"no {count}x {line} in {self.messages}")
            await asyncio.sleep(0.05)


async def test_sd_notify_ready_watchdog_through_an_outage_and_stopping(
    db: asyncpg.Connection, database_url: str, realtime: RealtimeStandIn, tmp_path: Path
) -> None:
    """READY=1 only once Realtime is live; WATCHDOG=1 keeps coming while Realtime is down
    (an outage is no reason to be restarted); STOPPING=1 on SIGTERM, then exit 0."""
    await add_flow(db)
    notify = NotifySocket(tmp_path / "notify")
    realtime.withhold_join_replies = True  # connected, but never live
    flowd = await start_flowd(
        database_url,
        realtime,
        wait_live=False,
        NOTIFY_SOCKET=str(notify.path),
        WATCHDOG_USEC="400000",
    )
    await notify.wait_for("WATCHDOG=1", count=3)
    assert not any("READY=1" in m for m in notify.drain()), notify.messages
    realtime.withhold_join_replies = False
    await notify.wait_for("READY=1")
    await flowd.wait_for_log("health.ready")
    await realtime.stop()
    before = sum("WATCHDOG=1" in m for m in notify.drain())
    await flowd.wait_for_log("realtime.rebuilding")
    await notify.wait_for("WATCHDOG=1", count=before + 5)
    await realtime.start()
    flowd.signal(signal.SIGTERM)
    await notify.wait_for("STOPPING=1")
    assert await flowd.wait(timeout_s=30) == 0
    assert sum("READY=1" in m for m in notify.drain()) == 1
    notify.sock.close()


async def test_exit_codes_at_start(database_url: str, tmp_path: Path) -> None:
    """`flowd run` exits 75 (restart) when the database does not answer, 2 (do not restart)
    for a bad configuration or a busy FLOWD_HTTP_ADDR; `migrate` keeps exit 2."""
    supabase = {"SUPABASE_URL": "http://127.0.0.1:9", "SUPABASE_SERVICE_ROLE_KEY": SERVICE_KEY}
    unreachable = {"DATABASE_URL": "postgresql://u@127.0.0.1:9/db", **supabase}
    result = await run_flowd("run", env=unreachable)
    assert result.code == 75, result.stderr
    assert "cannot reach the database" in result.stderr
    assert (await run_flowd("migrate", env=unreachable)).code == 2
    bad = await run_flowd("run", env={**unreachable, "FLOWD_HTTP_ADDR": "nowhere"})
    assert bad.code == 2
    assert "FLOWD_HTTP_ADDR" in bad.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        taken = await run_flowd(
            "run",
            env={"DATABASE_URL": database_url, **supabase, "FLOWD_HTTP_ADDR": f"127.0.0.1:{port}"},
        )
    assert taken.code == 2, taken.stderr
    assert "cannot listen" in taken.stderr


async def test_secrets_from_the_credentials_directory_and_sentinels_never_leak(
    db: asyncpg.Connection,
    database_url: str,
    realtime: RealtimeStandIn,
    http_target: HttpTarget,
    tmp_path: Path,
) -> None:
    """DATABASE_URL, the service key and a FLOWD_SECRET_ come only from $CREDENTIALS_DIRECTORY
    (as systemd's LoadCredential= provides them); flowd runs with them, and none of them, nor
    the webhook URL carrying the secret, appears in logs, /metrics, /readyz or flow_executions."""
    hook_secret = "sentinel-hookpath-8c21aa"
    service_key = "sentinel-servicekey-41f0be"
    # The target echoes the secret back, as careless APIs do.
    http_target.script("/hooks/" + hook_secret, Reply(500, f"bad path {hook_secret}"))
    await add_flow(
        db,
        actions=[
            (
                "API_CALL",
                {"url": http_target.url + "/hooks/{{ secrets.HOOK }}", "max_attempts": 1},
            )
        ],
    )
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    parts = urlsplit(database_url)
    with_password = urlunsplit(
        parts._replace(
            netloc=f"{parts.username}:sentinel-dbpw-c0ffee@{parts.hostname}:{parts.port}"
        )
    )
    (credentials / "DATABASE_URL").write_text(with_password + "\n")
    (credentials / "SUPABASE_SERVICE_ROLE_KEY").write_text(service_key + "\n")
    (credentials / "FLOWD_SECRET_HOOK").write_text(hook_secret + "\n")
    flowd = await RunningFlowd(
        env={
            "SUPABASE_URL": realtime.url,
            "CREDENTIALS_DIRECTORY": str(credentials),
            "FLOWD_LOG_LEVEL": "debug",
            "FLOWD_REALTIME_READY_TIMEOUT_S": "3",
        }
    ).start()
    await flowd.wait_for_log("realtime.live")
    await insert_task(db, 1)
    await flowd.wait_for_log("flow.executed", status="FAILURE")
    assert len(http_target.requests_to("/hooks/" + hook_secret)) == 1
    bodies = [(await flowd.get(path)).text for path in ("/metrics", "/readyz", "/livez")]
    assert await flowd.stop() == 0
    secrets = [hook_secret, service_key, "sentinel-dbpw-c0ffee"]
    output = "\n".join(flowd.raw_output + bodies)
    assert "***" in output  # the echoed secret was there, masked
    stored = " ".join(str(dict(row)) for row in await executions(db))
    for secret in secrets:
        assert secret not in output
        assert secret not in stored


def _pid_1_of(unshare_pid: int) -> int:
    """The host pid of unshare's only child, checked to be PID 1 in its namespace."""
    children = Path(f"/proc/{unshare_pid}/task/{unshare_pid}/children").read_text().split()
    assert len(children) == 1, children
    status = Path(f"/proc/{children[0]}/status").read_text()
    [namespaced] = [line for line in status.splitlines() if line.startswith("NSpid:")]
    assert namespaced.split()[-1] == "1", namespaced
    return int(children[0])


async def test_as_pid_1_of_a_new_pid_namespace_sigterm_drains_and_exits_0(
    db: asyncpg.Connection, database_url: str, realtime: RealtimeStandIn, http_target: HttpTarget
) -> None:
    """The container's case without a container engine: flowd as PID 1 (where the kernel
    ignores signals without a handler) drains on SIGTERM, records what was cut short, and
    exits 0 within the drain timeout."""
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs unshare(1) and root for a new PID namespace")
    http_target.script("/slow", Reply(200, delay_s=30))
    await add_flow(db, actions=[hook(http_target, "/slow", timeout_s=60)])
    flowd = await RunningFlowd(
        env={
            "DATABASE_URL": database_url,
            "SUPABASE_URL": realtime.url,
            "SUPABASE_SERVICE_ROLE_KEY": SERVICE_KEY,
            "FLOWD_SHUTDOWN_TIMEOUT_S": "2",
        },
        prefix=["unshare", "--pid", "--fork", "--mount-proc"],
    ).start()
    await flowd.wait_for_log("realtime.live")
    pid_1 = _pid_1_of(flowd.pid)
    await insert_task(db, 1)
    await http_target.wait_for_requests("/slow", 1)
    os.kill(pid_1, signal.SIGTERM)
    assert await flowd.wait(timeout_s=20) == 0, flowd.tail()
    [finished] = flowd.logged("shutdown.finished")
    assert len(finished["cut_short_executions"]) == 1
    assert [row["status"] for row in await executions(db)] == ["FAILURE"]
