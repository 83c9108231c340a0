"""HTTP actions against hostile targets: huge answers, metadata addresses, echoed secrets.

Only loopback is ever contacted. The metadata-address tests route every request through a
loopback "proxy" (HTTP_PROXY): had the refusal not happened before connecting, the
request would have reached that proxy, never the address itself.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from ipaddress import ip_network
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import asyncpg
import pytest

from flowd.act import http
from flowd.act.addresses import AddressPolicy
from flowd.errors import PermanentActionError, TransientActionError
from tests.conftest import frame
from tests.support.flowd_cli import flowd_env, run_flowd
from tests.support.flows import add_flow, executions
from tests.support.http_target import HttpTarget, Reply

MIB = 1 << 20
LOOPBACK_REFUSED = AddressPolicy(refused=(ip_network("127.0.0.0/8"), ip_network("::1/128")))
METADATA_URLS = [
    "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
    "http://169.254.170.2/v2/credentials",
    "http://[fd00:ec2::254]/latest/meta-data/",
    "http://[::ffff:169.254.169.254]/latest/meta-data/",
    "http://[fe80::1]/",
    "http://100.100.100.200/latest/meta-data/",
    "http://metadata.google.internal/computeMetadata/v1/",
    "http://METADATA.google.internal./computeMetadata/v1/",
    "http://metadata/computeMetadata/v1/",
]


def get(url: str) -> http.HttpRequest:
    return http.HttpRequest("GET", url, {}, None)


@pytest.fixture
async def proxy(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[HttpTarget]:
    """A loopback target set as the HTTP proxy: whatever flowd sends ends up here."""
    async with HttpTarget() as target:
        for name in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTP_PROXY", target.url)
        yield target


@pytest.mark.parametrize("url", METADATA_URLS)
async def test_metadata_addresses_are_refused_before_connecting(
    proxy: HttpTarget, url: str
) -> None:
    """Link-local and cloud metadata hosts fail at once, naming the setting; nothing is sent."""
    async with http.open_session() as session:
        with pytest.raises(PermanentActionError, match="allow it with FLOWD_HTTP_ALLOW_PRIVATE"):
            await http.send(session, get(url), 2)
    assert proxy.connections_accepted == 0


async def test_the_setting_lets_a_metadata_address_through(proxy: HttpTarget) -> None:
    """FLOWD_HTTP_ALLOW_PRIVATE=169.254.169.254 allows that address (here, to the proxy)."""
    async with http.open_session(AddressPolicy.allowing(["169.254.169.254"])) as session:
        assert await http.send(session, get(METADATA_URLS[0]), 2) == 200
        with pytest.raises(PermanentActionError):
            await http.send(session, get("http://169.254.170.2/"), 2)
    [request] = proxy.requests
    assert request.path == "/latest/meta-data/iam/security-credentials/"


async def test_a_name_is_checked_by_the_addresses_it_resolves_to(http_target: HttpTarget) -> None:
    """Post-resolution: with loopback refused (a test policy), `localhost` fails before any
    connection; the default policy allows loopback."""
    name_url = f"http://localhost:{http_target.port}/hook"
    async with http.open_session(LOOPBACK_REFUSED) as session:
        with pytest.raises(PermanentActionError, match="localhost resolves to it"):
            await http.send(session, get(name_url), 2)
        with pytest.raises(PermanentActionError, match=r"refused address 127\.0\.0\.1"):
            await http.send(session, get(http_target.url_for("/hook")), 2)
    assert http_target.connections_accepted == 0
    async with http.open_session() as session:
        assert await http.send(session, get(name_url), 2) == 200
    assert len(http_target.requests_to("/hook")) == 1


async def test_a_redirect_is_a_permanent_failure_and_not_followed(
    http_target: HttpTarget,
) -> None:
    """A 302 to the metadata address is not followed: the action fails with HTTP 302."""
    http_target.script("/hook", Reply(302, "", headers={"Location": METADATA_URLS[0]}))
    async with http.open_session() as session:
        with pytest.raises(PermanentActionError, match="HTTP 302"):
            await http.send(session, get(http_target.url_for("/hook")), 2)
    assert [r.path for r in http_target.requests] == ["/hook"]


async def test_a_small_rest_of_body_is_drained_and_the_connection_reused(
    http_target: HttpTarget,
) -> None:
    """Bodies up to 1 MiB are read to the end: the next request reuses the connection."""
    http_target.script(
        "/hook", Reply(200, b"x" * 64 * 1024, repeat=8), Reply(500, b"y" * 1024, repeat=200)
    )
    async with http.open_session() as session:
        assert await http.send(session, get(http_target.url_for("/hook")), 5) == 200
        with pytest.raises(TransientActionError) as failed:
            await http.send(session, get(http_target.url_for("/hook")), 5)
        assert await http.send(session, get(http_target.url_for("/hook")), 5) == 200
    assert str(failed.value) == "HTTP 500: " + "y" * 200
    assert http_target.connections_accepted == 1


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_a_huge_body_is_not_read_and_its_connection_is_closed(
    http_target: HttpTarget, chunked: bool
) -> None:
    """A 1 GiB answer: success at once (and an excerpt for an error); the connection is not
    reused, since the rest of the body was never read."""
    huge = Reply(body=b"z" * MIB, repeat=1024, chunked=chunked)
    http_target.script("/hook", replace(huge, status=200), replace(huge, status=503))
    started = time.monotonic()
    async with http.open_session() as session:
        assert await http.send(session, get(http_target.url_for("/hook")), 20) == 200
        with pytest.raises(TransientActionError, match=r"^HTTP 503: z{200}$"):
            await http.send(session, get(http_target.url_for("/hook")), 20)
    assert time.monotonic() - started < 10
    assert http_target.connections_accepted == 2


def status_of(pid: int, field: str) -> int:
    """A kB figure of /proc/<pid>/status (VmHWM: the peak resident set size)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def insert_event(row_id: int, title: str) -> str:
    event: dict[str, Any] = frame("insert_event")
    event["payload"]["data"]["record"] |= {"id": row_id, "title": title}
    return json.dumps(event) + "\n"


