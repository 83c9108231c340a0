"""A secret's value never reaches a log line or flow_executions, whatever carries it."""

from __future__ import annotations

import json
from pathlib import Path

import asyncpg

from tests.conftest import frame
from tests.support.flowd_cli import run_flowd
from tests.support.flows import add_flow
from tests.support.http_target import HttpTarget, Reply

SENTINEL = "sentinel-7f3a9c1e5b"


async def test_sentinel_secret_appears_nowhere_but_the_request(
    db: asyncpg.Connection, database_url: str, http_target: HttpTarget, tmp_path: Path
) -> None:
    """A secret in URL, header and body is sent, but logs and the table show *** instead."""
    # The target echoes the secret back in its error body, as careless APIs do.
    http_target.script("/hook/" + SENTINEL, *[Reply(500, f"bad token {SENTINEL}")] * 3)
    await add_flow(
        db,
        actions=[
            (
                "API_CALL",
                {
                    "url": http_target.url + "/hook/{{ secrets.TOKEN }}",
                    "headers": {"Authorization": "Bearer {{ secrets.TOKEN }}"},
                    "body": {"token": "{{ secrets.TOKEN }}", "title": "{{ new.title }}"},
                    "max_attempts": 2,
                },
            )
        ],
    )
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "FILE_TOKEN").write_text("file-secret-4d2b8e")
    await add_flow(
        db,
        actions=[
            (
                "FUNCTION_CALL",
                {
                    "function_name": "fn",
                    "params": {"k": "{{ secrets.FILE_TOKEN }}"},
                    "max_attempts": 1,
                },
            )
        ],
    )
    http_target.script("/functions/v1/fn", Reply(401, "nope file-secret-4d2b8e"))
    events = tmp_path / "events.jsonl"
    events.write_text(json.dumps(frame("insert_event")) + "\n")
    result = await run_flowd(
        "--once",
        "--events",
        str(events),
        env={
            "DATABASE_URL": database_url,
            "FLOWD_SECRET_TOKEN": SENTINEL,
            "CREDENTIALS_DIRECTORY": str(credentials),
            "SUPABASE_URL": http_target.url,
            "SUPABASE_SERVICE_ROLE_KEY": "service-key-sentinel-91c",
            "FLOWD_LOG_LEVEL": "debug",
        },
    )
    assert result.code == 1
    sent = http_target.requests_to("/hook/" + SENTINEL)
    assert len(sent) == 2
    assert sent[0].headers["authorization"] == f"Bearer {SENTINEL}"
    assert sent[0].json()["token"] == SENTINEL
    fn_call = http_target.requests_to("/functions/v1/fn")[0]
    assert fn_call.json() == {"k": "file-secret-4d2b8e"}
    output = result.stdout + result.stderr
    assert "***" in output
    stored = await db.fetchval("SELECT string_agg(to_jsonb(e)::text, ' ') FROM flow_executions e")
    assert "***" in stored
    for secret in (SENTINEL, "file-secret-4d2b8e", "service-key-sentinel-91c"):
        assert secret not in output
        assert secret not in stored
