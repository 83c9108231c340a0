"""A malformed DATABASE_URL is a setting error: exit 2 with one line on stderr, no
traceback and no password, for every command that would connect."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.flowd_cli import run_flowd

PASSWORD = "pw-4f1d9c"
MALFORMED = {
    "port out of range": (f"postgresql://flowd:{PASSWORD}@127.0.0.1:99999/db", "a port is not"),
    "unclosed IPv6 host": (f"postgresql://flowd:{PASSWORD}@[::1/db", "a host is not"),
    "stray text after the port": (f"postgresql://flowd:{PASSWORD}@[::1]:5432x/db", "a port is"),
    "other scheme": (f"mysql://flowd:{PASSWORD}@127.0.0.1/db", "must start with postgresql://"),
}


@pytest.mark.parametrize(("url", "says"), MALFORMED.values(), ids=MALFORMED.keys())
async def test_a_malformed_database_url_exits_2_with_one_line(
    url: str, says: str, tmp_path: Path
) -> None:
    (tmp_path / "events.jsonl").write_text("")
    commands = [
        ("run",),
        ("run",),  # durable delivery needs no SUPABASE_URL: the URL is what stops it
        ("--once", "--events", str(tmp_path / "events.jsonl")),
        ("migrate",),
        ("validate",),
    ]
    for number, command in enumerate(commands):
        env = {"DATABASE_URL": url} | ({"FLOWD_DELIVERY": "durable"} if number == 1 else {})
        result = await run_flowd(*command, env=env, timeout_s=30)
        assert result.code == 2, (command, result.stderr)
        [line] = result.stderr.strip().splitlines()
        assert line.startswith("flowd: DATABASE_URL: "), line
        assert says in line, line
        assert PASSWORD not in result.stdout + result.stderr
