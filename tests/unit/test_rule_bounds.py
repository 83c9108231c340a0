"""Rules under bounds: MATCHES on RE2 (linear time, refused patterns are definition errors)
and the limits of flowd.rules.limits on rule values, IN lists and patterns."""

from __future__ import annotations

import json

import pytest

from flowd.errors import FlowDefinitionError
from flowd.models import Rule
from flowd.rules import check_rule_against_columns, compile_flow, limits
from tests.unit.test_classify import event, holds, make_flow

EVIL_TEXT = "a" * 40 + "!"  # exponential for a backtracking engine on (a+)+$


def _refusal(field: str, operator: str, value: str) -> str:
    with pytest.raises(FlowDefinitionError) as raised:
        compile_flow(make_flow((field, operator, value), flow_id=7))
    assert raised.value.flow_id == 7
    assert raised.value.where == f"rule #1 (field {field})"
    assert "\n" not in raised.value.reason
    return raised.value.reason


@pytest.mark.timeout(20)
@pytest.mark.parametrize("pattern", ["^(a+)+$", "^(a|a)*$", "^(a|aa)+$", "(a*)*b$"])
def test_catastrophic_patterns_classify_quickly(pattern: str) -> None:
    assert not holds("title", "MATCHES", pattern, event(title=EVIL_TEXT))
    matching = "a" * 40 + ("b" if "b" in pattern else "")
    assert holds("title", "MATCHES", pattern, event(title=matching))


@pytest.mark.parametrize(
    ("pattern", "title", "expected"),
    [
        ("realtime", "Write realtime contract", True),  # found anywhere: a search
        ("^realtime", "Write realtime contract", False),
        ("Realtime", "Write realtime contract", False),  # case-sensitive
        ("(?i)Realtime", "Write realtime contract", True),
        ("caf.$", "café", True),  # a character, not a byte
        ("x$", "\ud800x", True),  # a lone surrogate (JSON's "\ud800") does not break it
        ("^.x$", "\ud800x", True),  # ... and reads as one character (U+FFFD)
    ],
)
def test_matches_keeps_its_meaning(pattern: str, title: str, expected: bool) -> None:
    assert holds("title", "MATCHES", pattern, event(title=title)) is expected


@pytest.mark.parametrize(
    ("pattern", "cause"),
    [
        (r"(a)\1", r"invalid escape sequence: \1"),
        ("a(?=b)", "invalid perl operator: (?="),
        ("(?<!a)b", "invalid perl operator: (?<"),
        ("(", "missing ): ("),
    ],
)
def test_patterns_re2_refuses_are_definition_errors(pattern: str, cause: str) -> None:
    reason = _refusal("title", "MATCHES", pattern)
    assert reason.startswith(f"the regular expression {pattern!r} does not compile: {cause}")
    assert "RE2 syntax" in reason


def test_pattern_length_is_bounded() -> None:
    limit = limits.PATTERN.limit
    assert holds("title", "MATCHES", "W" + "." * (limit - 1), event(title="W" * limit))
    reason = _refusal("title", "MATCHES", "a" * (limit + 1))
    assert reason == f"the regular expression has {limit + 1:,} characters, over the limit of 1,000"


@pytest.mark.parametrize("as_json", [False, True], ids=["comma list", "JSON array"])
def test_in_list_length_is_bounded(as_json: bool) -> None:
    def in_list(count: int) -> str:
        items = [str(number) for number in range(count)]
        return json.dumps(items) if as_json else ",".join(items)

    limit = limits.IN_LIST.limit
    assert holds("id", "IN", in_list(limit), event(id=limit - 1))
    reason = _refusal("id", "NOT_IN", in_list(limit + 1))
    assert reason == f"the IN list has {limit + 1:,} items, over the limit of 10,000"


@pytest.mark.timeout(20)
def test_a_huge_value_is_refused_before_it_is_read() -> None:
    """A million-item IN list (about 7 MB) is refused by its size, checked first."""
    huge = ",".join(f"item{number}" for number in range(1_000_000))
    for operator in ("IN", "=", "CONTAINS", "MATCHES"):
        reason = _refusal("title", operator, huge)
        assert reason == f"the rule value has {len(huge):,} characters, over the limit of 262,144"
    assert (
        check_rule_against_columns(Rule(field="id", operator="IN", value=huge), {"id": "int8"})
        is None
    )
    limit = limits.RULE_VALUE.limit
    assert holds("title", "=", "x" * limit, event(title="x" * limit))
