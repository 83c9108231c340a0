"""Secrets for templates, and the redaction that keeps their values out of logs and the database.

A secret NAME is the environment variable `FLOWD_SECRET_NAME`, or the file `NAME` or
`FLOWD_SECRET_NAME` in `$CREDENTIALS_DIRECTORY` (systemd `LoadCredential=`); the
environment wins. The credential files that are settings (`DATABASE_URL`,
`SUPABASE_SERVICE_ROLE_KEY`, read by `flowd.config`) are redacted but are not template
secrets.

Redaction masks each value in the forms a target may echo it back in: in any letter case,
URL-encoded (`quote`, `quote_plus`), JSON-escaped, and base64-encoded (standard or
URL-safe) whether alone or inside a longer encoded value such as Basic auth's
`user:secret`: a base64 token that carries the secret is masked whole.
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from urllib.parse import quote, quote_plus

ENV_PREFIX = "FLOWD_SECRET_"
MASK = "***"
# Shorter values are too likely to occur in ordinary text to be masked usefully.
_MIN_REDACTED_LENGTH = 4
SETTING_CREDENTIALS = ("DATABASE_URL", "SUPABASE_SERVICE_ROLE_KEY")
_BASE64_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/-_")


def _text_forms(value: str) -> set[str]:
    """The value as text, URL-encoded and JSON-escaped (matched in any letter case)."""
    return {value, quote(value, safe=""), quote(value), quote_plus(value), json.dumps(value)[1:-1]}


def _base64_cores(value: str) -> Iterator[str]:
    """What any base64 encoding of bytes containing the value contains: for each of the
    three alignments, the characters that only the value's own bits decide."""
    data = value.encode()
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + data).decode()
        core = encoded[-(-8 * shift // 6) : 8 * (shift + len(data)) // 6]
        yield core
        yield core.replace("+", "-").replace("/", "_")


def _alternation(forms: Iterable[str], flags: int = 0) -> re.Pattern[str]:
    # Longest first, so a value that contains another is masked whole.
    ordered = sorted(forms, key=len, reverse=True)
    return re.compile("|".join(map(re.escape, ordered)), flags)


def _mask_base64(text: str, cores: re.Pattern[str]) -> str:
    """Each base64 token containing one of the cores, masked whole."""
    parts, done = [], 0
    for match in cores.finditer(text):
        start, end = _base64_token(text, match.start(), match.end())
        if start < done:  # inside the token masked just before
            continue
        parts += [text[done:start], MASK]
        done = end
    return "".join(parts) + text[done:]


def _base64_token(text: str, start: int, end: int) -> tuple[int, int]:
    """The whole base64 token around text[start:end], its padding included."""
    while start > 0 and text[start - 1] in _BASE64_CHARS:
        start -= 1
    while end < len(text) and text[end] in _BASE64_CHARS:
        end += 1
    while end < len(text) and text[end] == "=":
        end += 1
    return start, end


class Secrets:
    """Named secret values, and a `redact` that masks every one of them (and extra ones) in text."""

    def __init__(self, named: Mapping[str, str], extra: Iterable[str] = ()) -> None:
        self._named = dict(named)
        values = {*self._named.values(), *extra}
        masked = [v for v in values if len(v) >= _MIN_REDACTED_LENGTH]
        # Plain substring tests find what is there (fast, and nothing is the common case);
        # a pattern of only the forms found then masks them.
        self._text_forms = tuple(
            {(form.lower(), form) for value in masked for form in _text_forms(value)}
        )
        self._base64_cores = tuple({core for value in masked for core in _base64_cores(value)})

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
        lowered = text.lower()
        if found := [form for form in self._text_forms if form[0] in lowered]:
            # Both: lower() and the pattern's case folding differ for a few letters.
            forms = {variant for pair in found for variant in pair}
            text = _alternation(forms, re.IGNORECASE).sub(MASK, text)
        if cores := [core for core in self._base64_cores if core in text]:
            text = _mask_base64(text, _alternation(cores))
        return text
