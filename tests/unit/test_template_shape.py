"""Templates under a budget: the shape check, the URL rule, and the worker pool's limits."""

from __future__ import annotations

import resource
from collections.abc import AsyncIterator
from typing import Any

import pytest

from flowd.act.sandbox import OVER_BUDGET, TemplateSandbox
from flowd.act.template_shape import is_plain, warnings
from flowd.act.templates import check_syntax, origin_refusal, render_action, render_url
from flowd.config import load_settings
from flowd.errors import ConfigurationError, PermanentActionError

CPU_BOMBS = [
    "{{ ((9**999)**999)**999 }}",
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
]
MEMORY_BOMBS = [
    "{% for i in range(100000) %}{{ 'x' * 100000 }}{% endfor %}",
    "{{ 'x'|center(2000000000) }}",
    "{% set x = ['x'] %}{% for i in range(64) %}{{ x.extend(x) }}{% endfor %}",
    "{{ 'x'.ljust(2000000000) }}",
    "{{ '{:>2000000000}'.format(1) }}",
]
CONTEXT: dict[str, Any] = {
    "new": {"id": 7, "name": "Ada", "path": "../../internal-only", "dots": ".."},
    "old": {},
    "secrets": {"BASE": "http://127.0.0.1:9/base", "SLACK_PATH": "T0/B0/xyz"},
}


@pytest.mark.parametrize(
    "source",
    [
        "plain text",
        "{{ new.id }}",
        '{{ new.name|default("?")|upper }}-{{ secrets.BASE }}',
        "{{ new['name'] ~ '/' ~ new.id }}",
        "{{ new.tags|join(',') }} {{ new|tojson }}",
    ],
)
def test_lookups_and_linear_filters_are_plain(source: str) -> None:
    assert is_plain(source)


@pytest.mark.parametrize(
    "source", [*CPU_BOMBS, *MEMORY_BOMBS, "{{ new.get('id') }}", "{{ new.tags|join(new.sep) }}"]
)
def test_loops_calls_and_repetition_are_not_plain(source: str) -> None:
    assert not is_plain(source)


@pytest.mark.parametrize(
    ("source", "warning"),
    [
        (CPU_BOMBS[1], "nested loops"),
        ("{% for i in range(100000) %}.{% endfor %}", "range() with a large"),
        ("{{ 'x' * n }}", "`*` repeats a value"),
        ("{{ 'x'|center(2000000000) }}", "filter center with a large"),
        ("{{ 'x'.ljust(2000000000) }}", ".ljust() with a large"),
        (CPU_BOMBS[0], "`**` with a large or non-constant operand"),
    ],
)
def test_unbounded_constructs_are_warned_of(source: str, warning: str) -> None:
    assert any(found.startswith(warning) for found in warnings(source)), warnings(source)


@pytest.mark.parametrize(
    "source",
    ["{{ new.id }}", "{{ new.price * 100 }}", "{% for t in new.tags %}{{ t }}{% endfor %}"],
)
def test_ordinary_templates_are_not_warned_of(source: str) -> None:
    assert warnings(source) == []


def test_event_values_are_percent_encoded_in_path_and_query() -> None:
    url = render_url("https://api.example/items/{{ new.path }}?q={{ new.name }}&a=1", CONTEXT)
    assert url == "https://api.example/items/..%2F..%2Finternal-only?q=Ada&a=1"


def test_secrets_choose_the_origin_and_are_written_as_they_are() -> None:
    url = render_url("{{ secrets.BASE }}/hooks/{{ secrets.SLACK_PATH }}/{{ new.id }}", CONTEXT)
    assert url == "http://127.0.0.1:9/base/hooks/T0/B0/xyz/7"


def test_a_dot_dot_segment_from_the_event_fails() -> None:
    with pytest.raises(PermanentActionError, match=r"`\.\.` path segment"):
        render_url("https://api.example/a/{{ new.dots }}/b", CONTEXT)


@pytest.mark.parametrize(
    "url",
    [
        "https://{{ new.owner }}/x",
        "https://api.example:{{ new.port }}/x",
        "{{ secrets.BASE }}{{ new.path }}",
        "{{ new.url }}",
    ],
)
def test_event_data_in_the_origin_is_refused(url: str) -> None:
    assert origin_refusal(url) is not None


@pytest.mark.parametrize(
    "url", ["https://api.example/{{ new.id }}", "{{ secrets.BASE }}/x?id={{ new.id }}"]
)
def test_flow_text_and_secrets_in_the_origin_are_accepted(url: str) -> None:
    assert origin_refusal(url) is None


@pytest.fixture
async def sandbox() -> AsyncIterator[TemplateSandbox]:
    templates = TemplateSandbox(timeout_s=0.5, memory_mb=128, workers=1)
    yield templates
    await templates.close()


@pytest.mark.timeout(60)
async def test_every_bomb_fails_within_its_budget_and_the_pool_carries_on(
    sandbox: TemplateSandbox,
) -> None:
    """Each bomb ends with the budget error; a loop template renders right after (the
    killed worker was replaced), exactly as in process."""
    for bomb in [*CPU_BOMBS, *MEMORY_BOMBS]:
        with pytest.raises(PermanentActionError, match=OVER_BUDGET):
            await sandbox.render({"body": bomb}, CONTEXT)
    parts = {"body": {"ids": "{% for i in range(3) %}{{ i }}{% endfor %}", "n": 1}}
    assert await sandbox.render(parts, CONTEXT) == {"body": {"ids": "012", "n": 1}}
    assert render_action(parts, CONTEXT) == {"body": {"ids": "012", "n": 1}}


async def test_template_errors_in_a_worker_keep_their_message(sandbox: TemplateSandbox) -> None:
    with pytest.raises(PermanentActionError, match=r"template error: .*ZeroDivisionError"):
        await sandbox.render({"body": "{% for i in [0] %}{{ 1 / i }}{% endfor %}"}, CONTEXT)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("FLOWD_TEMPLATE_TIMEOUT_S", "0"),
        ("FLOWD_TEMPLATE_MEMORY_MB", "8"),
        ("FLOWD_TEMPLATE_WORKERS", "0"),
    ],
)
def test_budget_settings_must_be_positive(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError, match=f"^{name}: Input should be greater"):
        load_settings()


def test_loading_a_bomb_evaluates_nothing() -> None:
    """Checking a flow's templates compiles them without folding constants: no bomb runs
    (a folded `center(2000000000)` alone would take 2 GB here)."""
    before_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    autoescape = "{% autoescape 'x'|center(2000000000) %}{{ new.id }}{% endautoescape %}"
    for bomb in [*CPU_BOMBS, *MEMORY_BOMBS, autoescape]:
        assert check_syntax(bomb) is None
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before_kb) / 1024
    assert grown_mb < 500, f"compiling grew the peak RSS by {grown_mb:.0f} MB"
