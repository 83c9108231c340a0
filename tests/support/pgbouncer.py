"""A PgBouncer in transaction mode in front of the test server, like Supabase's pooler on :6543."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit, urlunsplit

_UNPRIVILEGED = "postgres"  # pgbouncer, like postgres, refuses to run as root


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


class TransactionPooler:
    """Runs `pgbouncer` with pool_mode=transaction; `url_for(server_url)` routes through it."""

    def __init__(self, server_url: str, port: int | None = None) -> None:
        self._server = urlsplit(server_url)
        self._dir = Path(tempfile.mkdtemp(prefix="flowd-pgbouncer-"))
        self.port = port or _free_port()
        self._process: subprocess.Popen[bytes] | None = None

    def url_for(self, database_url: str) -> str:
        parts = urlsplit(database_url)
        return urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{self.port}"))

    def start(self) -> None:
        binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
        (self._dir / "users.txt").write_text(f'"{self._server.username}" ""\n')
        (self._dir / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"* = host={self._server.hostname} port={self._server.port}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\nunix_socket_dir =\n"
            f"auth_type = trust\nauth_file = {self._dir}/users.txt\n"
            "pool_mode = transaction\nmax_client_conn = 200\ndefault_pool_size = 20\n"
            "ignore_startup_parameters = extra_float_digits\n"
        )
        user = pwd.getpwnam(_UNPRIVILEGED) if os.geteuid() == 0 else None
        if user is not None:
            os.chown(self._dir, user.pw_uid, user.pw_gid)
            for path in self._dir.iterdir():
                os.chown(path, user.pw_uid, user.pw_gid)
        self._process = subprocess.Popen(
            [binary, str(self._dir / "pgbouncer.ini")],
            user=user.pw_uid if user else None,
            group=user.pw_gid if user else None,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("pgbouncer did not start listening within 10 s")

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)
            self._process = None
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
