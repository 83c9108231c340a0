"""A throwaway local PostgreSQL cluster, for `flowd demo` and the test session.

Usage::

    cluster = TemporaryCluster(tmp_path_factory.mktemp("pg"))
    cluster.start()                     # initdb + pg_ctl start; about 1-3 s
    dsn = cluster.create_database("flowd_test")
    ...
    cluster.stop()                      # immediate shutdown, directory removed

The server listens on 127.0.0.1 at a free port with ``trust`` authentication, runs with
``wal_level=logical`` and durability switched off (fsync, full_page_writes, synchronous_commit).
When the current process is root the binaries are run as the unprivileged ``postgres`` system
user, because ``initdb``/``postgres`` refuse to run as root.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

__all__ = ["TemporaryCluster", "find_pg_bin"]

_PG_USER = "postgres"
_SUPERUSER = "postgres"
_LOG_TAIL_LINES = 40
_START_ATTEMPTS = 3
# sun_path is 108 bytes on Linux; leave room for "/.s.PGSQL.65535" and the NUL.
_MAX_SOCKET_DIR_LEN = 90

_SERVER_SETTINGS: dict[str, str] = {
    "listen_addresses": "'127.0.0.1'",
    "wal_level": "logical",
    "max_replication_slots": "10",
    "max_wal_senders": "10",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
    "shared_buffers": "128MB",
}


def _has_server_binaries(directory: Path) -> bool:
    return (directory / "initdb").is_file() and (directory / "pg_ctl").is_file()


def _version_key(path: Path) -> tuple[int, ...]:
    # /usr/lib/postgresql/<version>/bin -> numeric version parts ("15" -> (15,), "9.6" -> (9, 6)).
    return tuple(int(part) for part in re.findall(r"\d+", path.parent.name))


def find_pg_bin() -> Path:
    """Return the directory holding ``initdb`` and ``pg_ctl``.

    Looks at, in order: ``$FLOWD_TEST_PG_BIN``; ``pg_config --bindir``; the newest
    ``/usr/lib/postgresql/*/bin``; the directory of ``pg_ctl`` on ``$PATH``.
    """
    override = os.environ.get("FLOWD_TEST_PG_BIN")
    if override:
        path = Path(override)
        if not _has_server_binaries(path):
            raise RuntimeError(
                f"FLOWD_TEST_PG_BIN={override!r} does not contain the PostgreSQL server binaries "
                "initdb and pg_ctl"
            )
        return path

    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            result = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, check=True, timeout=10
            )
            path = Path(result.stdout.strip())
            if result.stdout.strip() and _has_server_binaries(path):
                return path

    candidates = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if _has_server_binaries(p)]
    if candidates:
        return max(candidates, key=_version_key)

    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl is not None:
        path = Path(pg_ctl).resolve().parent
        if _has_server_binaries(path):
            return path

    raise RuntimeError(
        "PostgreSQL server binaries (initdb, pg_ctl) not found: set FLOWD_TEST_PG_BIN to their "
        "directory, put pg_config or pg_ctl on PATH, or install the PostgreSQL server "
        "(e.g. apt-get install postgresql)"
    )


def _find_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _traversable_by_others(path: Path) -> bool:
    """Whether every directory from ``/`` down to ``path`` has the other-execute bit."""
    resolved = path.resolve()
    return all(p.stat().st_mode & 0o001 for p in [resolved, *resolved.parents])


def _clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    # Drop libpq/PG* variables of the caller so they cannot redirect or alter our connections.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_MESSAGES"] = "C"
    if extra:
        env.update(extra)
    return env


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<could not read {path}: {exc}>"
    return "\n".join(text.splitlines()[-lines:])


class TemporaryCluster:
    """A throwaway PostgreSQL cluster under a temporary directory, run as an unprivileged user
    when we are root."""

    def __init__(self, base_dir: Path | None = None) -> None:
        """``base_dir`` is where the cluster's own ``mkdtemp`` directory is created.

        When running as root and ``base_dir`` is not traversable by other users (pytest's
        ``tmp_path`` directories are 0700), the cluster directory is created under the system
        temp directory (``/tmp``) instead, so that the ``postgres`` user can reach it.
        """
        self.base_dir = Path(base_dir) if base_dir is not None else Path(tempfile.gettempdir())
        self.bin_dir: Path | None = None
        self.root: Path | None = None
        self._socket_dir: Path | None = None
        self._extra_socket_dir = False
        self._port: int | None = None
        self._run_as: tuple[int, int] | None = None
        self._running = False

    # ------------------------------------------------------------------ properties

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("TemporaryCluster has not been started")
        return self._port

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def data_dir(self) -> Path:
        return self._require_root() / "data"

    @property
    def log_path(self) -> Path:
        return self._require_root() / "server.log"

    @property
    def socket_dir(self) -> Path:
        if self._socket_dir is None:
            raise RuntimeError("TemporaryCluster has not been started")
        return self._socket_dir

    @property
    def running(self) -> bool:
        return self._running

    @property
    def dsn(self) -> str:
        """``postgresql://postgres@127.0.0.1:<port>/postgres``"""
        return self.dsn_for("postgres")

    def dsn_for(self, database: str) -> str:
        return f"postgresql://{_SUPERUSER}@{self.host}:{self.port}/{quote(database, safe='')}"

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """initdb + pg_ctl start; returns once the server accepts TCP connections."""
        if self._running:
            raise RuntimeError("TemporaryCluster is already running")
        self.bin_dir = find_pg_bin()
        self._run_as = self._unprivileged_ids() if os.geteuid() == 0 else None
        self._make_dirs()
        try:
            self._initdb()
            self._write_config()
            self._start_server()
            self.psql("SELECT 1")
        except BaseException:
            self.stop()
            raise
        atexit.register(self.stop)

    def stop(self) -> None:
        """Immediate shutdown (``pg_ctl stop -m immediate``), then remove the directory.

        Safe to call more than once and after a failed ``start()``.
        """
        atexit.unregister(self.stop)
        if self.root is not None and (self.data_dir / "postmaster.pid").exists():
            assert self.bin_dir is not None
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                self._pg_ctl("stop", "-m", "immediate", "-t", "30", timeout=60)
        self._running = False
        if self._extra_socket_dir and self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
        self.root = None
        self._socket_dir = None
        self._extra_socket_dir = False

    def restart(self) -> None:
        """Fast shutdown and start again on the same port: every connection is cut."""
        assert self.bin_dir is not None
        result = self._pg_ctl("restart", "-l", str(self.log_path), "-m", "fast", "-t", "60")
        if result.returncode != 0:
            raise RuntimeError(f"pg_ctl restart failed: {(result.stdout + result.stderr).strip()}")

    def pause(self) -> None:
        """Fast shutdown, keeping the data: the server is down until `resume()`."""
        assert self.bin_dir is not None
        result = self._pg_ctl("stop", "-m", "fast", "-t", "60")
        if result.returncode != 0:
            raise RuntimeError(f"pg_ctl stop failed: {(result.stdout + result.stderr).strip()}")

    def resume(self) -> None:
        """Start a paused server again, on the same port."""
        assert self.bin_dir is not None
        result = self._pg_ctl("start", "-l", str(self.log_path), "-t", "60")
        if result.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {(result.stdout + result.stderr).strip()}")

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ SQL helpers

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run ``sql`` (one or more statements, as a script) with ``psql``; return its output.

        Output is unaligned and tuples-only (``-At``): ``psql("select 1")`` returns ``"1\\n"``.
        Statements run one by one in autocommit mode, so ``CREATE DATABASE`` works.
        Raises RuntimeError with psql's stderr on any error (``ON_ERROR_STOP=1``).
        """
        cmd = [
            self._psql_path(),
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            self.dsn_for(database),
            "-f",
            "-",
        ]
        result = subprocess.run(
            cmd,
            input=sql,
            capture_output=True,
            text=True,
            env=_clean_env({"PGCONNECT_TIMEOUT": "10"}),
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"psql failed (exit {result.returncode}) on database {database!r}:\n"
                f"{result.stderr.strip()}\nSQL:\n{sql}"
            )
        return result.stdout

    def create_database(self, name: str, template: str | None = None) -> str:
        """``CREATE DATABASE name [TEMPLATE template]``; returns the new database's DSN."""
        sql = f"CREATE DATABASE {_quote_ident(name)}"
        if template is not None:
            sql += f" TEMPLATE {_quote_ident(template)}"
        self.psql(sql)
        return self.dsn_for(name)

    def drop_database(self, name: str) -> None:
        """``DROP DATABASE IF EXISTS name WITH (FORCE)`` (terminates its connections)."""
        self.psql(f"DROP DATABASE IF EXISTS {_quote_ident(name)} WITH (FORCE)")

    # ------------------------------------------------------------------ internals

    def _require_root(self) -> Path:
        if self.root is None:
            raise RuntimeError("TemporaryCluster has not been started")
        return self.root

    def _psql_path(self) -> str:
        if self.bin_dir is not None and (self.bin_dir / "psql").is_file():
            return str(self.bin_dir / "psql")
        found = shutil.which("psql")
        if found is None:
            raise RuntimeError("psql client not found (neither in the server bin dir nor on PATH)")
        return found

    @staticmethod
    def _unprivileged_ids() -> tuple[int, int]:
        try:
            entry = pwd.getpwnam(_PG_USER)
        except KeyError:
            try:
                subprocess.run(
                    ["useradd", "--system", "--no-create-home", _PG_USER],
                    capture_output=True,
                    text=True,
                    check=True,
                    timeout=30,
                )
                entry = pwd.getpwnam(_PG_USER)
            except (OSError, subprocess.SubprocessError, KeyError) as exc:
                raise RuntimeError(
                    f"running as root, but there is no {_PG_USER!r} system user to run "
                    f"PostgreSQL as, and creating it failed ({exc}); create it with "
                    f"`useradd --system --no-create-home {_PG_USER}`"
                ) from exc
        return entry.pw_uid, entry.pw_gid

    def _make_dirs(self) -> None:
        base = self.base_dir
        if self._run_as is not None and not _traversable_by_others(base):
            base = Path(tempfile.gettempdir())
            if not _traversable_by_others(base):
                raise RuntimeError(
                    f"neither {self.base_dir} nor {base} is traversable by the {_PG_USER!r} user"
                )
        base.mkdir(parents=True, exist_ok=True)
        self.root = Path(tempfile.mkdtemp(prefix="flowd-pg-", dir=base))
        self.root.chmod(0o755)
        if len(str(self.root)) <= _MAX_SOCKET_DIR_LEN:
            self._socket_dir = self.root
        else:
            self._socket_dir = Path(tempfile.mkdtemp(prefix="flowd-pgs-"))
            self._socket_dir.chmod(0o755)
            self._extra_socket_dir = True
        if self._run_as is not None:
            uid, gid = self._run_as
            for directory in {self.root, self._socket_dir}:
                os.chown(directory, uid, gid)

    def _run_server_cmd(
        self, cmd: Sequence[str], timeout: float
    ) -> subprocess.CompletedProcess[str]:
        kwargs: dict[str, Any] = {}
        if self._run_as is not None:
            uid, gid = self._run_as
            kwargs = {"user": uid, "group": gid, "extra_groups": []}
        return subprocess.run(
            list(cmd),
            capture_output=True,
            text=True,
            cwd=self._require_root(),
            env=_clean_env({"HOME": str(self._require_root())}),
            timeout=timeout,
            check=False,
            **kwargs,
        )

    def _pg_ctl(
        self, action: str, *options: str, timeout: float = 90
    ) -> subprocess.CompletedProcess[str]:
        """`pg_ctl -D <data> -w <options> <action>` (waits for the action to complete)."""
        assert self.bin_dir is not None
        command = [str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-w", *options, action]
        return self._run_server_cmd(command, timeout=timeout)

    def _initdb(self) -> None:
        assert self.bin_dir is not None
        base_cmd = [
            str(self.bin_dir / "initdb"),
            "-D",
            str(self.data_dir),
            "-U",
            _SUPERUSER,
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-sync",
        ]
        result = self._run_server_cmd([*base_cmd, "--locale=C.UTF-8"], timeout=120)
        if result.returncode != 0:
            # Most likely the C.UTF-8 locale is missing on this system.
            shutil.rmtree(self.data_dir, ignore_errors=True)
            first_output = (result.stdout + result.stderr).strip()
            result = self._run_server_cmd([*base_cmd, "--no-locale"], timeout=120)
            if result.returncode != 0:
                raise RuntimeError(
                    f"initdb failed (exit {result.returncode}):\n"
                    f"{(result.stdout + result.stderr).strip()}\n"
                    f"(first attempt with --locale=C.UTF-8 said:\n{first_output})"
                )

    def _write_config(self) -> None:
        settings = dict(_SERVER_SETTINGS)
        settings["unix_socket_directories"] = "'" + str(self.socket_dir).replace("'", "''") + "'"
        lines = ["", "# --- flowd test cluster ---"]
        lines += [f"{key} = {value}" for key, value in settings.items()]
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\n".join(lines) + "\n")

    def _set_port(self, port: int) -> None:
        # Appended each time: the last `port` line in postgresql.conf wins.
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write(f"port = {port}\n")
        self._port = port

    def _start_server(self) -> None:
        assert self.bin_dir is not None
        for attempt in range(1, _START_ATTEMPTS + 1):
            self._set_port(_find_free_port())
            result = self._pg_ctl("start", "-l", str(self.log_path), "-t", "60")
            if result.returncode == 0:
                self._running = True
                return
            log_tail = _tail(self.log_path)
            port_taken = "could not bind" in log_tail or "already in use" in log_tail
            if port_taken and attempt < _START_ATTEMPTS:
                continue  # someone grabbed the port between our probe and the bind: retry
            raise RuntimeError(
                f"pg_ctl start failed (exit {result.returncode}) on port {self._port}:\n"
                f"{(result.stdout + result.stderr).strip()}\n"
                f"--- tail of {self.log_path} ---\n{log_tail}"
            )
