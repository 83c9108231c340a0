"""The outbound address policy: which hosts and resolved addresses HTTP actions may reach."""

from __future__ import annotations

from ipaddress import ip_network

import pydantic
import pytest

from flowd.act.addresses import AddressPolicy, PolicyResolver, refused_url_reason
from flowd.config import Settings
from flowd.errors import PermanentActionError

REFUSED = [
    "169.254.169.254",
    "169.254.170.2",
    "169.254.0.1",
    "fe80::1",
    "fe80::1%eth0",
    "fd00:ec2::254",
    "100.100.100.200",
    "::ffff:169.254.169.254",
    "64:ff9b::a9fe:a9fe",
    "2002:a9fe:a9fe::1",
    "2852039166",
    "0xa9fea9fe",
    "169.254.43518",
]
ALLOWED = ["127.0.0.1", "::1", "10.0.0.1", "172.16.5.4", "192.168.1.1", "fc00::1", "8.8.8.8"]


def settings(allow: str = "") -> Settings:
    return Settings(FLOWD_HTTP_ALLOW_PRIVATE=allow)


@pytest.mark.parametrize("address", REFUSED)
def test_link_local_and_metadata_addresses_are_refused(address: str) -> None:
    """Each documented metadata address, and link-local ones, in every IPv6 wrapping."""
    reason = AddressPolicy().address_reason(address)
    assert reason is not None
    assert reason.endswith("allow it with FLOWD_HTTP_ALLOW_PRIVATE")


@pytest.mark.parametrize("address", ALLOWED)
def test_loopback_private_and_public_addresses_are_allowed(address: str) -> None:
    """flowd commonly calls services on its own network: those stay allowed."""
    assert AddressPolicy().address_reason(address) is None


@pytest.mark.parametrize(
    ("url", "refused"),
    [
        ("http://169.254.169.254/latest/meta-data/", True),
        ("https://[fd00:ec2::254]:443/", True),
        ("http://metadata.google.internal/computeMetadata/v1/", True),
        ("http://Metadata.Google.Internal./", True),
        ("http://metadata/", True),
        ("http://user:pw@169.254.169.254:80/", True),
        ("http://0251.0376.0251.0376/", True),
        ("http://127.0.0.1:8080/hook", False),
        ("https://hooks.slack.com/services/x", False),
        ("http://{{ secrets.HOST }}/x", False),  # the host is a template: checked when sent
        ("http://169.254.169.254{{ new.path }}", False),
        ("http://[::1/", False),  # does not parse: the action's own check says so
    ],
)
def test_refused_url_reason_reads_the_literal_host(url: str, refused: bool) -> None:
    """What `flowd validate` reports: literal hosts only, never resolving names."""
    assert (refused_url_reason(url, settings()) is not None) is refused


def test_the_setting_allows_networks_names_or_everything() -> None:
    """FLOWD_HTTP_ALLOW_PRIVATE: networks and addresses, metadata names, or `all`."""
    url = "http://169.254.169.254/"
    assert refused_url_reason(url, settings("169.254.169.254")) is None
    assert refused_url_reason(url, settings("10.0.0.0/8, 169.254.0.0/16")) is None
    assert refused_url_reason("http://169.254.170.2/", settings("169.254.169.254")) is not None
    assert refused_url_reason("http://metadata/", settings("metadata")) is None
    assert refused_url_reason("http://metadata.google.internal/", settings("metadata")) is not None
    assert refused_url_reason("http://[fd00:ec2::254]/", settings("ALL")) is None


@pytest.mark.parametrize("value", ["169.254.0.0/99", "not a host!", "10.0.0.0/8;rm"])
def test_a_bad_setting_is_refused(value: str) -> None:
    """A typo never silently allows or refuses something else."""
    with pytest.raises(pydantic.ValidationError, match="FLOWD_HTTP_ALLOW_PRIVATE"):
        settings(value)


async def test_the_resolver_checks_every_address_a_name_resolves_to() -> None:
    """`localhost` resolves to loopback: refused by a policy that refuses loopback (as a
    name resolving to 169.254.169.254 is by the default one), allowed by default."""
    refusing = PolicyResolver(
        AddressPolicy(refused=(ip_network("127.0.0.0/8"), ip_network("::1/128")))
    )
    with pytest.raises(PermanentActionError, match="localhost resolves to it"):
        await refusing.resolve("localhost", 80)
    resolved = await PolicyResolver(AddressPolicy()).resolve("localhost", 80)
    assert {result["host"] for result in resolved} <= {"127.0.0.1", "::1"}
