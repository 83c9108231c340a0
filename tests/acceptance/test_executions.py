"""`flowd executions list|show|tail`: the history of real executions, as a user reads it.

Executions are made by the real flowd (`--once --events` with an UPDATE frame, or the
durable daemon on a committed row) against a real HTTP target; the commands run as
subprocesses. Assertions are what they print, and their exit codes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shlex
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from flowd.config import SUPABASE_TRANSACTION_POOLER_PORT
from tests.conftest import frame
from tests.support import sentinels
from tests.support.flowd_cli import Finished, RunningFlowd, flowd_env, run_flowd
from tests.support.flows import add_flow
from tests.support.http_target import HttpTarget, Reply
from tests.support.tcp_proxy import TcpProxy
from tests.support.wait import eventually

JSON_KEYS = {"execution_id", "flow_id", "flow_key", "status", "triggered_at", "finished_at"}
HEADER = ["EXECUTION", "STATUS", "TRIGGERED", "(UTC)", "DURATION", "FLOW", "EVENT"]
DURABLE = {"FLOWD_DELIVERY": "durable", "FLOWD_POLL_INTERVAL_S": "0.2"}


@dataclass(frozen=True)
class History:
    notify_flow: int  # key notify-pm: a webhook, then a DB_UPDATE; SUCCESS
    failing_flow: int  # no key: a webhook answered 400; FAILURE
    notified: int  # execution ids
    failed: int


async def _flows(
    db: asyncpg.Connection, target: HttpTarget, trigger_event: str = "*"
) -> tuple[int, int]:
    target.script("/refused", Reply(status=400, body="no such channel"))
    notify = await add_flow(
        db,
        name="Notify PM on High-Priority Task",
        trigger_event=trigger_event,
        rules=[("priority", "=", "high")],
        actions=[
            ("API_CALL", {"url": target.url_for("/pm"), "body": '{"task": "{{ new.title }}"}'}),
            ("DB_UPDATE", {"table": "tasks", "field": "estimate", "value": "5"}),
        ],
    )
    await db.execute("UPDATE flows SET key = 'notify-pm' WHERE flow_id = $1", notify)
    failing = await add_flow(
        db,
        name="Post to a refused channel",
        trigger_event=trigger_event,
        rules=[("priority", "=", "high")],
        actions=[("API_CALL", {"url": target.url_for("/refused")})],
    )
    return notify, failing


async def executions_cli(database_url: str, *args: str) -> Finished:
    return await run_flowd("executions", *args, env={"DATABASE_URL": database_url})


@pytest.fixture
async def history(
    db: asyncpg.Connection, database_url: str, http_target: HttpTarget, tmp_path: Path
) -> History:
    """One UPDATE frame replayed by `flowd --once`: one SUCCESS and one FAILURE execution."""
    await db.execute("INSERT INTO tasks (id, title, priority) VALUES (1, 'Write contract', 'high')")
    notify, failing = await _flows(db, http_target)
    events = tmp_path / "events.jsonl"
    events.write_text(json.dumps(frame("update_event")) + "\n")
    replayed = await run_flowd(
        "--once", "--events", str(events), env={"DATABASE_URL": database_url}
    )
    assert replayed.code == 1, replayed.stderr  # the failing flow's FAILURE
    ids = {
        row["flow_id"]: row["execution_id"]
        for row in await db.fetch("SELECT flow_id, execution_id FROM flow_executions")
    }
    return History(notify, failing, ids[notify], ids[failing])


async def test_list_prints_executions_newest_first_and_narrows_by_each_flag(
    history: History, database_url: str
) -> None:
    listed = await executions_cli(database_url, "list")
    assert listed.code == 0, listed.stderr
    header, *lines = listed.stdout.splitlines()
    assert header.split() == HEADER
    assert len(lines) == 2
    by_id = {int(line.split()[0]): line for line in lines}
    assert by_id[history.notified].split()[1] == "SUCCESS"
    assert "notify-pm" in by_id[history.notified]
    assert f"flow {history.failing_flow}" in by_id[history.failed]
    assert by_id[history.failed].split()[1] == "FAILURE"
    assert all(line.endswith("UPDATE public.tasks") for line in lines)

    as_json = await executions_cli(database_url, "list", "--json")
    assert as_json.code == 0, as_json.stderr
    objects = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert all(JSON_KEYS | {"event_key"} <= set(item) for item in objects)
    newest_first = sorted(objects, key=lambda item: item["triggered_at"], reverse=True)
    assert objects == newest_first
    [notified] = [item for item in objects if item["execution_id"] == history.notified]
    assert (notified["flow_id"], notified["flow_key"]) == (history.notify_flow, "notify-pm")
    assert notified["status"] == "SUCCESS"
    assert notified["finished_at"] >= notified["triggered_at"]

    async def ids(*flags: str) -> list[int]:
        found = await executions_cli(database_url, "list", "--json", *flags)
        assert found.code == 0, found.stderr
        return [json.loads(line)["execution_id"] for line in found.stdout.splitlines()]

    assert await ids("--flow", "notify-pm") == [history.notified]
    assert await ids("--flow", str(history.failing_flow)) == [history.failed]
    assert await ids("--status", "failure") == [history.failed]
    assert len(await ids("--limit", "1")) == 1
    assert await ids("--since", "2999-01-01T00:00:00Z") == []
    nothing = await executions_cli(database_url, "list", "--since", "2999-01-01")
    assert nothing.stdout.strip() == "no executions"


async def test_show_prints_the_event_diff_each_action_and_the_log(
    history: History, database_url: str
) -> None:
    shown = await executions_cli(database_url, "show", str(history.notified))
    assert shown.code == 0, shown.stderr
    text = shown.stdout
    assert text.startswith(f"execution {history.notified}: SUCCESS\n")
    lines = [line.strip() for line in text.splitlines()]
    assert f"flow:      {history.notify_flow} notify-pm (Notify PM on High-Priority Task)" in (
        text.splitlines()
    )
    assert "event:     UPDATE public.tasks, committed 2026-11-27T09:51:01.463Z" in text
    # The frame's UPDATE: what changed, old → new, and nothing that did not.
    assert 'status: "in_progress" → "done"' in lines
    assert 'tags: ["backend", "realtime"] → ["backend", "realtime", "shipped"]' in lines
    assert "done: false → true" in lines
    assert not any(line.startswith("title:") for line in lines)
    [webhook] = [line for line in lines if line.startswith("1. API_CALL")]
    assert "ok, HTTP 200, 1 attempt," in webhook
    [update] = [line for line in lines if line.startswith("2. DB_UPDATE")]
    assert "ok, 1 row(s) written" in update
    assert lines[lines.index("log:") + 1].startswith(f"flow {history.notify_flow} (Notify PM")

    failed = await executions_cli(database_url, "show", str(history.failed))
    assert failed.code == 0, failed.stderr
    [refused] = [line.strip() for line in failed.stdout.splitlines() if "1. API_CALL" in line]
    assert "FAILED, HTTP 400" in refused
    assert "error: " in failed.stdout
    assert "no such channel" in failed.stdout  # the answer's excerpt, as recorded

    as_json = await executions_cli(database_url, "show", str(history.notified), "--json")
    detail = json.loads(as_json.stdout)
    assert set(detail) >= JSON_KEYS
    assert {"column": "status", "old": "in_progress", "new": "done"} in detail["changes"]
    assert [action["http_status"] for action in detail["actions"]] == [200, None]
    assert [action["rows_written"] for action in detail["actions"]] == [None, 1]
    assert detail["event"]["record"]["status"] == "done"


async def test_show_masks_a_secret_even_where_a_row_holds_it_unmasked(
    db: asyncpg.Connection, database_url: str
) -> None:
    """Written by hand (or by a flowd that did not know the secret): masked as it is printed."""
    flow_id = await add_flow(db)
    execution_id = await db.fetchval(
        "INSERT INTO flow_executions (flow_id, event_key, status, event, log)"
        " VALUES ($1, 'k', 'SUCCESS', jsonb_build_object('type', 'INSERT', 'record',"
        " jsonb_build_object('token', $2::text)), 'sent ' || $2) RETURNING execution_id",
        flow_id,
        sentinels.TEMPLATE_SECRET,
    )
    try:
        for flags in ((), ("--json",)):
            shown = await executions_cli(database_url, "show", str(execution_id), *flags)
            assert shown.code == 0, shown.stderr  # run_flowd fails on the secret in its output
            assert "***" in shown.stdout
    finally:  # the database fixture checks flow_executions for secrets too
        await db.execute("DELETE FROM flow_executions")


async def test_a_reader_that_stops_early_ends_the_list_quietly(
    db: asyncpg.Connection, database_url: str
) -> None:
    """`flowd executions list | head -1`: no BrokenPipeError traceback, exit 0."""
    flow_id = await add_flow(db)
    await db.execute(
        "INSERT INTO flow_executions (flow_id, event_key, status, event, finished_at)"
        " SELECT $1, 'k' || n, 'SUCCESS', '{}', now() FROM generate_series(1, 3000) n",
        flow_id,
    )
    listing = f"{shlex.quote(sys.executable)} -m flowd executions list --limit 3000"
    process = await asyncio.create_subprocess_shell(
        f"set -o pipefail 2>/dev/null; {listing} | head -1",
        env=flowd_env({"DATABASE_URL": database_url}),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        executable="/bin/bash",
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert stdout.decode().split() == HEADER
    assert stderr.decode() == ""
    assert process.returncode == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("show", "999999"), "flowd: no execution 999999"),
        (("show", "twelve"), "flowd: no execution 'twelve': an execution id is a number"),
        (("list", "--flow", "no-such-flow"), "flowd: no flow with key or id 'no-such-flow'"),
        (("tail", "--flow", "424242"), "flowd: no flow with key or id '424242'"),
    ],
)
async def test_an_unknown_execution_or_flow_is_one_line_and_exit_1(
    database_url: str, args: tuple[str, ...], message: str
) -> None:
    finished = await executions_cli(database_url, *args)
    assert (finished.code, finished.stdout) == (1, "")
    assert finished.stderr.strip() == message


@pytest.mark.parametrize(
    "args", [("list", "--limit", "0"), ("list", "--status", "DONE"), ("list", "--since", "soon")]
)
async def test_a_bad_flag_is_one_line_and_exit_2(database_url: str, args: tuple[str, ...]) -> None:
    finished = await executions_cli(database_url, *args)
    assert finished.code == 2
    [line] = finished.stderr.splitlines()
    assert line.startswith("flowd: ")


def _tail(database_url: str, *args: str) -> RunningFlowd:
    return RunningFlowd(*args, env={"DATABASE_URL": database_url}, command=("executions", "tail"))


def _printed(tail: RunningFlowd) -> list[str]:
    return [line for line in tail.other_output if line.strip()]


async def test_tail_prints_executions_as_the_daemon_finishes_them_until_sigterm(
    db: asyncpg.Connection, database_url: str, http_target: HttpTarget
) -> None:
    # INSERT only: the DB_UPDATE's own change runs no flow, so each flow runs once.
    notify, failing = await _flows(db, http_target, "INSERT")
    daemon = await RunningFlowd(env={"DATABASE_URL": database_url, **DURABLE}).start()
    await daemon.wait_for_log("eventlog.started")
    one_flow = await _tail(database_url, "--flow", "notify-pm").start()
    every_flow = await _tail(database_url, "--json").start()
    try:
        for tail in (one_flow, every_flow):
            [following] = await tail.wait_for_log("executions.following", timeout_s=20)
            assert following["listening"] is True
        await db.execute("INSERT INTO tasks (id, title, priority) VALUES (7, 'Ship it', 'high')")

        await eventually(lambda: len(_printed(every_flow)) >= 2, timeout_s=10)
        finished = [json.loads(line) for line in _printed(every_flow)]
        assert {(item["flow_id"], item["status"]) for item in finished} == {
            (notify, "SUCCESS"),
            (failing, "FAILURE"),
        }
        await eventually(lambda: len(_printed(one_flow)) >= 1, timeout_s=10)
        [line] = _printed(one_flow)
        assert line.split()[:2] == [str(_id_of(finished, notify)), "SUCCESS"]
        assert "notify-pm" in line

        # An execution written finished by anyone else is printed too.
        direct = await db.fetchval(
            "INSERT INTO flow_executions (flow_id, event_key, status, event, finished_at)"
            " VALUES ($1, 'by-hand', 'SUCCESS', '{}', now()) RETURNING execution_id",
            notify,
        )
        await eventually(lambda: len(_printed(one_flow)) >= 2, timeout_s=10)
        assert _printed(one_flow)[1].split()[:2] == [str(direct), "SUCCESS"]
    finally:
        codes = [await tail.stop() for tail in (one_flow, every_flow)]
        await daemon.stop()
    assert codes == [0, 0]
    assert len(_printed(every_flow)) == 3  # each finish once


async def test_tail_polls_when_it_cannot_listen_and_stops_on_ctrl_c(
    db: asyncpg.Connection, database_url: str
) -> None:
    """Through Supabase's transaction pooler (port 6543) LISTEN hears nothing: tail polls.
    Here a poll-only follower is one whose DATABASE_URL names port 6543 of a TCP proxy."""
    flow_id = await add_flow(db)
    async with _port_6543_proxy(database_url) as proxied:
        tail = await _tail(proxied, "--json").start()
        try:
            [following] = await tail.wait_for_log("executions.following", timeout_s=20)
            assert following["listening"] is False
            assert tail.logged("executions.polling_only")
            direct = await db.fetchval(
                "INSERT INTO flow_executions (flow_id, event_key, status, event, finished_at)"
                " VALUES ($1, 'by-hand', 'FAILURE', '{}', now()) RETURNING execution_id",
                flow_id,
            )
            await eventually(lambda: len(_printed(tail)) >= 1, timeout_s=10)
            [printed] = [json.loads(line) for line in _printed(tail)]
            assert (printed["execution_id"], printed["status"]) == (direct, "FAILURE")
            tail.signal(signal.SIGINT)
            assert await tail.wait(timeout_s=20) == 0
        finally:
            await tail.stop()


@contextlib.asynccontextmanager
async def _port_6543_proxy(database_url: str) -> AsyncIterator[str]:
    """DATABASE_URL through a proxy on port 6543 (the port flowd takes for the pooler), of
    the first loopback address where it is free (a test's PgBouncer may hold 127.0.0.1's)."""
    parts = urlsplit(database_url)
    for last in range(1, 10):
        proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432, f"127.0.0.{last}")
        proxy.port = SUPABASE_TRANSACTION_POOLER_PORT
        try:
            await proxy.start()
            break
        except OSError:
            continue
    else:
        pytest.skip("port 6543 is taken on 127.0.0.1 to 127.0.0.9")
    try:
        netloc = parts.netloc.rpartition("@")[0] + f"@{proxy.host}:{proxy.port}"
        yield urlunsplit(parts._replace(netloc=netloc.lstrip("@")))
    finally:
        await proxy.cut()


def _id_of(finished: list[dict[str, Any]], flow_id: int) -> int:
    [execution_id] = [item["execution_id"] for item in finished if item["flow_id"] == flow_id]
    return int(execution_id)
