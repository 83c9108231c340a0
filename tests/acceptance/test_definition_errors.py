"""Broken flow definitions end in one clear line, never a traceback.

Invalid text (a NUL, a lone surrogate) anywhere in a flows file's flow is refused like any
broken flow; a flows file whose flows the database lacks is one line saying what to do;
`flowd validate --flows FILE` checks the file against the catalog when DATABASE_URL is set.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import asyncpg

from tests.conftest import frame
from tests.support.flowd_cli import Finished, run_flowd
from tests.support.flows import add_flow, executions
from tests.support.http_target import HttpTarget


def _flow(flow_id: int, **fields: Any) -> dict[str, Any]:
    return {"flow_id": flow_id, "name": f"flow {flow_id}", "trigger_table": "tasks"} | fields


def _write(tmp_path: Path, flows: list[dict[str, Any]]) -> tuple[str, str]:
    """A flows file (json.dumps escapes NUL and lone surrogates, as an editor would write
    them) and an events file with the insert_event frame."""
    (tmp_path / "flows.json").write_text(json.dumps(flows))
    (tmp_path / "events.jsonl").write_text(json.dumps(frame("insert_event")) + "\n")
    return str(tmp_path / "flows.json"), str(tmp_path / "events.jsonl")


def _invalid_text_flows(good: dict[str, Any]) -> list[dict[str, Any]]:
    update = {"table": "tasks", "field": "status", "value": "x"}
    return [
        _flow(101, trigger_table="ta\x00sks"),
        _flow(102, actions=[{"type": "DB_UPDATE", "config": {**update, "table": "tasks\x00"}}]),
        _flow(103, actions=[{"type": "API_CALL", "config": {"url": "http://127.0.0.1:9/\ud800"}}]),
        _flow(104, rules=[{"field": "title", "operator": "=", "value": "a\x00b"}]),
        good,
    ]


def _no_traceback(result: Finished) -> None:
    assert "Traceback" not in result.stdout + result.stderr
    assert "CharacterNotInRepertoire" not in result.stdout + result.stderr


async def test_invalid_text_in_a_flows_file_is_refused_and_the_others_run(
    db: asyncpg.Connection, database_url: str, http_target: HttpTarget, tmp_path: Path
) -> None:
    """NUL bytes and lone surrogates in trigger_table, a DB_UPDATE's table, a URL and a rule
    value: each flow is refused (flow.refused), the good one runs, no traceback."""
    good_id = await add_flow(db, actions=[("API_CALL", {"url": http_target.url_for("/ok")})])
    good = _flow(
        good_id, actions=[{"type": "API_CALL", "config": {"url": http_target.url_for("/ok")}}]
    )
    flows, events = _write(tmp_path, _invalid_text_flows(good))
    env = {"DATABASE_URL": database_url}
    ran = await run_flowd("--once", "--flows", flows, "--events", events, env=env)
    assert ran.code == 0, ran.stderr
    _no_traceback(ran)
    refused = {line["flow_id"]: line for line in ran.logged("flow.refused")}
    assert set(refused) == {101, 102, 103, 104}
    assert refused[101]["where"] == "trigger_table"
    assert "NUL character" in refused[101]["reason"]
    assert "lone surrogate" in refused[103]["reason"]
    assert len(http_target.requests_to("/ok")) == 1
    assert [e["flow_id"] for e in await executions(db)] == [good_id]

    offline = await run_flowd("--once", "--dry-run", "--flows", flows, "--events", events)
    assert offline.code == 0, offline.stderr
    _no_traceback(offline)
    assert json.loads(offline.stdout) == {"line": 1, "flows": [good_id]}

    checked = await run_flowd("validate", "--flows", flows)
    assert checked.code == 1
    _no_traceback(checked)
    flagged = sorted(int(line.split()[1]) for line in checked.stdout.splitlines())
    assert flagged == [101, 102, 103, 104]


async def test_a_flows_file_whose_ids_the_database_lacks_is_one_line(
    db: asyncpg.Connection, database_url: str, tmp_path: Path
) -> None:
    """Without --dry-run the executions are recorded under the file's flow ids: ids the
    database lacks end in one line (exit 2) saying to load them first or use --dry-run."""
    known = await add_flow(db)
    flows, events = _write(tmp_path, [_flow(known), _flow(998), _flow(999)])
    ran = await run_flowd(
        "--once", "--flows", flows, "--events", events, env={"DATABASE_URL": database_url}
    )
    assert ran.code == 2
    _no_traceback(ran)
    [line] = ran.stderr.strip().splitlines()
    assert "flow id(s) 998, 999 are not in the database" in line
    assert "load them into the database first (or use --dry-run)" in line
    assert "DETAIL" not in line
    assert await executions(db) == []


async def test_validate_checks_a_flows_file_against_the_catalog_when_there_is_a_database(
    database_url: str, tmp_path: Path
) -> None:
    """With DATABASE_URL set, tables that do not exist are problems of a flows file too."""
    update = {"table": "taskz", "field": "status", "value": "x"}
    flows, _ = _write(
        tmp_path,
        [
            _flow(1, trigger_table="nowhere"),
            _flow(2, actions=[{"type": "DB_UPDATE", "config": update}]),
            _flow(3),
        ],
    )
    offline = await run_flowd("validate", "--flows", flows)
    assert offline.code == 0, offline.stdout
    checked = await run_flowd("validate", "--flows", flows, env={"DATABASE_URL": database_url})
    assert checked.code == 1
    assert checked.stdout.splitlines() == [
        "flow 1 (flow 1): trigger table public.nowhere does not exist",
        "flow 2 (flow 2): action #1 (DB_UPDATE): table public.taskz does not exist",
    ]
    assert "3 flow(s) checked, 2 with problems" in checked.stderr
    durable = await run_flowd(
        "validate",
        "--flows",
        flows,
        env={"DATABASE_URL": database_url, "FLOWD_DELIVERY": "durable"},
    )
    assert "capture trigger" not in durable.stdout  # nothing attached it for a file's flows yet


async def test_a_flows_file_that_is_not_text_or_nested_too_deep_is_one_line(
    tmp_path: Path,
) -> None:
    """Invalid UTF-8, or nesting deeper than the JSON reader goes: exit 2 with one line."""
    for content, expected in (
        (b"\xff\xfe[]", "is not UTF-8 text"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    ):
        (tmp_path / "flows.json").write_bytes(content)
        result = await run_flowd("validate", "--flows", str(tmp_path / "flows.json"))
        assert result.code == 2, result.stderr
        _no_traceback(result)
        [line] = result.stderr.strip().splitlines()
        assert expected in line
