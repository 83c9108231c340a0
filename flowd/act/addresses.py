"""Where HTTP actions may connect: never to a link-local or cloud metadata address, unless
`FLOWD_HTTP_ALLOW_PRIVATE` allows it.

Checked before any connection is made, twice: the URL's host (an IP literal, or a
metadata host name) by the session's middleware, on every request; and every address a
name resolves to, by the connector's resolver, so a name that points at 169.254.169.254
is refused too. Loopback and private ranges (10/8, 172.16/12, 192.168/16, fc00::/7)
stay allowed: flowd commonly calls services on its own network.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from urllib.parse import urlsplit

from aiohttp import ClientHandlerType, ClientMiddlewareType, ClientRequest, ClientResponse
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from flowd.config import Settings
from flowd.errors import PermanentActionError

IPNetwork = IPv4Network | IPv6Network
IPAddress = IPv4Address | IPv6Address

SETTING = "FLOWD_HTTP_ALLOW_PRIVATE"
ALLOW_ALL = "all"
# Link-local (where every major cloud serves instance metadata and credentials) and the
# metadata addresses outside it. Sources: AWS EC2 IMDS (169.254.169.254, fd00:ec2::254),
# ECS task metadata (169.254.170.2), GCP, Azure and OCI (169.254.169.254), Alibaba Cloud
# (100.100.100.200).
REFUSED_NETWORKS: tuple[IPNetwork, ...] = (
    ip_network("169.254.0.0/16"),
    ip_network("fe80::/10"),
    ip_network("fd00:ec2::254/128"),
    ip_network("100.100.100.200/32"),
)
# Names the clouds document for the same service (GCP; AWS EC2's `instance-data`). Any
# other name is checked by what it resolves to.
REFUSED_NAMES = frozenset({"metadata.google.internal", "metadata", "instance-data"})
# IPv6 forms that carry an IPv4 address: NAT64's well-known prefix.
_NAT64 = ip_network("64:ff9b::/96")
_LEGACY_IPV4 = re.compile(r"(0[xX][0-9a-fA-F]+|[0-9]+)(\.(0[xX][0-9a-fA-F]+|[0-9]+)){0,3}")


def _as_address(host: str) -> IPAddress | None:
    """The address an IP-literal host means (IPv4 inside IPv6 unwrapped), else None.

    Legacy IPv4 forms (`2852039166`, `0xa9fea9fe`, `169.254.43518`) count: the system
    resolver reads them as addresses."""
    try:
        address = ip_address(host.strip("[]"))
    except ValueError:
        if not _LEGACY_IPV4.fullmatch(host):
            return None
        try:
            return IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    if isinstance(address, IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.sixtofour is not None:
            return address.sixtofour
        if address in _NAT64:
            return IPv4Address(int(address) & 0xFFFFFFFF)
        if address.scope_id:
            return IPv6Address(str(address).partition("%")[0])
    return address


@dataclass(frozen=True, slots=True)
class AddressPolicy:
    """Which hosts and addresses are refused; plain data, built from the setting."""

    refused: tuple[IPNetwork, ...] = REFUSED_NETWORKS
    refused_names: frozenset[str] = REFUSED_NAMES
    allowed: tuple[IPNetwork, ...] = ()
    allowed_names: frozenset[str] = field(default_factory=frozenset)
    allow_all: bool = False

    @classmethod
    def allowing(cls, items: Iterable[str]) -> AddressPolicy:
        """The default policy, less what the setting's items (networks, names, `all`) allow."""
        items = [item.strip().lower() for item in items if item.strip()]
        networks = tuple(ip_network(item, strict=False) for item in items if _is_network(item))
        names = frozenset(item.rstrip(".") for item in items if not _is_network(item))
        return cls(allowed=networks, allowed_names=names, allow_all=ALLOW_ALL in names)

    def address_reason(self, address: str, name: str | None = None) -> str | None:
        """Why connecting to this IP address is refused, or None when it is allowed."""
        parsed = _as_address(address)
        if self.allow_all or parsed is None:
            return None
        if any(parsed in network for network in self.allowed):
            return None
        if any(parsed in network for network in self.refused):
            of = f" ({name} resolves to it)" if name else ""
            return (
                f"refused address {address}{of}: link-local or cloud metadata;"
                f" allow it with {SETTING}"
            )
        return None

    def host_reason(self, host: str) -> str | None:
        """Why a URL's host is refused before resolving it (an IP literal or a metadata name)."""
        if self.allow_all:
            return None
        if _as_address(host) is not None:
            return self.address_reason(host.strip("[]"))
        name = host.lower().rstrip(".")
        if name in self.refused_names and name not in self.allowed_names:
            return f"refused host {name}: cloud metadata; allow it with {SETTING}"
        return None


def _is_network(item: str) -> bool:
    try:
        ip_network(item, strict=False)
    except ValueError:
        return False
    return True


def policy_of(settings: Settings) -> AddressPolicy:
    return AddressPolicy.allowing(settings.http_allowed)


def refused_url_reason(url: str, settings: Settings) -> str | None:
    """Why a literal URL's host is refused (for `flowd validate`); None when allowed, when
    the host comes from a template, or when the URL does not parse (checked elsewhere)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return None
    if not host or "{{" in parts.netloc or "{%" in parts.netloc:
        return None
    return policy_of(settings).host_reason(host)


class PolicyResolver(AbstractResolver):
    """Resolves with aiohttp's default resolver, then refuses a name if any of its
    addresses is refused: the connector never sees such an address."""

    def __init__(self, policy: AddressPolicy, resolver: AbstractResolver | None = None) -> None:
        self._policy = policy
        self._resolver = resolver if resolver is not None else DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._resolver.resolve(host, port, family)
        for result in results:
            if reason := self._policy.address_reason(result["host"], name=host):
                raise PermanentActionError(reason)
        return results

    async def close(self) -> None:
        await self._resolver.close()


def refusing_middleware(policy: AddressPolicy) -> ClientMiddlewareType:
    """A session middleware refusing a request whose URL host is refused, before it connects
    (the resolver never sees an IP literal, and behind a proxy no name is resolved here)."""

    async def middleware(request: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        if reason := policy.host_reason(request.url.host or ""):
            raise PermanentActionError(reason)
        return await handler(request)

    return middleware
