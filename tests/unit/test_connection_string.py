"""The form of DATABASE_URL, checked once with the settings (flowd.config)."""

from __future__ import annotations

import pytest

from flowd.config import connection_string_problem

ACCEPTED = [
    "postgresql://u:p@db.example.supabase.co:5432/postgres",
    "postgres://u@127.0.0.1/db",
    "postgresql://u:p@[::1]:5432/db",
    "postgresql://u:p@h1:5432,h2:5433,[::1]/db",  # several hosts, as asyncpg takes them
    "postgresql://u@/db?host=/var/run/postgresql",  # a Unix socket
    "postgresql://u:p@h:/db",  # an empty port is the default one
    "postgresql://u:p%40ss@h:6543/db",
    "",  # unset: `require_database_url` says so where a database is needed
]
REFUSED = {
    "postgresql://u:p@h:99999/db": "a port is not a number from 1 to 65535",
    "postgresql://u:p@h:0/db": "a port is not a number from 1 to 65535",
    "postgresql://u:p@h1:5432,h2:port/db": "a port is not a number from 1 to 65535",
    "postgresql://u:p@h:５４３２/db": "a port is not a number from 1 to 65535",  # fullwidth digits
    "postgresql://u:p@h:²/db": "a port is not a number from 1 to 65535",
    "postgresql://u:p@[::1/db": "a host is not a host name, nor an IPv6 address in brackets",
    "postgresql://u:p@[::1]x/db": "a host is not a host name, nor an IPv6 address in brackets",
    "postgresql://u:p@h]/db": "a host is not a host name, nor an IPv6 address in brackets",
    "https://u:p@h/db": "it must start with postgresql://",
    "u:p@h:5432/db": "it must start with postgresql://",
}


@pytest.mark.parametrize("url", ACCEPTED)
def test_well_formed_urls_are_accepted(url: str) -> None:
    assert connection_string_problem(url) is None


@pytest.mark.parametrize(("url", "problem"), REFUSED.items())
def test_malformed_urls_say_what_is_wrong_without_the_password(url: str, problem: str) -> None:
    said = connection_string_problem(url)
    assert said is not None
    assert said.startswith(problem)
    assert ":p@" not in said


def test_a_stray_slash_in_the_password_is_not_quoted() -> None:
    """With an unescaped / the "host" urllib reads is user:password: nothing of it is said."""
    said = connection_string_problem("postgresql://u:se/cret@h/db")
    assert said == "a port is not a number from 1 to 65535"
