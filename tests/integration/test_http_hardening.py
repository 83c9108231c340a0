"""HTTP actions against hostile targets, one request each: huge answers, metadata addresses,
redirects (flowd end to end against them: tests/acceptance/).

Only loopback is ever contacted. The metadata-address tests route every request through a
loopback "proxy" (HTTP_PROXY): had the refusal not happened before connecting, the
request would have reached that proxy, never the address itself.
"""

from __future__ import annotations

import time
from dataclasses import replace
from ipaddress import ip_network

import pytest

from flowd.act import http
from flowd.act.addresses import AddressPolicy
from flowd.errors import PermanentActionError, TransientActionError
from tests.support.http_target import HttpTarget, Reply

MIB = 1 << 20
LOOPBACK_REFUSED = AddressPolicy(refused=(ip_network("127.0.0.0/8"), ip_network("::1/128")))
METADATA_URLS = [
    "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
    "http://169.254.170.2/v2/credentials",
    "http://[fd00:ec2::254]/latest/meta-data/",
    "http://[::ffff:169.254.169.254]/latest/meta-data/",
    "http://[fe80::1]/",
    "http://100.100.100.200/latest/meta-data/",
    "http://metadata.google.internal/computeMetadata/v1/",
    "http://METADATA.google.internal./computeMetadata/v1/",
    "http://metadata/computeMetadata/v1/",
]


def get(url: str) -> http.HttpRequest:
    return http.HttpRequest("GET", url, {}, None)


@pytest.mark.parametrize("url", METADATA_URLS)
async def test_metadata_addresses_are_refused_before_connecting(
    proxy: HttpTarget, url: str
) -> None:
    """Link-local and cloud metadata hosts fail at once, naming the setting; nothing is sent."""
    async with http.open_session() as session:
        with pytest.raises(PermanentActionError, match="allow it with FLOWD_HTTP_ALLOW_PRIVATE"):
            await http.send(session, get(url), 2)
    assert proxy.connections_accepted == 0


async def test_the_setting_lets_a_metadata_address_through(proxy: HttpTarget) -> None:
    """FLOWD_HTTP_ALLOW_PRIVATE=169.254.169.254 allows that address (here, to the proxy)."""
    async with http.open_session(AddressPolicy.allowing(["169.254.169.254"])) as session:
        assert await http.send(session, get(METADATA_URLS[0]), 2) == 200
        with pytest.raises(PermanentActionError):
            await http.send(session, get("http://169.254.170.2/"), 2)
    [request] = proxy.requests
    assert request.path == "/latest/meta-data/iam/security-credentials/"


async def test_a_name_is_checked_by_the_addresses_it_resolves_to(http_target: HttpTarget) -> None:
    """Post-resolution: with loopback refused (a test policy), `localhost` fails before any
    connection; the default policy allows loopback."""
    name_url = f"http://localhost:{http_target.port}/hook"
    async with http.open_session(LOOPBACK_REFUSED) as session:
        with pytest.raises(PermanentActionError, match="localhost resolves to it"):
            await http.send(session, get(name_url), 2)
        with pytest.raises(PermanentActionError, match=r"refused address 127\.0\.0\.1"):
            await http.send(session, get(http_target.url_for("/hook")), 2)
    assert http_target.connections_accepted == 0
    async with http.open_session() as session:
        assert await http.send(session, get(name_url), 2) == 200
    assert len(http_target.requests_to("/hook")) == 1


async def test_a_redirect_is_a_permanent_failure_and_not_followed(
    http_target: HttpTarget,
) -> None:
    """A 302 to the metadata address is not followed: the action fails with HTTP 302."""
    http_target.script("/hook", Reply(302, "", headers={"Location": METADATA_URLS[0]}))
    async with http.open_session() as session:
        with pytest.raises(PermanentActionError, match="HTTP 302"):
            await http.send(session, get(http_target.url_for("/hook")), 2)
    assert [r.path for r in http_target.requests] == ["/hook"]


async def test_a_small_rest_of_body_is_drained_and_the_connection_reused(
    http_target: HttpTarget,
) -> None:
    """Bodies up to 1 MiB are read to the end: the next request reuses the connection."""
    http_target.script(
        "/hook", Reply(200, b"x" * 64 * 1024, repeat=8), Reply(500, b"y" * 1024, repeat=200)
    )
    async with http.open_session() as session:
        assert await http.send(session, get(http_target.url_for("/hook")), 5) == 200
        with pytest.raises(TransientActionError) as failed:
            await http.send(session, get(http_target.url_for("/hook")), 5)
        assert await http.send(session, get(http_target.url_for("/hook")), 5) == 200
    assert str(failed.value) == "HTTP 500: " + "y" * 200
    assert http_target.connections_accepted == 1


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_a_huge_body_is_not_read_and_its_connection_is_closed(
    http_target: HttpTarget, chunked: bool
) -> None:
    """A 1 GiB answer: success at once (and an excerpt for an error); the connection is not
    reused, since the rest of the body was never read."""
    huge = Reply(body=b"z" * MIB, repeat=1024, chunked=chunked)
    http_target.script("/hook", replace(huge, status=200), replace(huge, status=503))
    started = time.monotonic()
    async with http.open_session() as session:
        assert await http.send(session, get(http_target.url_for("/hook")), 20) == 200
        with pytest.raises(TransientActionError, match=r"^HTTP 503: z{200}$"):
            await http.send(session, get(http_target.url_for("/hook")), 20)
    assert time.monotonic() - started < 10
    assert http_target.connections_accepted == 2
