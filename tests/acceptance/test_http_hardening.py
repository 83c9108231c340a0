"""HTTP actions against hostile targets, end to end: `flowd` against huge answers, a metadata
address and a target echoing secrets (the per-request checks: tests/integration/).

Only loopback is ever contacted; the metadata address goes through a loopback proxy.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import asyncpg

from tests.conftest import frame
from tests.integration.test_http_hardening import METADATA_URLS, MIB
from tests.support.flowd_cli import flowd_env, run_flowd
from tests.support.flows import add_flow, executions
from tests.support.http_target import HttpTarget, Reply


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
