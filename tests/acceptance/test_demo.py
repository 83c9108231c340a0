"""`flowd demo`, the README's first command: the real command, its output and exit code."""

from __future__ import annotations

from tests.support.flowd_cli import run_flowd


async def test_demo_runs_the_example_flows_and_reports_them() -> None:
    result = await run_flowd("demo", timeout_s=60)
    assert result.code == 0, result.stdout + result.stderr
    out = result.stdout
    assert "a throwaway PostgreSQL at 127.0.0.1:" in out
    # The high-priority task: notified, then set In Progress by the same flow, whose own
    # write is a change that matches nothing.
    first = "change  INSERT tasks id=1\n     flow 1 (Notify PM on High-Priority Task): SUCCESS"
    assert first in out
    assert "API_CALL ok, HTTP 200" in out
    assert "DB_UPDATE ok, 1 row(s) written" in out
    assert "change  UPDATE tasks id=1 (written by flow 1)\n     no flow matched" in out
    assert 'receiver got POST /hooks/pm {"text": "High-priority task: Fix the login page"}' in out
    # The low-priority task matches nothing; finishing the first calls the Edge Function.
    assert "change  INSERT tasks id=2\n     no flow matched" in out
    assert "FUNCTION_CALL ok, HTTP 200" in out
    assert "receiver got POST /functions/v1/send-email" in out
    assert out.count(" SUCCESS\n") >= 4  # two steps and two flow_executions rows
    assert "FAILURE" not in out
    assert "everything stopped" in out
    assert result.stderr == "", result.stderr  # only problems are logged, and there were none


async def test_demo_without_postgres_binaries_says_how_to_install_them() -> None:
    result = await run_flowd("demo", env={"FLOWD_TEST_PG_BIN": "/nonexistent"})
    assert result.code == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert "apt-get install postgresql" in result.stderr
    assert "Traceback" not in result.stderr
