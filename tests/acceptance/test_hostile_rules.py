"""Hostile rules against the real database: each fails alone, quickly, in one line, and
the bystander flow beside it still runs.

A catastrophic-backtracking pattern (`(a+)+$` on forty `a`s and a `!`) classifies at
once (MATCHES runs on RE2); a backreference, which RE2 refuses, is a problem for
`flowd validate` and refused at load; a million-item IN list is refused by its size.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.conftest import frame
from tests.support.flowd_cli import Finished, RunningFlowd, run_flowd
from tests.support.flows import add_flow, executions
from tests.support.http_target import HttpTarget

EVIL_TITLE = "a" * 40 + "!"
HUGE_IN_LIST = ",".join(f"item{number}" for number in range(1_000_000))
GUARD_S = 30  # a hang guard only: each run below takes about a second


def _events(tmp_path: Path, *titles: str) -> str:
    """An events file of the insert_event frame, once per title."""
    lines = []
    for title in titles:
        event = frame("insert_event")
        event["payload"]["data"]["record"]["title"] = title
        lines.append(json.dumps(event))
    (tmp_path / "events.jsonl").write_text("\n".join(lines) + "\n")
    return str(tmp_path / "events.jsonl")


def _flows_file(tmp_path: Path, *flows: dict[str, Any]) -> str:
    (tmp_path / "flows.json").write_text(json.dumps(list(flows)))
    return str(tmp_path / "flows.json")


def _one_rule(flow_id: int, operator: str, value: str) -> dict[str, Any]:
    rule = {"rule_id": 1, "field": "title", "operator": operator, "value": value}
    return {
        "flow_id": flow_id,
        "name": f"flow {flow_id}",
        "trigger_table": "tasks",
        "rules": [rule],
    }


def _no_traceback(result: Finished) -> None:
    assert "Traceback" not in result.stdout + result.stderr


async def _bystander(db: asyncpg.Connection, http_target: HttpTarget) -> int:
    return await add_flow(db, actions=[("API_CALL", {"url": http_target.url_for("/bystander")})])


@pytest.mark.timeout(120)
async def test_a_redos_pattern_classifies_at_once(
    db: asyncpg.Connection, database_url: str, http_target: HttpTarget, tmp_path: Path
) -> None:
    """`(a+)+$` on forty `a`s and a `!`: --dry-run with a flows file, and a replay of the
    database's flows, classify every event; the bystander runs for each."""
    events = _events(tmp_path, EVIL_TITLE, "a" * 40)
    offline_flows = _flows_file(tmp_path, _one_rule(1, "MATCHES", "(a+)+$"), _one_rule(2, "=", "x"))
    offline = await run_flowd(
        "--once", "--dry-run", "--flows", offline_flows, "--events", events, timeout_s=GUARD_S
    )
    assert offline.code == 0, offline.stderr
    assert [json.loads(line) for line in offline.stdout.splitlines()] == [
        {"line": 1, "flows": []},
        {"line": 2, "flows": [1]},
    ]

    bystander = await _bystander(db, http_target)
    hostile = await add_flow(
        db,
        rules=[("title", "MATCHES", "(a+)+$")],
        actions=[("API_CALL", {"url": http_target.url_for("/hostile")})],
    )
    ran = await run_flowd(
        "--once", "--events", events, env={"DATABASE_URL": database_url}, timeout_s=GUARD_S
    )
    assert ran.code == 0, ran.stderr
    assert len(http_target.requests_to("/bystander")) == 2
    assert len(http_target.requests_to("/hostile")) == 1  # the second title only
    assert sorted(e["flow_id"] for e in await executions(db)) == sorted(
        [bystander, bystander, hostile]
    )


@pytest.mark.timeout(120)
async def test_a_pattern_re2_refuses_is_a_problem_and_refused_at_load(
    db: asyncpg.Connection, database_url: str, http_target: HttpTarget, tmp_path: Path
) -> None:
    """A backreference: validate names the flow, the rule and why; a replay refuses the
    flow (flow.refused) and runs the bystander."""
    bystander = await _bystander(db, http_target)
    hostile = await add_flow(db, name="echo", rules=[("title", "MATCHES", r"(a)\1")])
    env = {"DATABASE_URL": database_url}
    checked = await run_flowd("validate", env=env, timeout_s=GUARD_S)
    assert checked.code == 1
    _no_traceback(checked)
    [line] = checked.stdout.splitlines()
    assert line.startswith(f"flow {hostile} (echo): rule ")
    assert r"the regular expression '(a)\\1' does not compile: invalid escape sequence" in line

    ran = await run_flowd("--once", "--events", _events(tmp_path, "aa"), env=env, timeout_s=GUARD_S)
    assert ran.code == 0, ran.stderr
    _no_traceback(ran)
    [refused] = ran.logged("flow.refused")
    assert refused["flow_id"] == hostile
    assert "does not compile" in refused["reason"]
    assert len(http_target.requests_to("/bystander")) == 1
    assert [e["flow_id"] for e in await executions(db)] == [bystander]


