"""Secret sentinels: every flowd the tests start carries secrets that must never come out.

`arm` adds a template secret and a database password (the test cluster trusts local
logins, so any password works) to a flowd's environment; `assert_absent` checks text
that flowd produced (its output, /metrics and /readyz bodies, flow_executions) for the
secret values of an environment: the service key, the database password, every
`FLOWD_SECRET_*`. `SEEN` collects the values of the flowd processes of the current test.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit, urlunsplit

DB_PASSWORD = "sentinel-dbpw-5e1d77"
TEMPLATE_SECRET = "sentinel-template-3b9f02"
_MIN_LENGTH = 4  # flowd does not mask shorter values (flowd.secrets)
SEEN: set[str] = set()


def arm(env: Mapping[str, str]) -> dict[str, str]:
    armed = {"FLOWD_SECRET_SENTINEL": TEMPLATE_SECRET, **env}
    url = armed.get("DATABASE_URL", "")
    try:
        parts = urlsplit(url)
    except ValueError:  # a malformed URL, which a test hands over as it is
        parts = urlsplit("")
    if parts.hostname in ("127.0.0.1", "localhost") and parts.username and not parts.password:
        netloc = f"{parts.username}:{DB_PASSWORD}@{parts.netloc.rpartition('@')[2]}"
        armed["DATABASE_URL"] = urlunsplit(parts._replace(netloc=netloc))
    SEEN.update(secret_values(armed))
    return armed


def secret_values(env: Mapping[str, str]) -> set[str]:
    values = {v for k, v in env.items() if k.startswith("FLOWD_SECRET_")}
    values.add(env.get("SUPABASE_SERVICE_ROLE_KEY", ""))
    with contextlib.suppress(ValueError):
        values.add(urlsplit(env.get("DATABASE_URL", "")).password or "")
    return {v for v in values if len(v) >= _MIN_LENGTH}


def assert_absent(texts: Iterable[str], secrets: Iterable[str], where: str) -> None:
    text = "\n".join(texts)
    leaked = sorted(secret for secret in secrets if secret in text)
    assert not leaked, f"secret value(s) {leaked} leaked into {where}"
