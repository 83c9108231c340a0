"""What the daemon benchmarks share: a throwaway PostgreSQL, the real `flowd run`, a receiver.

`Server` starts one TemporaryCluster and makes migrated databases with the `tasks`
table of the tests (`tests/support/schema.sql`). `Flowd` runs `python -m flowd run` as
a subprocess with its log in a file, and reads its resident memory from /proc.
`Receiver` runs `python -m bench.receiver`, a separate process, so that the arrival
times it writes are not delayed by the load generator's own event loop.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import asyncpg

from flowd.local_postgres import TemporaryCluster
from flowd.logs import configure
from flowd.migrate import migrate

__all__ = [
    "Flowd",
    "Receiver",
    "Server",
    "insert_tasks",
    "percentile",
    "status_kib",
    "wait_until_handled",
]

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "tests" / "support" / "schema.sql"
# The capture trigger flowd attaches itself; attached ahead when changes precede the daemon.
CAPTURE_SQL = (
    "CREATE TRIGGER flowd_capture AFTER INSERT OR UPDATE OR DELETE ON public.tasks"
    " FOR EACH ROW EXECUTE FUNCTION public.flowd_capture('id')"
)


INSERT_TASK = "INSERT INTO tasks (id, title, priority, status) VALUES ($1, $2, 'high', 'open')"


class Server:
    """One PostgreSQL cluster for a section; databases made on demand."""

    def __init__(self) -> None:
        self._cluster = TemporaryCluster()
        self._count = 0

    def __enter__(self) -> Self:
        configure(level="warning", stream=sys.stderr)  # `migrate` logs each migration
        self._cluster.start()
        # Durable mode commits a lot of small transactions: keep the WAL flush out of the
        # way as a managed service's fast disk would (the same for flowd and its baseline).
        self._cluster.psql("ALTER SYSTEM SET synchronous_commit = off; SELECT pg_reload_conf()")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._cluster.stop()

    async def database(self) -> str:
        """A new database with flowd's tables and `tasks`; its URL."""
        self._count += 1
        name = f"bench_{self._count}"
        admin = await asyncpg.connect(self._cluster.dsn)
        try:
            await admin.execute(f"CREATE DATABASE {name}")
        finally:
            await admin.close()
        url = self._cluster.dsn_for(name)
        connection = await asyncpg.connect(url)
        try:
            await migrate(connection, "public")
            await connection.execute(SCHEMA.read_text())
        finally:
            await connection.close()
        return url


class Flowd:
    """`flowd run` as a subprocess; its JSON log goes to a file."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWD_")}
        self._env |= {"FLOWD_LOG_FORMAT": "json", "FLOWD_HTTP_ADDR": "127.0.0.1:0", **env}
        self._log: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self._process: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    async def start(self, ready: str, timeout_s: float = 60) -> Self:
        """Start it; return once it logged the event `ready`."""
        self._process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "flowd",
            "run",
            env=self._env,
            cwd=ROOT,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
        )
        deadline = time.monotonic() + timeout_s
        while f'"event": "{ready}"' not in self.output():
            if self._process.returncode is not None or time.monotonic() > deadline:
                raise RuntimeError(f"flowd did not log {ready}:\n{self.output()[-3000:]}")
            await asyncio.sleep(0.05)
        return self

    def output(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def logged(self, event: str) -> list[dict[str, object]]:
        needle = f'"event": "{event}"'
        return [json.loads(line) for line in self.output().splitlines() if needle in line]

    async def stop(self) -> None:
        if self._process is not None and self._process.returncode is None:
            self._process.terminate()
            try:
                await asyncio.wait_for(self._process.wait(), 60)
            except TimeoutError:
                self._process.kill()
                await self._process.wait()
        self._log.close()


class Receiver:
    """`python -m bench.receiver`: answers 200 to every POST and notes (body id, arrival)."""

    def __init__(self) -> None:
        self._process: asyncio.subprocess.Process | None = None
        self.url = ""

    async def __aenter__(self) -> Self:
        self._process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.receiver",
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=1 << 24,  # a dump of thousands of arrivals is one line
        )
        assert self._process.stdout is not None
        port = int((await self._process.stdout.readline()).decode())
        self.url = f"http://127.0.0.1:{port}/hook"
        return self

    async def arrivals(self) -> dict[int, float]:
        """Every arrival since the last call: body id → wall-clock time, then forgets them."""
        assert self._process is not None
        assert self._process.stdin is not None
        assert self._process.stdout is not None
        self._process.stdin.write(b"dump\n")
        await self._process.stdin.drain()
        line = await self._process.stdout.readline()
        return {int(key): value for key, value in json.loads(line).items()}

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._process is not None:
            assert self._process.stdin is not None
            self._process.stdin.close()
            await self._process.wait()


async def insert_tasks(url: str, ids: range, per_transaction: int = 500) -> None:
    """Commit one INSERT of a `high` task per id, many to a transaction (a burst)."""
    connection = await asyncpg.connect(url)
    try:
        for start in range(ids.start, ids.stop, per_transaction):
            chunk = range(start, min(start + per_transaction, ids.stop))
            async with connection.transaction():
                await connection.executemany(INSERT_TASK, [(i, f"task {i}") for i in chunk])
    finally:
        await connection.close()


async def wait_until_handled(url: str) -> None:
    """Until `flow_events` has no pending event."""
    connection = await asyncpg.connect(url)
    try:
        while True:
            if not await connection.fetchval(
                "SELECT count(*) FROM flow_events WHERE handled_at IS NULL"
            ):
                return
            await asyncio.sleep(0.2)
    finally:
        await connection.close()


def status_kib(pid: int, field: str) -> int:
    """VmRSS, VmHWM, … of a process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(field)


def percentile(values: Sequence[float], fraction: float) -> float:
    """The `fraction` quantile (0.5, 0.99) of `values`, interpolated."""
    if len(values) == 1:
        return values[0]
    cuts = statistics.quantiles(values, n=1000, method="inclusive")
    return cuts[round(fraction * 1000) - 1]
