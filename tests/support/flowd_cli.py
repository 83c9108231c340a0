"""Run the real `flowd` command in a subprocess and read what it printed."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Fast retries, short timeouts: the tests assert behaviour, not the default pacing.
TEST_ENV = {
    "FLOWD_LOG_FORMAT": "json",
    "FLOWD_RETRY_BACKOFF_S": "0.01",
    "FLOWD_ACTION_TIMEOUT_S": "2",
}


@dataclass(frozen=True)
class Finished:
    code: int
    stdout: str
    stderr: str

    @property
    def logs(self) -> list[dict[str, Any]]:
        """Every JSON log line flowd wrote (stdout, or stderr under --dry-run)."""
        lines = []
        for line in (self.stdout + "\n" + self.stderr).splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and "event" in record and "level" in record:
                lines.append(record)
        return lines

    def logged(self, event: str) -> list[dict[str, Any]]:
        return [record for record in self.logs if record["event"] == event]


def flowd_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    base = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("FLOWD_", "DATABASE_URL", "SUPABASE_", "CREDENTIALS_DIRECTORY"))
    }
    return base | TEST_ENV | dict(extra or {})


async def run_flowd(
    *args: str,
    env: Mapping[str, str] | None = None,
    stdin: str | None = None,
    timeout_s: float = 90,
) -> Finished:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "flowd",
        *args,
        env=flowd_env(env),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(
        process.communicate(stdin.encode() if stdin is not None else None), timeout_s
    )
    assert process.returncode is not None
    return Finished(process.returncode, stdout.decode(), stderr.decode())
