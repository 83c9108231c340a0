"""Health over HTTP: /livez, /readyz and /metrics, served from a thread beside the event loop.

A thread, so that /livez can say the event loop is stuck (its heartbeat stopped) rather
than merely not answer. Readiness is a set of named checks, each a callable returning
None when all is well or a reason; an event source registers its own. The checks run
on the event loop (in the heartbeat), the HTTP thread only reads their last result.

`python -m flowd.ops.health [/livez|/readyz]` asks a running flowd (FLOWD_HTTP_ADDR) and exits
0 or 1: the container's HEALTHCHECK, which has no curl in a slim image.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from flowd.errors import ConfigurationError, describe
from flowd.logs import get_logger
from flowd.ops import metrics

log = get_logger()

Check = Callable[[], str | None]
Probe = Callable[[], Awaitable[object]]
Address = tuple[str, int]
_BEAT_S = 0.5
_StartResponse = Callable[[str, list[tuple[str, str]]], Any]


class Health:
    """What /livez, /readyz and /metrics answer; `serving` runs the endpoint."""

    def __init__(
        self, *, stuck_after_s: float = 10.0, redact: Callable[[str], str] = lambda t: t
    ) -> None:
        self._stuck_after_s = stuck_after_s
        self._redact = redact
        self._checks: dict[str, Check] = {}
        self._probes: dict[str, tuple[Probe, float, float]] = {}
        self._probe_results: dict[str, str | None] = {}
        self._listeners: list[Callable[[list[str]], None]] = []
        self._beat = time.monotonic()
        self._failed: list[str] = ["starting"]
        self.draining = False
        self._tasks: list[asyncio.Task[None]] = []
        self._server: WSGIServer | None = None

    def add_check(self, name: str, check: Check) -> None:
        """Readiness fails with `name: reason` while `check()` returns a reason."""
        self._checks[name] = check

    def add_probe(
        self, name: str, probe: Probe, *, interval_s: float = 5.0, timeout_s: float = 3.0
    ) -> None:
        """An async check run every `interval_s`: ready only if it last returned in time."""
        self._probes[name] = (probe, interval_s, timeout_s)
        self._probe_results[name] = "not checked yet"
        self._checks[name] = lambda: self._probe_results[name]

    def on_change(self, listener: Callable[[list[str]], None]) -> None:
        """Call `listener(reasons)` whenever readiness changes ([] means ready)."""
        self._listeners.append(listener)

    def reasons(self) -> list[str]:
        """Why flowd is not ready now (checks evaluated on the event loop)."""
        return self._draining() + self._failing_checks()

    def readiness(self) -> list[str]:
        """The same, from the last heartbeat's checks (safe from any thread)."""
        stuck = self.stuck_for()
        if stuck is not None:
            return [f"event loop stuck for {stuck:.0f} s"]
        return self._draining() + self._failed

    def stuck_for(self) -> float | None:
        """Seconds since the event loop's last heartbeat, if that is too long."""
        silent = time.monotonic() - self._beat
        return silent if silent > self._stuck_after_s else None

    def _draining(self) -> list[str]:
        return ["draining: flowd is stopping"] if self.draining else []

    def _failing_checks(self) -> list[str]:
        reasons = []
        for name, check in self._checks.items():
            try:
                reason = check()
            except Exception as exc:  # a broken check must not break the endpoint
                reason = f"check failed: {describe(exc)}"
            if reason is not None:
                reasons.append(f"{name}: {reason}")
        return reasons

    async def _heartbeat(self) -> None:
        previous: list[str] | None = None
        while True:
            self._beat = time.monotonic()
            self._failed = self._failing_checks()
            reasons = self._draining() + self._failed
            if reasons != previous:
                previous = reasons
                for listener in self._listeners:
                    listener(reasons)
            await asyncio.sleep(_BEAT_S)

    async def _run_probe(
        self, name: str, probe: Probe, interval_s: float, timeout_s: float
    ) -> None:
        while True:
            try:
                await asyncio.wait_for(probe(), timeout_s)
                self._probe_results[name] = None
            except TimeoutError:
                self._probe_results[name] = f"unreachable (no answer within {timeout_s:g} s)"
            except Exception as exc:
                self._probe_results[name] = f"unreachable ({describe(exc)})"
            await asyncio.sleep(interval_s)

    async def start(self, address: Address | None) -> Address | None:
        """Run heartbeat and probes, and serve HTTP at `address` (None: no endpoint).

        Returns the address bound (port 0 picks a free one).
        """
        self._tasks = [asyncio.create_task(self._heartbeat(), name="health")]
        self._tasks += [
            asyncio.create_task(self._run_probe(name, *spec), name=f"probe-{name}")
            for name, spec in self._probes.items()
        ]
        if address is None:
            return None
        self._server = _listen(address, self._app)
        threading.Thread(target=self._server.serve_forever, name="http", daemon=True).start()
        host, port = self._server.server_address[:2]
        bound = (host if isinstance(host, str) else bytes(host).decode(), int(port))
        log.info("http.listening", address=f"{bound[0]}:{bound[1]}")
        return bound

    async def stop(self) -> None:
        if self._server is not None:
            await asyncio.to_thread(self._server.shutdown)
            self._server.server_close()
            self._server = None
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _app(self, environ: dict[str, Any], start_response: _StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            return _respond(start_response, 405, "text/plain", b"method not allowed\n")
        if path == "/livez":
            stuck = self.stuck_for()
            if stuck is None:
                return _respond(start_response, 200, "text/plain", b"ok\n")
            text = f"event loop stuck for {stuck:.0f} s\n"
            return _respond(start_response, 503, "text/plain", text.encode())
        if path == "/readyz":
            reasons = [self._redact(reason) for reason in self.readiness()]
            body = json.dumps({"ready": not reasons, "reasons": reasons}) + "\n"
            code = 503 if reasons else 200
            return _respond(start_response, code, "application/json", body.encode())
        if path == "/metrics":
            data, content_type = metrics.exposition()
            return _respond(start_response, 200, content_type, self._redact(data.decode()).encode())
        return _respond(start_response, 404, "text/plain", b"not found\n")


def _respond(start_response: _StartResponse, code: int, kind: str, body: bytes) -> list[bytes]:
    phrases = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}
    start_response(
        f"{code} {phrases[code]}",
        [("Content-Type", kind), ("Content-Length", str(len(body))), ("Cache-Control", "no-store")],
    )
    return [body]


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Requests are not logged: probes every few seconds would drown the log."""


def _listen(address: Address, app: Callable[..., Iterable[bytes]]) -> WSGIServer:
    host, port = address
    server_class = _Server6 if ":" in host else _Server
    try:
        return make_server(host, port, app, server_class=server_class, handler_class=_QuietHandler)
    except OSError as exc:
        raise ConfigurationError(
            f"FLOWD_HTTP_ADDR {host}:{port}: cannot listen there ({exc.strerror or exc}); "
            "choose a free address, or off"
        ) from None


def probe_url(address: Address, path: str) -> str:
    """The URL a local probe uses: a wildcard listen address is reached on loopback."""
    host, port = address
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"http://[{host}]:{port}{path}" if ":" in host else f"http://{host}:{port}{path}"


def main(argv: list[str]) -> int:
    """Exit 0 if the running flowd answers `path` (default /livez) with 200, else 1."""
    from flowd.config import load_settings  # only this entry point reads settings

    path = argv[0] if argv else "/livez"
    try:
        address = load_settings().http_address
    except ConfigurationError as exc:
        print(f"flowd health: {exc}", file=sys.stderr)
        return 1
    if address is None:
        print("flowd health: FLOWD_HTTP_ADDR is off", file=sys.stderr)
        return 1
    try:
        with urllib.request.urlopen(probe_url(address, path), timeout=5) as response:
            print(response.read().decode().strip())
            return 0
    except urllib.error.HTTPError as exc:
        print(exc.read().decode().strip(), file=sys.stderr)
    except OSError as exc:
        print(f"flowd health: {exc}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
