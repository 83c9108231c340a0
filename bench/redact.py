"""Section: what masking secrets costs per logged or recorded text, side by side.

**flowd** (`flowd.secrets.Secrets.redact`) masks each secret in its exact form and in the
forms a target may echo (any letter case, URL-encoded, JSON-escaped, base64 of the secret
and of `user:secret`). The baseline is the exact-form-only masking flowd had before: one
`str.replace` per secret. Texts are error excerpts and log lines of 200 B and 10 KB,
with no secret in them (nearly every text) and with one secret in each form.
"""

from __future__ import annotations

import base64
import time
import urllib.parse
from collections.abc import Callable

from bench.report import Row, Samples, render
from flowd.secrets import MASK, Secrets

__all__ = ["run"]

SECRETS = {"API_TOKEN": "sk_live_4f9a8c2e7b1d", "WEBHOOK_KEY": "whk-93b1e0c4d2a7f6", "USER": "svc"}


def _exact_only(values: list[str]) -> Callable[[str], str]:
    def redact(text: str) -> str:
        for value in values:
            text = text.replace(value, MASK)
        return text

    return redact


def _texts(size: int) -> dict[str, str]:
    secret = SECRETS["API_TOKEN"]
    filler = ("upstream said: request rejected, retry later; " * (size // 46 + 1))[:size]
    echoed = " ".join(
        [
            secret.upper(),
            urllib.parse.quote(secret, safe=""),
            base64.b64encode(f"svc:{secret}".encode()).decode(),
        ]
    )
    return {"no secret": filler, "secret in 3 forms": filler[: size - len(echoed)] + echoed}


def _per_call_us(redact: Callable[[str], str], text: str, calls: int, runs: int) -> Samples:
    values = []
    for _ in range(runs):
        started = time.perf_counter()
        for _ in range(calls):
            redact(text)
        values.append((time.perf_counter() - started) / calls * 1e6)
    return Samples(tuple(values), "µs", lower_is_better=True)


def run(quick: bool, runs: int) -> str:
    secrets = Secrets(SECRETS)
    baseline = _exact_only([v for v in SECRETS.values() if len(v) >= 4])
    calls = 50 if quick else 2_000
    rows = []
    for size in (200, 10_000):
        for case, text in _texts(size).items():
            assert SECRETS["API_TOKEN"].upper() not in secrets.redact(text)
            rows.append(
                Row(
                    f"{size:,} B, {case}",
                    _per_call_us(secrets.redact, text, calls, runs),
                    _per_call_us(baseline, text, calls, runs),
                    "exact forms only",
                )
            )
    notes = [
        "Per call, medians of the runs; a ratio under 1× is what the encoded forms cost.",
        "The baseline leaves the upper-cased, URL-encoded and base64 forms unmasked.",
    ]
    return render("Masking secrets", rows, notes)
