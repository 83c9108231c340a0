"""Pure parts of the actions: templates and their sandbox, retry timing, secrets, Retry-After."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest

from flowd.act.http import retry_after_seconds
from flowd.act.retry import RetryPolicy
from flowd.act.templates import check_syntax, render, render_tree, template_context
from flowd.errors import PermanentActionError
from flowd.models import ChangeEvent, Flow
from flowd.secrets import MASK, Secrets
from tests.conftest import frame

EVENT = ChangeEvent.model_validate(frame("update_event")["payload"]["data"])
FLOW = Flow(flow_id=7, name="done mail", trigger_table="tasks")


def context(**secrets: str) -> dict[str, object]:
    return template_context(EVENT, FLOW, secrets)


def test_template_sees_records_event_flow_and_secrets() -> None:
    """Templates read new/old (and their aliases), event, flow, secrets and now."""
    source = (
        "{{ new.status }}|{{ old.status }}|{{ record.id }}|{{ old_record.done }}|"
        "{{ event.type }} {{ event.schema }}.{{ event.table }}|{{ flow.id }} {{ flow.name }}|"
        "{{ secrets.TOKEN }}|{{ now[:2] }}"
    )
    assert render(source, context(TOKEN="t0k3n")) == (
        "done|in_progress|1|False|UPDATE public.tasks|7 done mail|t0k3n|20"
    )


def test_render_tree_renders_string_leaves_only() -> None:
    """Object bodies: strings are rendered, numbers/booleans/null are kept as they are."""
    tree = {"a": ["{{ new.id }}", 2, None], "b": {"c": True, "d": "{{ new.meta.points }}"}}
    assert render_tree(tree, context()) == {"a": ["1", 2, None], "b": {"c": True, "d": "5"}}


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "template"),
        ("{{ cycler.__init__.__globals__.os.popen('id').read() }}", "template"),
        ("{{ 'x' * 100000000 }}", "sandbox"),
        ("{{ 9 ** 99999999 }}", "sandbox"),
        ("{{ new.no_such_column }}", "template error"),
        ("{{ secrets.MISSING }}", "template error"),
        ("{{ 1 / 0 }}", "ZeroDivisionError"),
        ("{% for x in range(10**9) %}{% endfor %}", "template"),
    ],
)
def test_hostile_or_broken_templates_fail_permanently(source: str, reason: str) -> None:
    """A template that escapes the sandbox, explodes, or names nothing fails without retry."""
    with pytest.raises(PermanentActionError) as caught:
        render(source, context())
    assert reason in str(caught.value)


def test_template_syntax_is_checked_up_front() -> None:
    """check_syntax reports an unclosed expression and accepts a good template."""
    assert check_syntax("{{ new.id }}") is None
    problem = check_syntax("{{ new.id ")
    assert problem is not None
    assert problem.startswith("template syntax error")


def test_text_without_template_syntax_is_kept_verbatim() -> None:
    """Plain text, including braces that are not Jinja syntax, is sent as written."""
    assert render('{"a": 1}', context()) == '{"a": 1}'


def test_backoff_is_exponential_with_full_jitter_and_capped() -> None:
    """delay(n) lies in [0, min(cap, base·2^(n-1))]; Retry-After wins, capped."""
    policy = RetryPolicy(max_attempts=5, backoff_s=1.0, max_delay_s=5.0)
    for attempt, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 5.0), (9, 5.0)]:
        delays = [policy.delay(attempt) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling / 2
    assert policy.delay(1, retry_after_s=3) == 3
    assert policy.delay(1, retry_after_s=3600) == 5.0


def test_retry_after_reads_seconds_and_http_dates() -> None:
    """Retry-After as delta-seconds or an HTTP date; garbage is ignored."""
    assert retry_after_seconds("7") == 7.0
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    seconds = retry_after_seconds(later)
    assert seconds is not None
    assert 25 <= seconds <= 31
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds(None) is None


def test_secrets_come_from_env_and_credentials_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FLOWD_SECRET_NAME and $CREDENTIALS_DIRECTORY/NAME are secrets; the environment wins."""
    (tmp_path / "SLACK").write_text("from-file\n")
    (tmp_path / "TOKEN").write_text("file-token")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    monkeypatch.setenv("FLOWD_SECRET_TOKEN", "env-token")
    secrets = Secrets.from_environment()
    assert secrets.named["SLACK"] == "from-file"
    assert secrets.named["TOKEN"] == "env-token"


def test_redaction_masks_every_secret_longest_first() -> None:
    """Every secret value (and extra ones) becomes *** wherever it appears."""
    secrets = Secrets({"A": "abcd1234", "B": "abcd1234-and-more"}, extra=["dbpassword"])
    text = "x abcd1234-and-more y abcd1234 z dbpassword"
    assert secrets.redact(text) == f"x {MASK} y {MASK} z {MASK}"