async def finished_executions(db: asyncpg.Connection, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done = [e for e in await executions(db) if e["finished_at"] is not None]
        if len(done) >= count:
            return done
        await asyncio.sleep(0.05)
    raise AssertionError(f"fewer than {count} finished executions: {await executions(db)}")


async def test_huge_answers_keep_flowd_memory_flat(
    db: asyncpg.Connection, database_url: str, http_target: HttpTarget
) -> None:
    """`flowd --once --events -` against 300 MB answers (a 200 and a 500, one with a length,
    one chunked): both outcomes recorded, and flowd's peak RSS grows by under 50 MB over
    what it had after a small call."""
    big = Reply(body=b"q" * MIB, repeat=300)
    http_target.script("/big-ok", big)
    http_target.script("/big-error", replace(big, status=500, chunked=True))

    def hook(path: str, **extra: Any) -> tuple[str, dict[str, Any]]:
        return ("API_CALL", {"url": http_target.url_for(path), "max_attempts": 1, **extra})

    await add_flow(db, rules=[("title", "=", "small")], actions=[hook("/small")])
    await add_flow(db, rules=[("title", "=", "big")], actions=[hook("/big-ok")])
    await add_flow(db, rules=[("title", "=", "big")], actions=[hook("/big-error")])
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "flowd", "--once", "--events", "-"),
        env=flowd_env({"DATABASE_URL": database_url}),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdin is not None
    try:
        process.stdin.write(insert_event(1, "small").encode())
        await process.stdin.drain()
        await finished_executions(db, 1)
        baseline_kb = status_of(process.pid, "VmHWM")
        process.stdin.write(insert_event(2, "big").encode())
        await process.stdin.drain()
        done = await finished_executions(db, 3)
        peak_kb = status_of(process.pid, "VmHWM")
        process.stdin.close()
        stdout, stderr = await asyncio.wait_for(process.communicate(), 30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 1, stderr.decode()[-2000:]
    outcomes = sorted((e["actions"][0]["http_status"], e["status"]) for e in done)
    assert outcomes == [(200, "SUCCESS"), (200, "SUCCESS"), (500, "FAILURE")]
    [failed] = [e for e in done if e["status"] == "FAILURE"]
    assert failed["actions"][0]["error"] == "HTTP 500: " + "q" * 200
    grown_mb = (peak_kb - baseline_kb) / 1024
    assert grown_mb < 50, f"peak RSS grew by {grown_mb:.0f} MB ({baseline_kb} -> {peak_kb} kB)"
    assert b"Traceback" not in stdout + stderr


async def test_a_metadata_url_fails_at_once_and_validate_names_it(
    db: asyncpg.Connection, database_url: str, proxy: HttpTarget, tmp_path: Path
) -> None:
    """An API_CALL to 169.254.169.254: one FAILURE after one attempt, the setting named,
    nothing sent; `flowd validate` reports the URL; a templated host is left to run time."""
    metadata_hook = ("API_CALL", {"url": METADATA_URLS[0], "max_attempts": 5})
    flow_id = await add_flow(db, actions=[metadata_hook])
    templated = ("API_CALL", {"url": "http://{{ secrets.HOOK_HOST }}/x", "max_attempts": 1})
    await add_flow(db, trigger_event="DELETE", actions=[templated])
    events = tmp_path / "events.jsonl"
    events.write_text(insert_event(1, "Write realtime contract"))
    env = {"DATABASE_URL": database_url, "HTTP_PROXY": proxy.url}
    result = await run_flowd("--once", "--events", str(events), env=env)
    assert result.code == 1
    [execution] = await executions(db)
    assert execution["status"] == "FAILURE"
    [action] = execution["actions"]
    assert action["attempts"] == 1
    assert action["error"] == (
        "refused address 169.254.169.254: link-local or cloud metadata;"
        " allow it with FLOWD_HTTP_ALLOW_PRIVATE"
    )
    assert proxy.connections_accepted == 0
    validated = await run_flowd("validate", env=env)
    assert validated.code == 1
    problems = [line for line in validated.stdout.splitlines() if line.startswith("flow ")]
    assert len(problems) == 1
    assert problems[0].startswith(f"flow {flow_id} ")
    assert "url: refused address 169.254.169.254" in problems[0]
    allowed = await run_flowd(
        "validate", env=env | {"FLOWD_HTTP_ALLOW_PRIVATE": "169.254.169.254/32"}
    )
    assert allowed.code == 0, allowed.stdout


async def test_bad_allow_setting_is_a_configuration_error(database_url: str) -> None:
    """A value that is neither a network nor a name stops flowd with exit 2 and one line."""
    result = await run_flowd(
        "validate",
        env={"DATABASE_URL": database_url, "FLOWD_HTTP_ALLOW_PRIVATE": "169.254.0.0/99"},
    )
    assert result.code == 2
    assert "FLOWD_HTTP_ALLOW_PRIVATE" in result.stderr
    assert "Traceback" not in result.stderr


SECRET = "sentinel/echo+Key:7c1d"


def echoed_forms(secret: str) -> dict[str, str]:
    raw = secret.encode()
    return {
        "basic auth base64": base64.b64encode(b"flowd:" + raw).decode(),
        "base64": base64.b64encode(raw).decode(),
        "url-encoded": quote(secret, safe=""),
        "quote_plus": quote_plus(secret),
        "upper-cased": secret.upper(),
    }


async def test_secrets_echoed_in_encoded_forms_are_masked(
    db: asyncpg.Connection, database_url: str, http_target: HttpTarget, tmp_path: Path
) -> None:
    """A target echoes the secret base64-encoded (alone and as Basic auth), URL-encoded and
    upper-cased in its 5xx and 4xx bodies: flow_executions and flowd's output hold none."""
    forms = echoed_forms(SECRET)
    body = " ".join(forms.values())
    assert len(body) < 200  # all of it fits the stored excerpt
    http_target.script("/hook", Reply(503, f"5xx {body}"), Reply(401, f"4xx {body}"))
    hook = {
        "url": http_target.url_for("/hook"),
        "headers": {"X-Token": "{{ secrets.TOKEN }}"},
        "max_attempts": 2,
    }
    await add_flow(db, actions=[("API_CALL", hook)])
    events = tmp_path / "events.jsonl"
    events.write_text(insert_event(1, "Write realtime contract"))
    result = await run_flowd(
        "--once",
        "--events",
        str(events),
        env={"DATABASE_URL": database_url, "FLOWD_SECRET_TOKEN": SECRET},
    )
    assert result.code == 1
    assert [r.headers["x-token"] for r in http_target.requests_to("/hook")] == [SECRET] * 2
    [execution] = await executions(db)
    [action] = execution["actions"]
    assert action["http_status"] == 401
    assert action["error"].startswith("HTTP 401: 4xx ***")
    retries = result.logged("action.retry")
    assert retries
    assert "5xx ***" in json.dumps(retries)
    stored = json.dumps(execution["actions"]) + execution["log"]
    for name, form in forms.items():
        assert form not in stored, f"{name} form stored in flow_executions"
        assert form not in result.stdout + result.stderr, f"{name} form in flowd's output"
