"""Secrets are masked in the forms a target may echo them in: case, URL-encoding, base64."""

from __future__ import annotations

import base64
import json
from urllib.parse import quote, quote_plus

import pytest

from flowd.secrets import MASK, Secrets

SECRET = "s3cr3t/Tok+en:42"


def encoded_forms(secret: str) -> dict[str, str]:
    raw = secret.encode()
    return {
        "upper": secret.upper(),
        "lower": secret.lower(),
        "quote": quote(secret, safe=""),
        "quote lower-case hex": quote(secret, safe="").lower(),
        "quote path": quote(secret),
        "quote_plus": quote_plus(secret),
        "json": json.dumps(secret)[1:-1],
        "base64": base64.b64encode(raw).decode(),
        "base64 unpadded": base64.b64encode(raw).decode().rstrip("="),
        "urlsafe base64": base64.urlsafe_b64encode(raw).decode(),
        "basic auth": base64.b64encode(b"user:" + raw).decode(),
        "basic auth, other user": base64.b64encode(b"ab:" + raw).decode(),
        "basic auth, one more": base64.b64encode(b"abcd:" + raw + b"!").decode(),
    }


@pytest.mark.parametrize(("name", "form"), encoded_forms(SECRET).items())
def test_each_encoded_form_is_masked(name: str, form: str) -> None:
    """Whatever a target did to the secret, the form is gone and a mask stands in its place."""
    text = f'HTTP 401: {{"detail": "bad credentials {form} for you"}}'
    redacted = Secrets({"TOKEN": SECRET}).redact(text)
    assert form not in redacted, name
    assert MASK in redacted
    assert redacted.startswith('HTTP 401: {"detail": "bad credentials ')
    assert redacted.endswith(' for you"}')


def test_a_base64_token_carrying_the_secret_is_masked_whole() -> None:
    """`Basic dXNlcj…` becomes `Basic ***`: no leftover characters of the token."""
    token = base64.b64encode(b"user:" + SECRET.encode()).decode()
    assert Secrets({"T": SECRET}).redact(f"Authorization: Basic {token}.") == (
        "Authorization: Basic ***."
    )


def test_text_without_secrets_is_unchanged() -> None:
    """Ordinary text, base64 of other data included, comes out as it went in."""
    other = base64.b64encode(b"user:not-the-secret-at-all").decode()
    text = f"HTTP 500: upstream said {other} and S3CR3T-ish things, id 3f2a"
    assert Secrets({"T": SECRET}, extra=["postgres-pw"]).redact(text) == text


def test_several_secrets_and_a_secret_inside_another() -> None:
    """The longer secret is masked whole; every occurrence of each goes."""
    secrets = Secrets({"A": "inner-key", "B": "outer-inner-key-2"})
    text = "outer-inner-key-2, INNER-KEY, " + base64.b64encode(b"inner-key").decode()
    assert secrets.redact(text) == "***, ***, ***"


def test_short_values_are_not_masked() -> None:
    """Values under 4 characters are too common in ordinary text to mask."""
    assert Secrets({"T": "abc"}).redact("abc ABC YWJj") == "abc ABC YWJj"
