"""What the HTTP actions share (API_CALL, FUNCTION_CALL): config, request, client, send.

Each renders its config into one `HttpRequest`, sent with the shared aiohttp session
(`open_session`) by `deliver`. The answer decides: 2xx succeeds; 408, 429, 5xx, timeouts and
connection errors are transient (retried); any other status is permanent.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.request import getproxies

import aiohttp
from pydantic import Field

from flowd import __version__
from flowd.act.addresses import AddressPolicy, PolicyResolver, refusing_middleware
from flowd.act.base import ActionConfig, Done, Step
from flowd.errors import PermanentActionError, TransientActionError, describe
from flowd.models import Action, ChangeEvent, Flow

_ERROR_BODY_CHARS = 200
_EXCERPT_BYTES = _ERROR_BODY_CHARS * 4  # enough for 200 characters of UTF-8
# A rest of the body up to this size is read and dropped, so the connection is reused;
# a longer one closes the connection instead.
_DRAIN_BYTES = 1 << 20

JsonBody = str | dict[str, Any] | list[Any] | None


class HttpConfig(ActionConfig):
    """What every HTTP action's config has."""

    headers: dict[str, str] = Field(default_factory=dict)
    timeout_s: float | None = Field(None, gt=0, le=600)
    max_attempts: int | None = Field(None, ge=1, le=100)


@dataclass(frozen=True, slots=True)
class HttpRequest:
    method: str
    url: str
    headers: dict[str, str]
    content: bytes | None


def webhook_payload(event: ChangeEvent, flow: Flow) -> dict[str, Any]:
    """The body Supabase database webhooks send, plus the flow."""
    return {
        "type": event.type,
        "schema": event.schema_name,
        "table": event.table,
        "record": event.record,
        "old_record": event.old_record,
        "flow": {"id": flow.flow_id, "name": flow.name},
    }


def _encode_body(body: Any, headers: dict[str, str]) -> bytes | None:
    if body is None:
        return None
    has_type = any(name.lower() == "content-type" for name in headers)
    if isinstance(body, str):
        if not has_type:
            try:
                json.loads(body)
                headers["Content-Type"] = "application/json"
            except ValueError:
                headers["Content-Type"] = "text/plain; charset=utf-8"
        return body.encode()
    if not has_type:
        headers["Content-Type"] = "application/json"
    return json.dumps(body, default=str).encode()


def build_request(
    method: str,
    url: str,
    headers: dict[str, str],
    body: JsonBody,
    event: ChangeEvent,
    flow: Flow,
    fixed_headers: dict[str, str] | None = None,
) -> HttpRequest:
    """The request from rendered headers and body (the webhook payload when none).

    `fixed_headers` are added after rendering, as they are: never read as templates.
    """
    headers = dict(headers) | (fixed_headers or {})
    payload = webhook_payload(event, flow) if body is None else body
    return HttpRequest(method, url, headers, _encode_body(payload, headers))


def idempotency_key(event: ChangeEvent, flow: Flow, action: Action, index: int) -> str:
    """The same for every run of this action for this event (receivers drop repeats)."""
    action_ref = action.action_id if action.action_id is not None else f"#{index}"
    identity = f"{event.key}:{flow.flow_id}:{action_ref}"
    return hashlib.sha256(identity.encode()).hexdigest()[:32]


async def deliver(request: HttpRequest, config: HttpConfig, step: Step) -> Done:
    """One attempt of an HTTP action: `request` sent with its `Idempotency-Key` (unless
    the flow set one) and its timeout (the config's, else FLOWD_ACTION_TIMEOUT_S)."""
    if not any(name.lower() == "idempotency-key" for name in request.headers):
        key = idempotency_key(step.event, step.flow, step.prepared.action, step.index)
        request.headers["Idempotency-Key"] = key
    tools = step.tools
    timeout = config.timeout_s or tools.settings.action_timeout_s
    return Done(http_status=await send(tools.http, request, timeout))


def retry_after_seconds(value: str | None) -> float | None:
    """`Retry-After` as seconds: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _decoded(body: bytes, charset: str) -> str:
    try:
        return body.decode(charset, errors="replace")
    except LookupError:  # a charset Python does not know
        return body.decode("utf-8", errors="replace")


@asynccontextmanager
async def open_session(policy: AddressPolicy | None = None) -> AsyncIterator[aiohttp.ClientSession]:
    """The HTTP client every action shares: keep-alive connections, no redirects followed
    (see `send`), no cookies carried from one flow's target to another, proxies from the
    environment (HTTPS_PROXY, NO_PROXY), and no connection to a refused address
    (`flowd.act.addresses`; the default policy when none is given)."""
    policy = policy if policy is not None else AddressPolicy()
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(
            limit=0,  # FLOWD_CONCURRENCY bounds requests in flight
            resolver=PolicyResolver(policy),
        ),
        cookie_jar=aiohttp.DummyCookieJar(),
        headers={"User-Agent": f"flowd/{__version__}"},
        middlewares=(refusing_middleware(policy),),
        # Only when a proxy is set: aiohttp then looks it up in a thread for every request.
        trust_env=bool(getproxies()),
    ) as session:
        yield session


async def _excerpt_and_drain(response: aiohttp.ClientResponse) -> bytes:
    """The body's first bytes, for an error's excerpt. The rest is read and dropped while
    that is cheap (the connection then goes back to the pool), else the connection is closed:
    a huge answer is never held in memory."""
    kept = bytearray()
    length = response.content_length
    budget = _DRAIN_BYTES if length is None or length <= _DRAIN_BYTES else _EXCERPT_BYTES
    seen = 0
    while seen < budget:
        chunk = await response.content.readany()
        if not chunk:
            return bytes(kept)
        kept += chunk[: max(0, _EXCERPT_BYTES - len(kept))]
        seen += len(chunk)
    response.close()
    return bytes(kept)


async def send(session: aiohttp.ClientSession, request: HttpRequest, timeout_s: float) -> int:
    """Send once; return the 2xx status or raise a Transient/PermanentActionError.

    Redirects are not followed: a 3xx is a permanent failure, like any status that is
    neither 2xx nor retried."""
    try:
        async with session.request(
            request.method,
            request.url,
            headers=request.headers,
            data=request.content,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
            allow_redirects=False,
        ) as response:
            body = await _excerpt_and_drain(response)
            status, retry_after = response.status, response.headers.get("Retry-After")
            charset = response.charset or "utf-8"
    except TimeoutError:
        raise TransientActionError(f"timed out after {timeout_s:g} s") from None
    except aiohttp.InvalidURL as exc:
        raise PermanentActionError(f"bad url: {exc}") from None
    except aiohttp.ClientError as exc:
        raise TransientActionError(f"connection failed: {describe(exc)}") from None
    if 200 <= status < 300:
        return status
    excerpt = _decoded(body, charset)[:_ERROR_BODY_CHARS].strip()
    message = f"HTTP {status}" + (f": {excerpt}" if excerpt else "")
    if status in (408, 429) or status >= 500:
        raise TransientActionError(
            message, http_status=status, retry_after_s=retry_after_seconds(retry_after)
        )
    raise PermanentActionError(message, http_status=status)
