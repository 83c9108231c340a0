"""Hostile change events: each bad one fails alone, with one line, and the others still run.

Events files get lines nested 100,000 deep, 5,000-digit integers, invalid UTF-8, lone
surrogates, NUL characters and 500-deep nesting, between two ordinary events; the real
`flowd --once` must report the bad line by number and run the lines around it.
"""

from __future__ import annotations

import json
from pathlib import Path

import asyncpg
import pytest

from tests.conftest import frame
from tests.support.flowd_cli import Finished, run_flowd
from tests.support.flows import add_flow
from tests.support.http_target import HttpTarget

_PLACEHOLDER = '"__ATTACK__"'


def _event_with(value: str) -> bytes:
    """An INSERT event whose record's `meta` is the raw JSON text `value`."""
    event = frame("insert_event")["payload"]["data"]
    event["record"] = {**event["record"], "id": 2, "meta": "__ATTACK__"}
    return json.dumps(event).replace(_PLACEHOLDER, value).encode()


ATTACKS = {
    "100000 deep": (_event_with("[" * 100_000 + "]" * 100_000), "nested deeper than 64"),
    "500 deep": (_event_with('{"a":' * 500 + "1" + "}" * 500), "nested deeper than 64"),
    "5000 digits": (_event_with("9" * 5000), "longer than 300 digits"),
    "bytes ff fe": (b"\xff\xfe" + _event_with("1"), "not UTF-8: byte 0xff"),
    "lone surrogate": (_event_with('"\\ud800"'), "lone surrogate"),
    "NUL": (_event_with('"a\\u0000b"'), "NUL"),
}


def _events_file(tmp_path: Path, attack: bytes) -> str:
    """Line 1 an ordinary INSERT, line 2 the attack, line 3 an ordinary DELETE."""
    path = tmp_path / "events.jsonl"
    lines = [json.dumps(frame("insert_event")).encode(), attack]
    lines.append(json.dumps(frame("delete_event")).encode())
    path.write_bytes(b"\n".join(lines) + b"\n")
    return str(path)


def _assert_line_2_refused(result: Finished, reason: str) -> None:
    assert result.code == 1, result.stderr
    [bad] = result.logged("event.bad_line")
    assert bad["line"] == 2
    assert reason in bad["error"]
    assert "Traceback" not in result.stdout + result.stderr
    assert "2 event(s), 1 bad line(s)" in result.stderr


@pytest.mark.parametrize("attack", ATTACKS, ids=list(ATTACKS))
async def test_bad_line_is_refused_and_the_lines_around_it_run(
    attack: str,
    db: asyncpg.Connection,
    database_url: str,
    http_target: HttpTarget,
    tmp_path: Path,
) -> None:
    line, reason = ATTACKS[attack]
    hook = {"url": http_target.url_for("/hook"), "method": "POST"}
    await add_flow(db, trigger_event="*", actions=[("API_CALL", hook)])
    result = await run_flowd(
        "--once",
        "--events",
        _events_file(tmp_path, line),
        env={"DATABASE_URL": database_url},
        timeout_s=30,
    )
    _assert_line_2_refused(result, reason)
    received = [json.loads(request.body)["type"] for request in http_target.requests_to("/hook")]
    assert received == ["INSERT", "DELETE"]
    statuses = await db.fetch("SELECT status FROM flow_executions ORDER BY execution_id")
    assert [row["status"] for row in statuses] == ["SUCCESS", "SUCCESS"]


@pytest.mark.parametrize("attack", ATTACKS, ids=list(ATTACKS))
async def test_dry_run_refuses_the_bad_line_and_classifies_the_others(
    attack: str, tmp_path: Path
) -> None:
    line, reason = ATTACKS[attack]
    flows = [{"flow_id": 1, "name": "any", "trigger_table": "tasks", "trigger_event": "*"}]
    (tmp_path / "flows.json").write_text(json.dumps(flows))
    result = await run_flowd(
        "--once",
        "--dry-run",
        "--flows",
        str(tmp_path / "flows.json"),
        "--events",
        _events_file(tmp_path, line),
        timeout_s=30,
    )
    _assert_line_2_refused(result, reason)
    assert [json.loads(printed) for printed in result.stdout.splitlines()] == [
        {"line": 1, "flows": [1]},
        {"line": 3, "flows": [1]},
    ]
