"""Secrets for templates, and the redaction that keeps their values out of logs and the database.

A secret NAME is the environment variable `FLOWD_SECRET_NAME`, or the file `NAME` or
`FLOWD_SECRET_NAME` in `$CREDENTIALS_DIRECTORY` (systemd `LoadCredential=`); the
environment wins. The credential files that are settings (`DATABASE_URL`,
`SUPABASE_SERVICE_ROLE_KEY`, read by `flowd.config`) are redacted but are not template
secrets.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

ENV_PREFIX = "FLOWD_SECRET_"
MASK = "***"
# Shorter values are too likely to occur in ordinary text to be masked usefully.
_MIN_REDACTED_LENGTH = 4
SETTING_CREDENTIALS = ("DATABASE_URL", "SUPABASE_SERVICE_ROLE_KEY")


class Secrets:
    """Named secret values, and a `redact` that masks every one of them (and extra ones) in text."""

    def __init__(self, named: Mapping[str, str], extra: Iterable[str] = ()) -> None:
        self._named = dict(named)
        values = {*self._named.values(), *extra}
        # Longest first, so a secret that contains another is masked whole.
        self._masked = sorted(
            (v for v in values if len(v) >= _MIN_REDACTED_LENGTH), key=len, reverse=True
        )

    @classmethod
    def from_environment(cls, extra: Iterable[str] = ()) -> Secrets:
        named: dict[str, str] = {}
        extra = list(extra)
        credentials = os.environ.get("CREDENTIALS_DIRECTORY")
        if credentials and Path(credentials).is_dir():
            for path in sorted(Path(credentials).iterdir()):
                if not path.is_file():
                    continue
                value = path.read_text().rstrip("\n")
                if path.name in SETTING_CREDENTIALS:
                    extra.append(value)
                else:
                    named[path.name.removeprefix(ENV_PREFIX)] = value
        for key, value in os.environ.items():
            if key.startswith(ENV_PREFIX) and len(key) > len(ENV_PREFIX):
                named[key.removeprefix(ENV_PREFIX)] = value
        return cls(named, extra)

    @property
    def named(self) -> Mapping[str, str]:
        return self._named

    def redact(self, text: str) -> str:
        for value in self._masked:
            if value in text:
                text = text.replace(value, MASK)
        return text