@pytest.mark.timeout(120)
async def test_a_million_item_in_list_is_refused_fast(
    db: asyncpg.Connection, database_url: str, http_target: HttpTarget, tmp_path: Path
) -> None:
    """In the database (validate, and load for a replay) and in a flows file (validate
    --flows, --dry-run): one line naming the flow, the rule and the bound."""
    bystander = await _bystander(db, http_target)
    hostile = await add_flow(db, name="huge", rules=[("title", "IN", HUGE_IN_LIST)])
    env = {"DATABASE_URL": database_url}
    bound = f"the rule value has {len(HUGE_IN_LIST):,} characters, over the limit of 262,144"

    checked = await run_flowd("validate", env=env, timeout_s=GUARD_S)
    assert checked.code == 1
    rule_id = await db.fetchval("SELECT rule_id FROM rules WHERE flow_id = $1", hostile)
    assert checked.stdout.splitlines() == [f"flow {hostile} (huge): rule {rule_id}: {bound}"]
    ran = await run_flowd("--once", "--events", _events(tmp_path, "x"), env=env, timeout_s=GUARD_S)
    assert ran.code == 0, ran.stderr
    [refused] = ran.logged("flow.refused")
    assert (refused["flow_id"], refused["reason"]) == (hostile, bound)
    assert [e["flow_id"] for e in await executions(db)] == [bystander]

    flows = _flows_file(tmp_path, _one_rule(1, "IN", HUGE_IN_LIST), _one_rule(2, "=", "x"))
    from_file = await run_flowd("validate", "--flows", flows, timeout_s=GUARD_S)
    assert from_file.code == 1
    assert from_file.stdout.splitlines() == [f"flow 1 (flow 1): rule 1: {bound}"]
    dry = await run_flowd(
        "--once",
        "--dry-run",
        "--flows",
        flows,
        "--events",
        _events(tmp_path, "x"),
        timeout_s=GUARD_S,
    )
    assert dry.code == 0, dry.stderr
    assert json.loads(dry.stdout) == {"line": 1, "flows": [2]}
    assert [line["flow_id"] for line in dry.logged("flow.refused")] == [1]


@pytest.mark.timeout(120)
async def test_the_daemon_serves_the_bystander_beside_every_hostile_rule(
    db: asyncpg.Connection, database_url: str, http_target: HttpTarget
) -> None:
    """`flowd run` (durable): the backreference and the million-item IN list are refused at
    start, the ReDoS flow classifies its rows at once, and the bystander runs for each."""
    bystander = await _bystander(db, http_target)
    redos = await add_flow(
        db,
        rules=[("title", "MATCHES", "(a+)+$")],
        actions=[("API_CALL", {"url": http_target.url_for("/redos")})],
    )
    refused = {
        await add_flow(db, rules=[("title", "MATCHES", r"(a)\1")]),
        await add_flow(db, rules=[("title", "IN", HUGE_IN_LIST)]),
    }
    env = {
        "DATABASE_URL": database_url,
        "FLOWD_DELIVERY": "durable",
        "FLOWD_POLL_INTERVAL_S": "0.2",
    }
    running = await RunningFlowd(env=env).start()
    try:
        await running.wait_for_log("eventlog.started")
        assert {line["flow_id"] for line in running.logged("flow.refused")} == refused
        await db.executemany(
            "INSERT INTO tasks (id, title, priority, status) VALUES ($1, $2, 'high', 'open')",
            [(1, EVIL_TITLE), (2, "a" * 40), (3, EVIL_TITLE)],
        )
        await http_target.wait_for_requests("/bystander", 3, timeout_s=GUARD_S)
        await http_target.wait_for_requests("/redos", 1, timeout_s=GUARD_S)
    finally:
        assert await running.stop() == 0
    assert len(http_target.requests_to("/redos")) == 1
    ran = [e["flow_id"] for e in await executions(db)]
    assert sorted(ran) == sorted([bystander] * 3 + [redos])
