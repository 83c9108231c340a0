"""Run the real `flowd` command in a subprocess and read what it printed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from tests.support import sentinels

# Fast retries, short timeouts: the tests assert behaviour, not the default pacing.
TEST_ENV = {
    "FLOWD_LOG_FORMAT": "json",
    "FLOWD_RETRY_BACKOFF_S": "0.01",
    "FLOWD_ACTION_TIMEOUT_S": "2",
    "FLOWD_HTTP_ADDR": "127.0.0.1:0",  # a free port each: tests run several flowd at once
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
    return base | TEST_ENV | sentinels.arm(extra or {})


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
    try:
        stdout, stderr = await asyncio.wait_for(
            process.communicate(stdin.encode() if stdin is not None else None), timeout_s
        )
    except TimeoutError:
        process.kill()  # a hung flowd must not outlive its test
        await process.wait()
        raise
    assert process.returncode is not None
    finished = Finished(process.returncode, stdout.decode(), stderr.decode())
    secrets = sentinels.secret_values(flowd_env(env))
    sentinels.assert_absent([finished.stdout, finished.stderr], secrets, "flowd's output")
    return finished


class RunningFlowd:
    """`flowd run` (or `command`) in the background: its JSON log lines as they come, signals,
    exit code."""

    def __init__(
        self,
        *args: str,
        env: Mapping[str, str],
        prefix: Sequence[str] = (),
        command: Sequence[str] = ("run",),
    ) -> None:
        self._prefix = tuple(prefix)  # a command that runs flowd, such as `unshare ...`
        self._args = (*command, *args)
        self._env = flowd_env(env)
        self.logs: list[dict[str, Any]] = []
        self.other_output: list[str] = []
        self.raw_output: list[str] = []
        self.http_bodies: list[str] = []
        self._process: asyncio.subprocess.Process | None = None
        self._readers: list[asyncio.Task[None]] = []
        self._new_line = asyncio.Event()

    async def start(self) -> RunningFlowd:
        self._process = await asyncio.create_subprocess_exec(
            *self._prefix,
            sys.executable,
            "-m",
            "flowd",
            *self._args,
            env=self._env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert self._process.stdout is not None
        assert self._process.stderr is not None
        self._readers = [
            asyncio.create_task(self._read(self._process.stdout)),
            asyncio.create_task(self._read(self._process.stderr)),
        ]
        return self

    async def _read(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            text = line.decode().rstrip("\n")
            self.raw_output.append(text)
            try:
                record = json.loads(text)
            except ValueError:
                record = None
            if isinstance(record, dict) and "event" in record:
                self.logs.append(record)
            else:
                self.other_output.append(text)
            self._new_line.set()

    def logged(self, event: str) -> list[dict[str, Any]]:
        return [record for record in self.logs if record["event"] == event]

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    async def wait_for_log(
        self, event: str, count: int = 1, timeout_s: float = 30, **fields: Any
    ) -> list[dict[str, Any]]:
        """Wait until `event` was logged `count` times (with these field values)."""

        def matching() -> list[dict[str, Any]]:
            return [r for r in self.logged(event) if all(r.get(k) == v for k, v in fields.items())]

        async def wait() -> list[dict[str, Any]]:
            while len(found := matching()) < count:
                if self._process is not None and self._process.returncode is not None:
                    raise AssertionError(f"flowd exited while waiting for {event}: {self.tail()}")
                self._new_line.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._new_line.wait(), 0.5)
            return found

        try:
            return await asyncio.wait_for(wait(), timeout_s)
        except TimeoutError:
            raise AssertionError(
                f"no {count}x {event} {fields} within {timeout_s} s: {self.tail()}"
            ) from None

    def tail(self, lines: int = 30) -> str:
        rendered = [json.dumps(r) for r in self.logs[-lines:]] + self.other_output[-10:]
        return "\n".join(rendered)

    def signal(self, signum: int) -> None:
        assert self._process is not None
        self._process.send_signal(signum)

    async def wait(self, timeout_s: float = 60) -> int:
        assert self._process is not None
        code = await asyncio.wait_for(self._process.wait(), timeout_s)
        await asyncio.gather(*self._readers)
        sentinels.assert_absent(
            self.raw_output + self.http_bodies,
            sentinels.secret_values(self._env),
            "flowd's output or its HTTP answers",
        )
        return code

    async def get(self, path: str, timeout_s: float = 10) -> httpx.Response:
        """GET `path` from the health endpoint (address from the `http.listening` log)."""
        [listening] = await self.wait_for_log("http.listening")
        async with httpx.AsyncClient() as client:
            response = await client.get(f"http://{listening['address']}{path}", timeout=timeout_s)
        self.http_bodies.append(response.text)
        return response

    async def stop(self, timeout_s: float = 60) -> int:
        """SIGTERM, then wait for the exit code (kill after the timeout)."""
        assert self._process is not None
        if self._process.returncode is None:
            self._process.send_signal(signal.SIGTERM)
        try:
            return await self.wait(timeout_s)
        except TimeoutError:
            self._process.kill()
            await self.wait()
            stuck = f"flowd did not stop within {timeout_s} s: {self.tail()}"
            raise AssertionError(stuck) from None
