"""Templates under a budget, and event data that never chooses a request's target (issue 12).

Each attack of the issue runs through the real `flowd` command against the test database
and real HTTP targets on 127.0.0.1: a CPU or memory bomb in an API_CALL body fails its
action at once (one attempt, nothing sent) with the budget error while a bystander flow on
another row runs; `--once` exits and leaves no worker process behind; in durable
`flowd run` the health endpoint keeps answering while a bomb renders. An event value in
a URL stays inside the path; an event value as the host refuses the flow.
"""

from __future__ import annotations

import asyncio
import copy
import os
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote

import asyncpg
import httpx

from tests.acceptance.test_durable import start_durable
from tests.acceptance.test_replay import events_file, replay
from tests.conftest import frame
from tests.support.flows import add_flow, executions
from tests.support.http_target import HttpTarget

OVER_BUDGET = "template exceeded its time/memory budget"
BUDGET = {"FLOWD_TEMPLATE_TIMEOUT_S": "0.5", "FLOWD_MAX_ATTEMPTS": "3"}
NESTED_LOOPS = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
BOMBS = {
    "power tower": "{{ ((9**999)**999)**999 }}",
    "nested loops": NESTED_LOOPS,
    "repeated output": "{% for i in range(100000) %}{{ 'x' * 100000 }}{% endfor %}",
    "center": "{{ 'x'|center(2000000000) }}",
    "extend doubling": "{% set x = [1] %}{% for i in range(64) %}{{ x.extend(x) }}{% endfor %}",
    "ljust": "{{ 'x'.ljust(2000000000) }}",
    "format width": "{{ '{:>2000000000}'.format(1) }}",
    # Not in the issue: constants Jinja would fold while compiling, in the daemon, at load.
    "percent width": "{{ '%2000000000s' % 1 }}",
}


def _insert_event(task_id: int, **record: Any) -> dict[str, Any]:
    """The contract's INSERT frame for task `task_id`, with `record` fields changed."""
    event = copy.deepcopy(frame("insert_event"))
    event["payload"]["data"]["record"] |= {"id": task_id, **record}
    return event


async def _bystander(db: asyncpg.Connection, target: HttpTarget, task_id: int) -> int:
    return await add_flow(
        db,
        name="bystander",
        rules=[("id", "=", str(task_id))],
        actions=[("API_CALL", {"url": target.url_for("/plain"), "body": {"id": "{{ new.id }}"}})],
    )


