"""Unit tests need no PostgreSQL: a unit test asking for a server fails with where it belongs."""

from __future__ import annotations

import pytest

_NO_SERVER = (
    "tests/unit/ runs without PostgreSQL, in seconds: a test that needs the server belongs "
    "in tests/integration/ (or tests/acceptance/ when it runs `flowd`)"
)


@pytest.fixture(scope="session")
def server_url() -> str:
    pytest.fail(_NO_SERVER, pytrace=False)


@pytest.fixture(scope="module")
def own_cluster() -> None:
    pytest.fail(_NO_SERVER, pytrace=False)
