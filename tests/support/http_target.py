"""A real HTTP/1.1 server on 127.0.0.1 used as webhook / Edge Function target in tests.

It records every request it receives and answers with replies scripted per path::

    async with HttpTarget() as target:
        target.script("/hook", Reply(status=500), Reply(status=429, headers={"Retry-After": "1"}))
        ...  # first call to /hook gets 500, the second 429, later ones the default 200
        [req] = await target.wait_for_requests("/hook", 1)
        assert req.json() == {...}

Built on ``asyncio.start_server`` so it runs on the test's own event loop; no third-party server.
Requests are recorded as soon as they are read, before any scripted delay, so a request the
client gave up on (timeout) is still in ``requests``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from dataclasses import dataclass, field
from http import HTTPStatus
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

__all__ = ["HttpTarget", "ReceivedRequest", "Reply"]

_MAX_LINE = 64 * 1024
_MAX_HEADERS = 200
_DELAY_POLL_S = 0.02


@dataclass(frozen=True)
class ReceivedRequest:
    """One request as received. ``path`` excludes the query string, which is in ``query``."""

    method: str
    path: str
    headers: dict[str, str]  # names lower-cased; repeated headers joined with ", "
    body: bytes
    query: str = ""
    received_at: float = 0.0  # time.monotonic() when the request was complete

    def json(self) -> Any:
        return json.loads(self.body)

    def text(self) -> str:
        return self.body.decode("utf-8")


@dataclass(frozen=True)
class Reply:
    """A scripted answer. ``delay_s`` sleeps before answering (a "hang" is a delay larger than
    the client's timeout; if the client disconnects meanwhile the connection is dropped)."""

    status: int = 200
    body: bytes | str | dict[str, Any] | list[Any] = b'{"ok": true}'
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    # A large body without holding it: ``body`` sent ``repeat`` times, written as it goes;
    # ``chunked`` sends it with Transfer-Encoding: chunked (no Content-Length).
    repeat: int = 1
    chunked: bool = False

    def encode_body(self) -> tuple[bytes, str]:
        """The body bytes and the default Content-Type for them."""
        if isinstance(self.body, bytes):
            try:
                json.loads(self.body)
            except ValueError:
                return self.body, "application/octet-stream"
            return self.body, "application/json"
        if isinstance(self.body, str):
            return self.body.encode("utf-8"), "text/plain; charset=utf-8"
        return json.dumps(self.body).encode("utf-8"), "application/json"


class _ProtocolError(Exception):
    """The client sent something we cannot parse; the connection is closed."""


class HttpTarget:
    """Records every request; answers with the scripted replies for its path in order, then
    the default."""

    def __init__(
        self, default: Reply | None = None, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.default = default if default is not None else Reply()
        self.requests: list[ReceivedRequest] = []
        self._host = host
        self._port = port
        self._scripts: dict[str, deque[Reply]] = {}
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[Any]] = set()
        self._url: str | None = None
        self.connections_accepted = 0  # TCP connections seen since start (keep-alive checks)

    # ------------------------------------------------------------------ public API

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>`` (no trailing slash); only valid once started."""
        if self._url is None:
            raise RuntimeError("HttpTarget has not been started")
        return self._url

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or 80

    def url_for(self, path: str) -> str:
        return self.url + (path if path.startswith("/") else "/" + path)

    def script(self, path: str, *replies: Reply) -> None:
        """Queue replies for ``path`` (no query string); when exhausted the default is used."""
        self._scripts.setdefault(path, deque()).extend(replies)

    def requests_to(self, path: str) -> list[ReceivedRequest]:
        return [r for r in self.requests if r.path == path]

    def reset(self) -> None:
        """Forget recorded requests and pending scripted replies."""
        self.requests.clear()
        self._scripts.clear()
        self.connections_accepted = 0

    async def wait_for_requests(
        self, path: str, count: int, timeout_s: float = 10.0
    ) -> list[ReceivedRequest]:
        """Wait until at least ``count`` requests to ``path`` were received; return all of them.

        Raises TimeoutError (listing what was received) if they do not arrive in time.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            received = self.requests_to(path)
            if len(received) >= count:
                return received
            if loop.time() >= deadline:
                seen = [f"{r.method} {r.path}" for r in self.requests]
                raise TimeoutError(
                    f"expected {count} request(s) to {path!r} within {timeout_s}s, got "
                    f"{len(received)}; all requests received: {seen}"
                )
            await asyncio.sleep(0.01)

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("HttpTarget is already running")
        self._server = await asyncio.start_server(
            self._handle_connection, self._host, self._port, limit=_MAX_LINE
        )
        host, port = self._server.sockets[0].getsockname()[:2]
        self._url = f"http://{host}:{port}"

    async def stop(self) -> None:
        """Stop listening, cancel open connections, close their sockets and wait for all of it."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        # Loop: a connection accepted just before close() may register its handler late.
        while handlers := list(self._handlers):
            for task in handlers:
                task.cancel()
            await asyncio.gather(*handlers, return_exceptions=True)
            await asyncio.sleep(0)
        await server.wait_closed()
        self._url = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # ------------------------------------------------------------------ internals

    def _next_reply(self, path: str) -> Reply:
        queue = self._scripts.get(path)
        if queue:
            return queue.popleft()
        return self.default

    async def _handle_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self.connections_accepted += 1
        try:
            while await self._serve_one(reader, writer):
                pass
        except (asyncio.CancelledError, ConnectionError, _ProtocolError, asyncio.LimitOverrunError):
            # Cancelled by stop() or the client went away / sent garbage: drop the connection.
            # CancelledError is swallowed on purpose: this is the connection's top-level task,
            # and asyncio's start_server callback would otherwise log the cancellation.
            pass
        finally:
            self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await writer.wait_closed()

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Read one request and answer it; return whether to keep the connection open."""
        request_line = await self._read_line(reader)
        if request_line is None:
            return False  # clean EOF between requests
        if not request_line:
            return True  # tolerate stray CRLF between requests
        parts = request_line.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            raise _ProtocolError(f"bad request line {request_line!r}")
        method, target, version = parts

        headers: dict[str, str] = {}
        for _ in range(_MAX_HEADERS + 1):
            line = await self._read_line(reader)
            if line is None:
                return False
            if not line:
                break
            name, sep, value = line.partition(":")
            if not sep:
                raise _ProtocolError(f"bad header line {line!r}")
            key = name.strip().lower()
            value = value.strip()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        else:
            raise _ProtocolError("too many headers")

        body = await self._read_body(reader, headers)
        split = urlsplit(target)
        path = split.path or "/"
        request = ReceivedRequest(
            method=method.upper(),
            path=path,
            headers=headers,
            body=body,
            query=split.query,
            received_at=time.monotonic(),
        )
        self.requests.append(request)

        reply = self._next_reply(path)
        if reply.delay_s > 0 and not await self._delay(reply.delay_s, reader, writer):
            return False  # the client disconnected while we were "hanging"

        connection = headers.get("connection", "").lower()
        if version == "HTTP/1.0":
            keep_alive = "keep-alive" in connection
        else:
            keep_alive = "close" not in connection
        if reply.repeat > 1 or reply.chunked:
            await self._stream(writer, reply, keep_alive)
            return keep_alive
        writer.write(self._render(request, reply, keep_alive))
        await writer.drain()
        return keep_alive

    @staticmethod
    async def _stream(writer: asyncio.StreamWriter, reply: Reply, keep_alive: bool) -> None:
        """Write ``reply.body`` ``reply.repeat`` times, draining as it goes; a client that
        closes the connection ends it (ConnectionError, handled by the caller)."""
        body, content_type = reply.encode_body()
        lines = [f"HTTP/1.1 {reply.status} {HTTPStatus(reply.status).phrase}"]
        lines.append(f"Content-Type: {content_type}")
        if reply.chunked:
            lines.append("Transfer-Encoding: chunked")
            piece = f"{len(body):x}\r\n".encode() + body + b"\r\n"
        else:
            lines.append(f"Content-Length: {len(body) * reply.repeat}")
            piece = body
        lines.append(f"Connection: {'keep-alive' if keep_alive else 'close'}")
        lines += [f"{name}: {value}" for name, value in reply.headers.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        for _ in range(reply.repeat):
            if writer.is_closing():
                raise ConnectionResetError("the client closed the connection")
            writer.write(piece)
            await writer.drain()
        if reply.chunked:
            writer.write(b"0\r\n\r\n")
        await writer.drain()

    @staticmethod
    async def _read_line(reader: asyncio.StreamReader) -> str | None:
        """One CRLF-terminated line without the terminator, or None on EOF."""
        try:
            raw = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                raise _ProtocolError("connection closed mid-line") from exc
            return None
        return raw.rstrip(b"\r\n").decode("latin-1")

    async def _read_body(self, reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
        try:
            if "chunked" in headers.get("transfer-encoding", "").lower():
                chunks: list[bytes] = []
                while True:
                    size_line = await self._read_line(reader)
                    if size_line is None:
                        raise _ProtocolError("connection closed inside chunked body")
                    size = int(size_line.split(";", 1)[0].strip(), 16)
                    if size == 0:
                        while await self._read_line(reader):  # trailers up to the blank line
                            pass
                        return b"".join(chunks)
                    chunks.append(await reader.readexactly(size))
                    await reader.readexactly(2)  # CRLF after each chunk
            length = int(headers.get("content-length", "0") or "0")
            return await reader.readexactly(length) if length > 0 else b""
        except (ValueError, asyncio.IncompleteReadError) as exc:
            raise _ProtocolError(f"bad or truncated body: {exc}") from exc

    @staticmethod
    async def _delay(
        seconds: float, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Sleep ``seconds``; return False early if the client closed the connection."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while (remaining := deadline - loop.time()) > 0:
            if reader.at_eof() or writer.is_closing():
                return False
            await asyncio.sleep(min(_DELAY_POLL_S, remaining))
        return not (reader.at_eof() or writer.is_closing())

    @staticmethod
    def _render(request: ReceivedRequest, reply: Reply, keep_alive: bool) -> bytes:
        body, content_type = reply.encode_body()
        try:
            reason = HTTPStatus(reply.status).phrase
        except ValueError:
            reason = "Unknown"
        no_body = reply.status in (204, 304) or 100 <= reply.status < 200
        custom = {k.lower() for k in reply.headers}
        lines = [f"HTTP/1.1 {reply.status} {reason}"]
        if not no_body:
            if "content-type" not in custom:
                lines.append(f"Content-Type: {content_type}")
            if "content-length" not in custom:
                lines.append(f"Content-Length: {len(body)}")
        if "connection" not in custom:
            lines.append(f"Connection: {'keep-alive' if keep_alive else 'close'}")
        lines += [f"{name}: {value}" for name, value in reply.headers.items()]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if no_body or request.method == "HEAD":
            return head
        return head + body