def _processes_with(marker: str) -> list[int]:
    """The processes whose environment holds `marker` (flowd and anything it started)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker.encode() in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:  # gone, or not ours to read
            continue
    return found


async def test_every_bomb_fails_at_once_alone_and_once_exits_leaving_no_worker(
    db: asyncpg.Connection, database_url: str, http_target: HttpTarget, tmp_path: Path
) -> None:
    """Every bomb (in a body; one in a URL's path, one in a header) on row 1, a plain flow
    on row 2, one `--once` run: each bomb's action fails with the budget error after one
    attempt and sends nothing, the plain flow runs, flowd exits, no process of it is left."""
    configs: dict[str, dict[str, Any]] = {
        name: {"url": http_target.url_for("/bomb"), "body": body} for name, body in BOMBS.items()
    }
    configs["in the url's path"] = {"url": http_target.url_for("/bomb/") + NESTED_LOOPS}
    configs["in a header"] = {"url": http_target.url_for("/bomb"), "headers": {"X": NESTED_LOOPS}}
    bombs = {
        await add_flow(
            db, name=name, rules=[("id", "=", "1")], actions=[("API_CALL", config)]
        ): name
        for name, config in configs.items()
    }
    bystander = await _bystander(db, http_target, 2)
    looping = await add_flow(  # not plain: it renders in a worker too, after the bombs
        db,
        name="looping bystander",
        rules=[("id", "=", "2")],
        actions=[
            (
                "API_CALL",
                {
                    "url": http_target.url_for("/looping"),
                    "body": {"tags": "{% for tag in new.tags %}{{ tag }};{% endfor %}"},
                },
            )
        ],
    )
    marker = f"FLOWD_TEST_RUN_{uuid.uuid4().hex}"
    events = events_file(tmp_path, _insert_event(1), _insert_event(2))
    started = time.monotonic()
    result = await replay(database_url, events, **BUDGET, FLOWD_TEST_MARKER=marker)
    assert time.monotonic() - started < 30, "hang guard: a bomb held flowd up"
    assert result.code == 1, result.stderr  # some executions failed
    assert sorted(r.path for r in http_target.requests) == ["/looping", "/plain"]
    assert http_target.requests_to("/plain")[0].json() == {"id": "2"}
    assert http_target.requests_to("/looping")[0].json() == {"tags": "backend;realtime;"}
    by_flow = {e["flow_id"]: e for e in await executions(db)}
    assert by_flow[bystander]["status"] == "SUCCESS"
    assert by_flow[looping]["status"] == "SUCCESS"
    for flow_id, name in bombs.items():
        [action] = by_flow[flow_id]["actions"]
        assert by_flow[flow_id]["status"] == "FAILURE", name
        assert OVER_BUDGET in action["error"], (name, action["error"])
        assert action["attempts"] == 1, name
    await asyncio.sleep(0.5)  # a killed worker's exit is reaped by the system, not at once
    assert _processes_with(marker) == []


async def test_a_bomb_db_update_fails_and_writes_nothing(
    db: asyncpg.Connection, database_url: str, tmp_path: Path
) -> None:
    """The same budget holds where a DB_UPDATE's values are rendered."""
    await db.execute("INSERT INTO tasks (id, title, status) VALUES (1, 't', 'open')")
    flow_id = await add_flow(
        db, actions=[("DB_UPDATE", {"table": "tasks", "set": {"status": NESTED_LOOPS + "x"}})]
    )
    result = await replay(database_url, events_file(tmp_path, _insert_event(1)), **BUDGET)
    assert result.code == 1, result.stderr
    [execution] = await executions(db)
    assert (execution["flow_id"], execution["status"]) == (flow_id, "FAILURE")
    assert OVER_BUDGET in execution["actions"][0]["error"]
    assert await db.fetchval("SELECT status FROM tasks WHERE id = 1") == "open"


async def _livez_while(flowd: Any, done: asyncio.Event) -> list[int]:
    """/livez's status every 0.1 s until `done`; 0 when it did not answer within 2 s."""
    statuses = []
    while not done.is_set():
        try:
            statuses.append((await flowd.get("/livez", timeout_s=2)).status_code)
        except httpx.TimeoutException:
            statuses.append(0)
        await asyncio.sleep(0.1)
    return statuses


def _peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory so far (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for {pid}")


async def test_durable_run_keeps_serving_while_a_bomb_renders(
    db: asyncpg.Connection, database_url: str, http_target: HttpTarget
) -> None:
    """`flowd run` (durable): a CPU bomb on row 1 renders in a worker for its 5 s budget and
    a memory bomb on row 3 hits the worker's limit; meanwhile /livez answers 200 at once and
    the plain flow on row 2 runs; both bombs fail with the budget error after one attempt,
    the daemon's own memory stays small, and no worker outlives the stop."""
    bomb = await add_flow(
        db,
        name="bomb",
        rules=[("id", "=", "1")],
        actions=[("API_CALL", {"url": http_target.url_for("/bomb"), "body": NESTED_LOOPS})],
    )
    memory_bomb = await add_flow(
        db,
        name="memory bomb",
        rules=[("id", "=", "3")],
        actions=[("API_CALL", {"url": http_target.url_for("/bomb"), "body": BOMBS["center"]})],
    )
    await _bystander(db, http_target, 2)
    marker = f"FLOWD_TEST_RUN_{uuid.uuid4().hex}"
    flowd = await start_durable(
        database_url, FLOWD_TEMPLATE_TIMEOUT_S="5", FLOWD_TEST_MARKER=marker
    )
    try:
        assert (await flowd.get("/livez")).status_code == 200
        bomb_done = asyncio.Event()
        polling = asyncio.create_task(_livez_while(flowd, bomb_done))
        await db.execute("INSERT INTO tasks (id, title) VALUES (1, 'bomb'), (3, 'memory')")
        await asyncio.sleep(0.5)  # the bomb is rendering
        await db.execute("INSERT INTO tasks (id, title) VALUES (2, 'plain')")
        [plain] = await http_target.wait_for_requests("/plain", 1, timeout_s=20)
        failed = flowd.logged("action.failed")
        still_rendering = all(line["flow_id"] != bomb for line in failed)
        await flowd.wait_for_log("action.failed", count=2, timeout_s=30)
        bomb_done.set()
        statuses = await polling
        peak_rss_mb = _peak_rss_mb(flowd.pid)
    finally:
        assert await flowd.stop() == 0
    assert plain.json() == {"id": "2"}
    assert still_rendering, "the plain flow waited for the CPU bomb"
    assert len(statuses) >= 5
    assert set(statuses) == {200}, statuses
    assert http_target.requests_to("/bomb") == []
    assert peak_rss_mb < 400, "the daemon itself held the bomb's memory"
    for flow_id in (bomb, memory_bomb):
        [execution] = [e for e in await executions(db) if e["flow_id"] == flow_id]
        assert execution["status"] == "FAILURE"
        assert OVER_BUDGET in execution["actions"][0]["error"]
        assert execution["actions"][0]["attempts"] == 1
    await asyncio.sleep(0.5)
    assert _processes_with(marker) == []


async def test_an_event_value_in_the_path_stays_in_its_segment(
    db: asyncpg.Connection, database_url: str, http_target: HttpTarget, tmp_path: Path
) -> None:
    """`../../internal-only` in a row lands percent-encoded in one path segment (and in the
    query); nothing reaches /internal-only."""
    await add_flow(
        db,
        actions=[
            (
                "API_CALL",
                {"url": http_target.url_for("/api/items/{{ new.title }}?q={{ new.title }}")},
            )
        ],
    )
    title = "../../internal-only?x=1#f@127.0.0.1:9/"
    result = await replay(database_url, events_file(tmp_path, _insert_event(1, title=title)))
    assert result.code == 0, result.stderr
    [request] = http_target.requests
    segment = request.path.removeprefix("/api/items/")
    assert "/" not in segment, request.path
    assert unquote(segment) == title
    assert parse_qs(request.query) == {"q": [title]}
    assert http_target.requests_to("/internal-only") == []


async def test_a_secret_may_hold_the_origin_and_the_event_still_only_fills_the_path(
    db: asyncpg.Connection, database_url: str, http_target: HttpTarget, tmp_path: Path
) -> None:
    """`{{ secrets.BASE }}/items/{{ new.title }}`: the secret's scheme, host and port are
    used as written; the row's value stays in its segment. `{{ secrets.BASE }}{{ new.title }}`
    (the row right after the host, so it could add a port or userinfo) refuses its flow."""
    used = await add_flow(
        db,
        name="origin from a secret",
        actions=[("API_CALL", {"url": "{{ secrets.BASE }}/items/{{ new.title }}"})],
    )
    glued = await add_flow(
        db,
        name="row glued to the host",
        actions=[("API_CALL", {"url": "{{ secrets.BASE }}{{ new.title }}"})],
    )
    events = events_file(tmp_path, _insert_event(1, title=":1@127.0.0.1/../x"))
    result = await replay(database_url, events, FLOWD_SECRET_BASE=http_target.url)
    assert result.code == 0, result.stderr
    [request] = http_target.requests
    assert request.path.startswith("/items/")
    assert unquote(request.path.removeprefix("/items/")) == ":1@127.0.0.1/../x"
    assert [line["flow_id"] for line in result.logged("flow.refused")] == [glued]
    assert [e["flow_id"] for e in await executions(db)] == [used]


async def test_an_event_value_as_the_host_refuses_the_flow(
    db: asyncpg.Connection, database_url: str, http_target: HttpTarget, tmp_path: Path
) -> None:
    """`http://{{ new.title }}/hook` with the row naming another listener: the flow is
    refused when loaded (one flow.refused line), that listener gets nothing, the other
    flow runs."""
    async with HttpTarget() as elsewhere:
        host = f"127.0.0.1:{elsewhere.port}"
        refused = await add_flow(
            db, name="host from row", actions=[("API_CALL", {"url": "http://{{ new.title }}/hook"})]
        )
        good = await _bystander(db, http_target, 1)
        events = events_file(tmp_path, _insert_event(1, title=host))
        result = await replay(database_url, events)
        assert elsewhere.requests == []
    assert result.code == 0, result.stderr
    [line] = [r for r in result.logged("flow.refused") if r["flow_id"] == refused]
    assert "scheme, host and port" in line["reason"], line
    assert "\n" not in line["reason"]
    assert "Traceback" not in result.stderr
    assert len(http_target.requests_to("/plain")) == 1
    assert [e["flow_id"] for e in await executions(db)] == [good]


async def test_the_leak_check_sees_a_process_that_carries_the_marker() -> None:
    """The leak check above can fail: a process started with the marker is found."""
    marker = f"FLOWD_TEST_RUN_{uuid.uuid4().hex}"
    child = await asyncio.create_subprocess_exec(
        "sleep", "30", env={**os.environ, "FLOWD_TEST_MARKER": marker}
    )
    try:
        assert _processes_with(marker) == [child.pid]
    finally:
        child.kill()
        await child.wait()
    assert _processes_with(marker) == []
