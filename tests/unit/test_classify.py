"""flowd.rules against shared/spec/rules.md: every operator, typed reading, corner case."""

from __future__ import annotations

import copy
import dataclasses
import json
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from flowd.errors import FlowDefinitionError
from flowd.models import ChangeEvent, Flow, Rule
from flowd.rules import (
    Classification,
    CompiledFlow,
    EventView,
    FlowIndex,
    build_index,
    check_rule_against_columns,
    compile_flow,
)

FRAMES = Path(__file__).resolve().parents[1] / "fixtures" / "frames"

# Columns the frames' `tasks` table does not have, added to every event so that one
# record can exercise every Postgres type the spec names.
EXTRA_COLUMNS = {
    "due_on": "date",
    "seen_at": "timestamp",
    "ratio": "float8",
    "score": "int4",
    "small": "int2",
    "codes": "_int4",
    "grid": "_int4",
    "flags": "_bool",
    "stamps": "_timestamptz",
    "kind": "task_kind",
    "note": "text",
    "payload": "json",
    "old": "text",
}

RuleSpec = tuple[str, str, str | None]


@cache
def _frame_data(name: str) -> dict[str, Any]:
    frame = json.loads((FRAMES / f"{name}.json").read_text())
    data: dict[str, Any] = frame["payload"]["data"]
    return data


def wire_data(name: str, *, extra_columns: bool = True) -> dict[str, Any]:
    """A fresh copy of the frame's `payload.data`, with the extra test columns listed."""
    data = copy.deepcopy(_frame_data(name))
    if extra_columns:
        data["columns"] += [{"name": n, "type": t} for n, t in EXTRA_COLUMNS.items()]
    return data


def event(name: str = "insert_event", **changes: Any) -> ChangeEvent:
    """The frame's event with `changes` applied to the record the event is about."""
    data = wire_data(name)
    key = "old_record" if data["type"] == "DELETE" else "record"
    data[key] = {**data[key], **changes}
    return ChangeEvent.model_validate(data)


def update(name: str = "update_event", *, old: dict[str, Any], new: dict[str, Any]) -> ChangeEvent:
    """An UPDATE frame with changes applied to old_record and record."""
    data = wire_data(name)
    data["old_record"] = {**data["old_record"], **old}
    data["record"] = {**data["record"], **new}
    return ChangeEvent.model_validate(data)


def supabase_js(name: str) -> ChangeEvent:
    """The frame's event in the shape supabase-js hands its users (no column types)."""
    data = wire_data(name, extra_columns=False)
    return ChangeEvent.model_validate(
        {
            "schema": data["schema"],
            "table": data["table"],
            "commit_timestamp": data["commit_timestamp"],
            "eventType": data["type"],
            "new": data.get("record", {}),
            "old": data.get("old_record", {}),
            "errors": None,
        }
    )


def make_flow(
    *rules: RuleSpec,
    flow_id: int = 1,
    trigger_table: str = "tasks",
    trigger_event: str = "*",
    match: str = "ALL",
    is_enabled: bool = True,
) -> Flow:
    """A flow on `tasks` with the given (field, operator, value) rules."""
    return Flow(
        flow_id=flow_id,
        name=f"flow {flow_id}",
        trigger_table=trigger_table,
        trigger_event=trigger_event,
        match=match,
        is_enabled=is_enabled,
        rules=tuple(Rule(field=f, operator=o, value=v) for f, o, v in rules),
    )


def holds(field: str, operator: str, value: str | None, change: ChangeEvent) -> bool:
    """Whether a one-rule flow matches `change`, alike through its predicate and the index.

    In the index, the rule is tried alone, as one of an ANY flow's and after another rule
    of an ALL flow (`id` is never null in the frames), so that each way the index may
    file a flow by the rule is checked against the predicate."""
    matched, _ = compile_flow(make_flow((field, operator, value))).evaluate(change)
    index, refused = build_index(
        [
            make_flow((field, operator, value), flow_id=2),
            make_flow((field, operator, value), ("id", "IS_NULL", None), flow_id=3, match="ANY"),
            make_flow(("id", "IS_NOT_NULL", None), (field, operator, value), flow_id=4),
        ]
    )
    assert refused == []
    indexed = [flow.flow_id for flow in index.classify(change).flows]
    assert indexed == ([2, 3, 4] if matched else []), indexed
    return matched


def cases(*rows: tuple[str, str, str | None, dict[str, Any], bool]) -> list[Any]:
    """pytest params (field, operator, value, record changes, expected) with readable ids."""
    return [
        pytest.param(*row, id=f"{row[0]} {row[1]} {row[2]!r} {row[3] or ''} -> {row[4]}")
        for row in rows
    ]


CASE_NAMES = ("field", "operator", "value", "changes", "expected")
ISO = "2025-07-01T17:00:00+00:00"

# --------------------------------------------------------------------------- `=` and `!=`

EQUALS = cases(
    # text: exact, case-sensitive, spaces kept
    ("priority", "=", "high", {}, True),
    ("priority", "==", "high", {}, True),
    ("priority", "=", "High", {}, False),
    ("priority", "=", " high", {}, False),
    ("priority", "=", "high ", {}, False),
    ("title", "=", "Write realtime contract", {}, True),
    ("note", "=", "", {"note": ""}, True),
    ("note", "=", " ", {"note": ""}, False),
    ("assignee", "=", "6f1c2a8e-4b1d-4c55-9a8e-2f7d3c9b1a10", {}, True),
    ("assignee", "=", "6F1C2A8E-4B1D-4C55-9A8E-2F7D3C9B1A10", {}, False),
    ("kind", "=", "bug", {"kind": "bug"}, True),
    ("kind", "=", "Bug", {"kind": "bug"}, False),
    # numbers
    ("estimate", "=", "3.5", {}, True),
    ("estimate", "=", "3.50", {}, True),
    ("estimate", "=", "3.500", {}, True),
    ("estimate", "=", " 3.5 ", {}, True),
    ("estimate", "=", "35e-1", {}, True),
    ("estimate", "=", "4", {}, False),
    ("id", "=", "1", {}, True),
    ("id", "=", "1.0", {}, True),
    ("id", "=", "1e0", {}, True),
    ("id", "=", "+1", {}, True),
    ("id", "=", "2", {}, False),
    ("small", "=", "1E3", {"small": 1000}, True),
    ("ratio", "=", "0.1", {"ratio": 0.1}, True),
    ("ratio", "=", "0.10000001", {"ratio": 0.1}, False),
    ("id", "=", "9007199254740993", {"id": "9007199254740993"}, True),
    ("id", "=", "9007199254740992", {"id": "9007199254740993"}, False),
    ("id", "=", "9007199254740993", {"id": 9007199254740993}, True),
    ("estimate", "=", "3.5", {"estimate": "3.50"}, True),
    ("estimate", "=", "NaN", {"estimate": "NaN"}, False),
    ("estimate", "=", "Infinity", {"estimate": "Infinity"}, False),
    ("estimate", "=", "abc", {}, False),
    # booleans
    ("done", "=", "false", {}, True),
    ("done", "=", "FALSE", {}, True),
    ("done", "=", "f", {}, True),
    ("done", "=", "F", {}, True),
    ("done", "=", "no", {}, True),
    ("done", "=", "No", {}, True),
    ("done", "=", "0", {}, True),
    ("done", "=", " false ", {}, True),
    ("done", "=", "true", {}, False),
    ("done", "=", "t", {}, False),
    ("done", "=", "yes", {}, False),
    ("done", "=", "1", {}, False),
    ("done", "=", "True", {"done": True}, True),
    ("done", "=", "T", {"done": True}, True),
    ("done", "=", "YES", {"done": True}, True),
    ("done", "=", "1", {"done": True}, True),
    ("done", "=", "no", {"done": True}, False),
    ("done", "=", "maybe", {}, False),
    ("done", "=", "n", {}, False),
    # instants
    ("due_at", "=", "2025-07-01T17:00:00Z", {}, True),
    ("due_at", "=", "2025-07-01 17:00:00+00", {}, True),
    ("due_at", "=", "2025-07-01T17:00:00", {}, True),
    ("due_at", "=", "2025-07-01T19:00:00+02:00", {}, True),
    ("due_at", "=", " 2025-07-01T17:00:00Z ", {}, True),
    ("due_at", "=", "2025-07-01T17:00:00.000Z", {}, True),
    ("due_at", "=", "2025-07-01T17:00:01Z", {}, False),
    ("due_at", "=", "2025-07-01", {}, False),
    ("due_at", "=", "2025-07-01T17:00:00+01:00", {}, False),
    (
        "due_at",
        "=",
        "2025-07-01T15:00:00.123456Z",
        {"due_at": "2025-07-01T15:00:00.123456+00:00"},
        True,
    ),
    ("due_at", "=", "tomorrow", {}, False),
    ("due_on", "=", "2025-07-01", {"due_on": "2025-07-01"}, True),
    ("due_on", "=", "2025-07-01T00:00:00Z", {"due_on": "2025-07-01"}, True),
    ("due_on", "=", "2025-07-01T00:00:00+02:00", {"due_on": "2025-07-01"}, False),
    ("due_on", "=", "2025-07-02", {"due_on": "2025-07-01"}, False),
    ("seen_at", "=", "2025-07-01T17:00:00Z", {"seen_at": "2025-07-01T17:00:00"}, True),
    ("seen_at", "=", "2025-07-01T17:00:00-01:00", {"seen_at": "2025-07-01T17:00:00"}, False),
    # below json: the JSON value's own type
    ("meta.points", "=", "5", {}, True),
    ("meta.points", "=", "5.0", {}, True),
    ("meta.points", "=", " 5 ", {}, True),
    ("meta.points", "=", "6", {}, False),
    ("meta.source", "=", "cli", {}, True),
    ("meta.source", "=", "CLI", {}, False),
    ("meta.labels.area", "=", "infra", {}, True),
    ("meta.labels.area", "=", "Infra", {}, False),
    ("payload.ok", "=", "yes", {"payload": {"ok": True}}, True),
    ("payload.ok", "=", "no", {"payload": {"ok": True}}, False),
    ("payload.count", "=", "5", {"payload": {"count": "5"}}, True),
    ("payload.count", "=", "5.0", {"payload": {"count": "5"}}, False),
    # typed array elements
    ("tags.0", "=", "backend", {}, True),
    ("tags.1", "=", "realtime", {}, True),
    ("tags.1", "=", "backend", {}, False),
    ("codes.1", "=", "2.0", {"codes": [1, 2, 3]}, True),
    ("codes.1", "=", "3", {"codes": [1, 2, 3]}, False),
    ("flags.0", "=", "t", {"flags": [True]}, True),
    ("stamps.0", "=", "2025-07-01T17:00:00Z", {"stamps": [ISO]}, True),
    ("stamps.0", "=", "2025-07-01T17:00:01Z", {"stamps": [ISO]}, False),
    ("codes.0", "=", "abc", {"codes": ["abc"]}, False),
    # arrays and objects are never equal
    ("tags", "=", "backend", {}, False),
    ("tags", "=", '["backend", "realtime"]', {}, False),
    ("tags", "=", '["backend","realtime"]', {}, False),
    ("meta", "=", '{"labels": {"area": "infra"}, "points": 5, "source": "cli"}', {}, False),
    ("meta.labels", "=", '{"area": "infra"}', {}, False),
    # null and missing
    ("estimate", "=", "3.5", {"estimate": None}, False),
    ("priority", "=", "", {"priority": None}, False),
    ("nope", "=", "x", {}, False),
    ("meta.owner", "=", "x", {}, False),
    ("tags.9", "=", "x", {}, False),
)


@pytest.mark.parametrize(CASE_NAMES, EQUALS)
def test_equals(
    field: str, operator: str, value: str, changes: dict[str, Any], expected: bool
) -> None:
    """`=`/`==` holds when the non-null field, read as its type, equals rule.value read alike."""
    assert holds(field, operator, value, event(**changes)) is expected


NOT_EQUALS = cases(
    ("priority", "!=", "low", {}, True),
    ("priority", "!=", "high", {}, False),
    ("priority", "<>", "low", {}, True),
    ("priority", "<>", "high", {}, False),
    ("priority", "!=", "High", {}, True),
    ("estimate", "!=", "3.50", {}, False),
    ("estimate", "!=", "4", {}, True),
    ("done", "!=", "yes", {}, True),
    ("done", "!=", "no", {}, False),
    ("due_at", "!=", "2025-07-01T17:00:00Z", {}, False),
    ("due_at", "!=", "2025-07-02", {}, True),
    ("estimate", "!=", "1", {"estimate": None}, True),
    ("nope", "!=", "x", {}, True),
    ("tags", "!=", "backend", {}, True),
    ("meta", "!=", "x", {}, True),
    # a field that cannot be read as its own column's type: the negation holds
    ("score", "!=", "1", {"score": "abc"}, True),
    ("done", "!=", "true", {"done": "perhaps"}, True),
    ("due_at", "!=", "2025-07-01", {"due_at": "soon"}, True),
    # a rule value that cannot be read as the field's type: the rule is false
    ("estimate", "!=", "abc", {}, False),
    ("done", "!=", "maybe", {}, False),
    ("due_at", "!=", "tomorrow", {}, False),
)


@pytest.mark.parametrize(CASE_NAMES, NOT_EQUALS)
def test_not_equals(
    field: str, operator: str, value: str, changes: dict[str, Any], expected: bool
) -> None:
    """`!=`/`<>` holds when `=` does not, unless rule.value is unreadable as the field type."""
    assert holds(field, operator, value, event(**changes)) is expected


# --------------------------------------------------------------------------- ordering

ORDERING = cases(
    ("estimate", ">", "3", {}, True),
    ("estimate", ">", "3.5", {}, False),
    ("estimate", ">=", "3.5", {}, True),
    ("estimate", ">=", "3.50", {}, True),
    ("estimate", ">=", "3.51", {}, False),
    ("estimate", "<", "4", {}, True),
    ("estimate", "<", "3.5", {}, False),
    ("estimate", "<=", "3.5", {}, True),
    ("estimate", "<=", "3.49", {}, False),
    ("estimate", ">", "1e0", {}, True),
    ("estimate", "<", " 1E1 ", {}, True),
    ("estimate", ">", "-1", {}, True),
    ("estimate", ">", "abc", {}, False),
    ("estimate", "<", "abc", {}, False),
    ("id", ">", "0", {}, True),
    ("id", ">", "9007199254740992", {"id": "9007199254740993"}, True),
    ("id", "<", "9007199254740993", {"id": "9007199254740993"}, False),
    ("ratio", "<", "1", {"ratio": 0.5}, True),
    # instants: a date is midnight UTC, no zone means UTC
    ("due_at", ">", "2025-07-01", {}, True),
    ("due_at", "<", "2025-07-01", {}, False),
    ("due_at", "<", "2025-07-02", {}, True),
    ("due_at", ">", "2025-07-01T17:00:00Z", {}, False),
    ("due_at", ">=", "2025-07-01T17:00:00Z", {}, True),
    ("due_at", "<", "2025-07-01T18:00:00+00:00", {}, True),
    ("due_at", "<", "2025-07-01T18:00:00+02:00", {}, False),
    ("due_at", ">", "2025-07-01 16:59:59", {}, True),
    ("due_at", "<=", "2025-07-01 16:59:59", {}, False),
    ("due_at", ">", "soon", {}, False),
    ("due_on", ">", "2025-06-30T23:59:59Z", {"due_on": "2025-07-01"}, True),
    ("due_on", "<", "2025-07-01T00:00:01Z", {"due_on": "2025-07-01"}, True),
    ("due_on", "<", "2025-07-01", {"due_on": "2025-07-01"}, False),
    ("seen_at", "<", "2025-07-01T17:00:00+00:00", {"seen_at": "2025-07-01T17:00:00"}, False),
    ("seen_at", "<=", "2025-07-01T17:00:00+00:00", {"seen_at": "2025-07-01T17:00:00"}, True),
    # text: by code point; never against a number
    ("title", ">", "A", {}, True),
    ("title", "<", "A", {}, False),
    ("title", ">", "Write", {}, True),
    ("title", ">=", "Write realtime contract", {}, True),
    ("title", ">", "a", {}, False),
    ("priority", "<", "i", {}, True),
    ("priority", ">", "5", {}, False),
    ("priority", "<", "5", {}, False),
    ("note", "<", "9", {"note": "10"}, False),
    ("note", ">", "9", {"note": "10"}, False),
    # booleans, arrays and objects are never ordered
    ("done", ">", "false", {}, False),
    ("done", ">=", "false", {}, False),
    ("done", "<", "true", {}, False),
    ("done", "<=", "true", {}, False),
    ("tags", ">", "a", {}, False),
    ("tags", "<", "z", {}, False),
    ("meta", ">", "a", {}, False),
    ("meta", "<", "{", {}, False),
    # null, missing, unreadable field values
    ("estimate", ">", "0", {"estimate": None}, False),
    ("estimate", "<", "0", {"estimate": None}, False),
    ("nope", ">", "0", {}, False),
    ("nope", "<", "0", {}, False),
    ("score", ">", "0", {"score": "abc"}, False),
    ("score", "<", "0", {"score": "abc"}, False),
    ("estimate", ">", "0", {"estimate": "NaN"}, False),
    ("estimate", "<", "0", {"estimate": "NaN"}, False),
    ("estimate", ">", "0", {"estimate": "Infinity"}, False),
    ("ratio", "<", "0", {"ratio": "-Infinity"}, False),
    # below json
    ("meta.points", ">", "4", {}, True),
    ("meta.points", "<=", "4", {}, False),
    ("meta.source", ">", "c", {}, True),
    ("meta.source", "<", "c", {}, False),
    ("meta.labels", ">", "a", {}, False),
    ("codes.0", ">=", "1", {"codes": [1, 2]}, True),
    ("codes.0", ">", "1", {"codes": [1, 2]}, False),
    ("stamps.0", ">", "2025-07-01", {"stamps": [ISO]}, True),
)


@pytest.mark.parametrize(CASE_NAMES, ORDERING)
def test_ordering(
    field: str, operator: str, value: str, changes: dict[str, Any], expected: bool
) -> None:
    """`>` `<` `>=` `<=` order numbers, instants, text; never booleans, arrays, objects, nulls."""
    assert holds(field, operator, value, event(**changes)) is expected


# --------------------------------------------------------------------------- CONTAINS

CONTAINS = cases(
    ("title", "CONTAINS", "realtime", {}, True),
    ("title", "CONTAINS", "realtime contract", {}, True),
    ("title", "CONTAINS", "Realtime", {}, False),
    ("title", "CONTAINS", "", {}, True),
    ("title", "CONTAINS", "", {"title": None}, False),
    ("tags", "CONTAINS", "backend", {}, True),
    ("tags", "CONTAINS", "Backend", {}, False),
    ("tags", "CONTAINS", "back", {}, False),
    ("tags", "CONTAINS", " backend", {}, False),
    ("codes", "CONTAINS", "2", {"codes": [1, 2, 3]}, True),
    ("codes", "CONTAINS", "2.0", {"codes": [1, 2, 3]}, True),
    ("codes", "CONTAINS", "9", {"codes": [1, 2, 3]}, False),
    ("codes", "CONTAINS", "abc", {"codes": [1, 2, 3]}, False),
    ("codes", "CONTAINS", "1", {"codes": [None, 1]}, True),
    ("flags", "CONTAINS", "yes", {"flags": [False, True]}, True),
    ("flags", "CONTAINS", "yes", {"flags": [False]}, False),
    ("stamps", "CONTAINS", "2025-07-01 19:00:00+02", {"stamps": [ISO]}, True),
    ("stamps", "CONTAINS", "2025-07-01", {"stamps": [ISO]}, False),
    ("grid", "CONTAINS", "1", {"grid": [[1, 2], [3, 4]]}, False),
    ("grid.0", "CONTAINS", "1", {"grid": [[1, 2], [3, 4]]}, True),
    ("grid.1", "CONTAINS", "1", {"grid": [[1, 2], [3, 4]]}, False),
    ("payload", "CONTAINS", "a", {"payload": [1, "a", True]}, True),
    ("payload", "CONTAINS", "1.0", {"payload": [1, "a", True]}, True),
    ("payload", "CONTAINS", "true", {"payload": [1, "a", True]}, True),
    ("payload", "CONTAINS", "x", {"payload": [1, "a", True]}, False),
    ("payload", "CONTAINS", "A", {"payload": [1, "a", True]}, False),
    ("meta", "CONTAINS", "labels", {}, True),
    ("meta", "CONTAINS", "Labels", {}, False),
    ("meta", "CONTAINS", "cli", {}, False),
    ("meta.labels", "CONTAINS", "area", {}, True),
    ("meta.labels", "CONTAINS", "infra", {}, False),
    ("estimate", "CONTAINS", "3", {}, False),
    ("done", "CONTAINS", "f", {}, False),
    ("due_at", "CONTAINS", "2025", {}, False),
    ("estimate", "CONTAINS", "3", {"estimate": None}, False),
    ("nope", "CONTAINS", "x", {}, False),
    ("tags", "CONTAINS", "x", {"tags": "not-an-array"}, False),
)


@pytest.mark.parametrize(CASE_NAMES, CONTAINS)
def test_contains(
    field: str, operator: str, value: str, changes: dict[str, Any], expected: bool
) -> None:
    """CONTAINS: a substring of text, an element of an array (read as its type), an object's key."""
    assert holds(field, operator, value, event(**changes)) is expected


NOT_CONTAINS = cases(
    ("title", "NOT_CONTAINS", "urgent", {}, True),
    ("title", "NOT_CONTAINS", "realtime", {}, False),
    ("title", "NOT_CONTAINS", "", {"title": None}, True),
    ("tags", "NOT_CONTAINS", "shipped", {}, True),
    ("tags", "NOT_CONTAINS", "backend", {}, False),
    ("meta", "NOT_CONTAINS", "owner", {}, True),
    ("meta", "NOT_CONTAINS", "labels", {}, False),
    ("codes", "NOT_CONTAINS", "9", {"codes": [1, 2]}, True),
    ("codes", "NOT_CONTAINS", "2", {"codes": [1, 2]}, False),
    ("estimate", "NOT_CONTAINS", "3", {}, True),
    ("estimate", "NOT_CONTAINS", "3", {"estimate": None}, True),
    ("nope", "NOT_CONTAINS", "x", {}, True),
    ("tags", "NOT_CONTAINS", "x", {"tags": "not-an-array"}, True),
    # rule value unreadable as the typed array's element type: false both ways
    ("codes", "NOT_CONTAINS", "abc", {"codes": [1, 2]}, False),
)


@pytest.mark.parametrize(CASE_NAMES, NOT_CONTAINS)
def test_not_contains(
    field: str, operator: str, value: str, changes: dict[str, Any], expected: bool
) -> None:
    """NOT_CONTAINS holds exactly when CONTAINS does not (null and non-containers included)."""
    assert holds(field, operator, value, event(**changes)) is expected


# --------------------------------------------------------------------------- text operators

TEXT_OPERATORS = cases(
    ("title", "STARTS_WITH", "Write", {}, True),
    ("title", "STARTS_WITH", "Write ", {}, True),
    ("title", "STARTS_WITH", "write", {}, False),
    ("title", "STARTS_WITH", "contract", {}, False),
    ("title", "ENDS_WITH", "contract", {}, True),
    ("title", "ENDS_WITH", " contract", {}, True),
    ("title", "ENDS_WITH", "Contract", {}, False),
    ("title", "ENDS_WITH", "Write", {}, False),
    ("assignee", "STARTS_WITH", "6f1c", {}, True),
    ("meta.source", "STARTS_WITH", "c", {}, True),
    ("meta.source", "ENDS_WITH", "i", {}, True),
    ("meta.source", "ENDS_WITH", "x", {}, False),
    ("tags.0", "STARTS_WITH", "back", {}, True),
    # the field must be text
    ("estimate", "STARTS_WITH", "3", {}, False),
    ("id", "ENDS_WITH", "1", {}, False),
    ("done", "STARTS_WITH", "f", {}, False),
    ("due_at", "STARTS_WITH", "2025", {}, False),
    ("tags", "STARTS_WITH", "backend", {}, False),
    ("tags", "ENDS_WITH", "realtime", {}, False),
    ("meta", "STARTS_WITH", "{", {}, False),
    ("meta.points", "STARTS_WITH", "5", {}, False),
    ("title", "STARTS_WITH", "W", {"title": None}, False),
    ("nope", "ENDS_WITH", "x", {}, False),
    # MATCHES: re.search on text
    ("title", "MATCHES", "realtime", {}, True),
    ("title", "MATCHES", "^Write", {}, True),
    ("title", "MATCHES", "^realtime", {}, False),
    ("title", "MATCHES", r"contract$", {}, True),
    ("title", "MATCHES", "(?i)WRITE", {}, True),
    ("title", "MATCHES", "WRITE", {}, False),
    ("title", "MATCHES", r"\d", {}, False),
    ("meta.source", "MATCHES", "^c.i$", {}, True),
    ("estimate", "MATCHES", "3", {}, False),
    ("tags", "MATCHES", "back", {}, False),
    ("due_at", "MATCHES", "2025", {}, False),
    ("title", "MATCHES", ".*", {"title": None}, False),
    ("nope", "MATCHES", ".*", {}, False),
)


@pytest.mark.parametrize(CASE_NAMES, TEXT_OPERATORS)
def test_text_operators(
    field: str, operator: str, value: str, changes: dict[str, Any], expected: bool
) -> None:
    """STARTS_WITH, ENDS_WITH and MATCHES hold only for a text field, case-sensitively."""
    assert holds(field, operator, value, event(**changes)) is expected


# --------------------------------------------------------------------------- IN / NOT_IN

IN_LISTS = cases(
    ("priority", "IN", '["high", "urgent"]', {}, True),
    ("priority", "IN", '["High", "Urgent"]', {}, False),
    ("priority", "IN", "high, urgent", {}, True),
    ("priority", "IN", "urgent,high", {}, True),
    ("priority", "IN", " high ", {}, True),
    ("priority", "IN", "low, urgent", {}, False),
    ("priority", "IN", "[]", {}, False),
    ("note", "IN", '[" a"]', {"note": " a"}, True),
    ("note", "IN", " a, b", {"note": " a"}, False),
    # empty items of a comma list are the empty text
    ("note", "IN", "a,,b", {"note": ""}, True),
    ("note", "IN", "a,b", {"note": ""}, False),
    ("note", "IN", "a, ", {"note": ""}, True),
    ("note", "IN", "", {"note": ""}, True),
    ("priority", "IN", "high,", {}, True),
    # items read as the field's type
    ("id", "IN", "[1, 2]", {}, True),
    ("id", "IN", '["1", "2"]', {}, True),
    ("id", "IN", "1.0, 2", {}, True),
    ("id", "IN", "[1e0]", {}, True),
    ("id", "IN", "[2, 3]", {}, False),
    ("estimate", "IN", "3.50, 4", {}, True),
    ("done", "IN", "[false]", {}, True),
    ("done", "IN", "f, t", {}, True),
    ("done", "IN", "[true]", {}, False),
    ("due_at", "IN", "2025-07-01T17:00:00Z, 2025-07-02", {}, True),
    ("due_at", "IN", '["2025-07-02", "2025-07-03"]', {}, False),
    ("meta.points", "IN", "[5]", {}, True),
    ("meta.points", "IN", '["5"]', {}, True),
    ("meta.source", "IN", '["cli", "web"]', {}, True),
    ("tags.0", "IN", "backend, frontend", {}, True),
    ("priority", "IN", "[1, true]", {"priority": "1"}, True),
    # an item that cannot be read as the field's type: IN is false
    ("id", "IN", "1, abc", {}, False),
    ("id", "IN", "[1, null]", {}, False),
    ("id", "IN", "[1, [2]]", {}, False),
    ("done", "IN", "no, maybe", {}, False),
    # not equal to anything
    ("tags", "IN", "backend", {}, False),
    ("meta", "IN", "labels", {}, False),
    ("estimate", "IN", "1, 2", {"estimate": None}, False),
    ("nope", "IN", "x", {}, False),
    ("score", "IN", "1, 2", {"score": "abc"}, False),
)


@pytest.mark.parametrize(CASE_NAMES, IN_LISTS)
def test_in(field: str, operator: str, value: str, changes: dict[str, Any], expected: bool) -> None:
    """IN holds when the field equals an item of the JSON array or trimmed comma list."""
    assert holds(field, operator, value, event(**changes)) is expected


NOT_IN_LISTS = cases(
    ("priority", "NOT_IN", "low, urgent", {}, True),
    ("priority", "NOT_IN", '["low"]', {}, True),
    ("priority", "NOT_IN", "high", {}, False),
    ("priority", "NOT_IN", '["urgent", "high"]', {}, False),
    ("id", "NOT_IN", "[2, 3]", {}, True),
    ("id", "NOT_IN", "1.0", {}, False),
    ("estimate", "NOT_IN", "1, 2", {"estimate": None}, True),
    ("nope", "NOT_IN", "x", {}, True),
    ("tags", "NOT_IN", "backend", {}, True),
    ("score", "NOT_IN", "1, 2", {"score": "abc"}, True),
    # an unreadable item makes NOT_IN false too, whether or not the field is in the list
    ("id", "NOT_IN", "2, abc", {}, False),
    ("id", "NOT_IN", "1, abc", {}, False),
    ("id", "NOT_IN", "[2, null]", {}, False),
    ("done", "NOT_IN", "yes, maybe", {}, False),
)


@pytest.mark.parametrize(CASE_NAMES, NOT_IN_LISTS)
def test_not_in(
    field: str, operator: str, value: str, changes: dict[str, Any], expected: bool
) -> None:
    """NOT_IN is the negation of IN, except that an unreadable item makes both false."""
    assert holds(field, operator, value, event(**changes)) is expected


# --------------------------------------------------------------------------- IS_NULL

NULLS = cases(
    ("estimate", "IS_NULL", None, {"estimate": None}, True),
    ("nope", "IS_NULL", None, {}, True),
    ("meta.owner", "IS_NULL", None, {}, True),
    ("meta.labels.area.deeper", "IS_NULL", None, {}, True),
    ("tags.7", "IS_NULL", None, {}, True),
    ("payload.a", "IS_NULL", None, {"payload": {"a": None}}, True),
    ("priority", "IS_NULL", None, {}, False),
    ("done", "IS_NULL", None, {}, False),
    ("note", "IS_NULL", None, {"note": ""}, False),
    ("tags", "IS_NULL", None, {"tags": []}, False),
    ("priority", "IS_NULL", "ignored", {}, False),
    ("nope", "IS_NULL", "ignored", {}, True),
    ("estimate", "IS_NOT_NULL", None, {"estimate": None}, False),
    ("nope", "IS_NOT_NULL", None, {}, False),
    ("priority", "IS_NOT_NULL", None, {}, True),
    ("done", "IS_NOT_NULL", None, {}, True),
    ("score", "IS_NOT_NULL", None, {"score": "abc"}, True),
    ("meta.labels.area", "IS_NOT_NULL", "ignored", {}, True),
)


@pytest.mark.parametrize(CASE_NAMES, NULLS)
def test_is_null(
    field: str, operator: str, value: str | None, changes: dict[str, Any], expected: bool
) -> None:
    """IS_NULL holds for null or missing, IS_NOT_NULL otherwise; the value is ignored."""
    assert holds(field, operator, value, event(**changes)) is expected


# --------------------------------------------------------------------------- operator names


@pytest.mark.parametrize(
    ("operator", "value", "expected"),
    [
        ("=", "high", True),
        ("==", "high", True),
        ("!=", "high", False),
        ("<>", "high", False),
        ("contains", "ig", True),
        ("Contains", "x", False),
        ("not_contains", "ig", False),
        ("Not_Contains", "x", True),
        ("starts_with", "hi", True),
        ("Starts_With", "x", False),
        ("ends_with", "gh", True),
        ("ENDS_with", "x", False),
        ("in", "low, high", True),
        ("In", "low", False),
        ("not_in", "low", True),
        ("Not_In", "high", False),
        ("is_null", None, False),
        ("is_not_null", None, True),
        ("Is_Not_Null", None, True),
        ("matches", "^h", True),
        ("Matches", "^x", False),
        (" = ", "high", True),
    ],
)
def test_operator_names_are_case_insensitive(
    operator: str, value: str | None, expected: bool
) -> None:
    """Operator names match in any case (surrounding spaces ignored); `==` is `=`, `<>` is `!=`."""
    assert holds("priority", operator, value, event()) is expected


@pytest.mark.parametrize(
    ("operator", "value", "expected"),
    [(">", "3", True), ("<", "3", False), (">=", "4", False), ("<=", "4", True)],
)
def test_ordering_symbols(operator: str, value: str, expected: bool) -> None:
    """Each ordering symbol compiles and compares the number on the expected side."""
    assert holds("estimate", operator, value, event()) is expected


@pytest.mark.parametrize(
    ("operator", "value", "expected"),
    [
        ("changed", None, True),
        ("Changed_To", "done", True),
        ("changed_to", "open", False),
        ("CHANGED_from", "in_progress", True),
        ("changed_FROM", "open", False),
    ],
)
def test_change_operator_names_are_case_insensitive(
    operator: str, value: str | None, expected: bool
) -> None:
    """CHANGED, CHANGED_TO and CHANGED_FROM are recognised in any case."""
    assert holds("status", operator, value, event("update_event")) is expected


# --------------------------------------------------------------------------- CHANGED*

CHANGED = cases(
    ("status", "CHANGED", None, {}, True),
    ("done", "CHANGED", None, {}, True),
    ("tags", "CHANGED", None, {}, True),
    ("title", "CHANGED", None, {}, False),
    ("meta", "CHANGED", None, {}, False),
    ("estimate", "CHANGED", None, {}, False),
    ("meta.labels.area", "CHANGED", None, {}, False),
    ("tags.2", "CHANGED", None, {}, False),
    ("nope", "CHANGED", None, {}, False),
    ("new.status", "CHANGED", None, {}, True),
    ("status", "CHANGED", "ignored", {}, True),
    ("status", "CHANGED_TO", "done", {}, True),
    ("status", "CHANGED_TO", "DONE", {}, False),
    ("status", "CHANGED_TO", "in_progress", {}, False),
    ("status", "CHANGED_FROM", "in_progress", {}, True),
    ("status", "CHANGED_FROM", "done", {}, False),
    ("done", "CHANGED_TO", "yes", {}, True),
    ("done", "CHANGED_TO", "f", {}, False),
    ("done", "CHANGED_FROM", "f", {}, True),
    ("done", "CHANGED_FROM", "maybe", {}, False),
    ("title", "CHANGED_TO", "Write realtime contract", {}, False),
    ("estimate", "CHANGED_TO", "4.25", {}, False),
    ("tags", "CHANGED_TO", "shipped", {}, False),
)


@pytest.mark.parametrize(CASE_NAMES, CHANGED)
def test_changed_with_full_identity(
    field: str, operator: str, value: str | None, changes: dict[str, Any], expected: bool
) -> None:
    """CHANGED: old and new both have the field and differ; _TO/_FROM then compare with `=`."""
    assert holds(field, operator, value, event("update_event", **changes)) is expected


@pytest.mark.parametrize(
    ("field", "old", "new", "expected"),
    [
        pytest.param("status", None, "done", True, id="null to value"),
        pytest.param("status", "done", None, True, id="value to null"),
        pytest.param("status", None, None, False, id="null to null"),
        pytest.param("estimate", 4.25, "4.25", True, id="number to string"),
        pytest.param("estimate", 2.0, 2, False, id="2.0 to 2 is the same number"),
        pytest.param("payload", {"x": True}, {"x": 1}, True, id="true is not 1"),
        pytest.param(
            "payload", {"a": 1, "b": [1, 2]}, {"b": [1, 2], "a": 1}, False, id="key order"
        ),
        pytest.param("payload", [1, 2], [2, 1], True, id="array order"),
        pytest.param("payload", {"a": None}, {"a": None}, False, id="same nulls"),
        pytest.param("payload.a", {"a": None}, {"a": 0}, True, id="null key to 0"),
        pytest.param("payload.a", {}, {"a": 0}, False, id="key appears"),
    ],
)
def test_changed_compares_decoded_json(field: str, old: Any, new: Any, expected: bool) -> None:
    """CHANGED compares decoded JSON values; a key present with null counts as present."""
    column = field.split(".")[0]
    change = update(old={column: old}, new={column: new})
    assert holds(field, "CHANGED", None, change) is expected


@pytest.mark.parametrize(
    ("operator", "value", "expected"),
    [
        ("CHANGED_FROM", "done", False),
        ("CHANGED_FROM", "", False),
        ("CHANGED_TO", "done", True),
    ],
)
def test_changed_from_null(operator: str, value: str, expected: bool) -> None:
    """From a null old value CHANGED_TO can hold, CHANGED_FROM never: null is not `=` anything."""
    change = update(old={"status": None}, new={"status": "done"})
    assert holds("status", operator, value, change) is expected


@pytest.mark.parametrize(
    ("field", "operator", "value"),
    [
        ("status", "CHANGED", None),
        ("status", "CHANGED_TO", "in_progress"),
        ("status", "CHANGED_FROM", "done"),
        ("meta.labels.area", "CHANGED", None),
    ],
)
def test_changed_without_full_identity_is_false_and_reported(
    field: str, operator: str, value: str | None
) -> None:
    """On an UPDATE whose old row is just the primary key, CHANGED* is false and asks for FULL."""
    compiled = compile_flow(make_flow((field, operator, value)))
    assert compiled.evaluate(event("update_event_default_identity")) == (False, True)
    _, needs_full_identity = compiled.evaluate(event("update_event"))
    assert needs_full_identity is False


@pytest.mark.parametrize(
    ("field", "name"),
    [
        ("id", "update_event_default_identity"),
        ("nope", "update_event_default_identity"),
        ("status", "insert_event"),
        ("status", "delete_event"),
        ("status", "delete_event_default_identity"),
    ],
)
def test_changed_not_reported_when_identity_is_not_the_reason(field: str, name: str) -> None:
    """CHANGED is false without a report for a field old has, one no record has, and non-UPDATEs."""
    compiled = compile_flow(make_flow((field, "CHANGED", None)))
    assert compiled.evaluate(event(name)) == (False, False)


@pytest.mark.parametrize("operator", ["CHANGED_TO", "CHANGED_FROM"])
@pytest.mark.parametrize("name", ["insert_event", "delete_event"])
def test_changed_to_and_from_false_outside_update(operator: str, name: str) -> None:
    """CHANGED_TO and CHANGED_FROM are false on INSERT and DELETE whatever the value."""
    assert holds("status", operator, "done", event(name)) is False
    assert holds("status", operator, "open", event(name)) is False


def test_changed_reported_when_column_absent_from_both_records() -> None:
    """An unchanged TOASTed column, absent from old and new under DEFAULT identity, is reported."""
    data = wire_data("update_event_default_identity")
    del data["record"]["meta"]
    compiled = compile_flow(make_flow(("meta", "CHANGED", None)))
    assert compiled.evaluate(ChangeEvent.model_validate(data)) == (False, True)


def test_classification_lists_flows_needing_full_identity() -> None:
    """classify() names the flows whose CHANGED* rule met an old row without the field."""
    flows = [
        make_flow(("status", "CHANGED_TO", "done"), flow_id=3),
        make_flow(("priority", "=", "high"), flow_id=1),
        make_flow(("status", "CHANGED", None), ("priority", "=", "high"), flow_id=2, match="ANY"),
    ]
    index, errors = build_index(flows)
    assert errors == []
    default = index.classify(event("update_event_default_identity"))
    assert [f.flow_id for f in default.flows] == [1, 2]
    assert [f.flow_id for f in default.needs_full_identity] == [2, 3]
    full = index.classify(event("update_event"))
    assert [f.flow_id for f in full.flows] == [1, 2, 3]
    assert full.needs_full_identity == ()


# --------------------------------------------------------------------------- records and paths


@pytest.mark.parametrize(
    ("name", "field", "operator", "value", "expected"),
    [
        ("update_event", "old.status", "=", "in_progress", True),
        ("update_event", "old.status", "=", "done", False),
        ("update_event", "new.status", "=", "done", True),
        ("update_event", "status", "=", "done", True),
        ("update_event", "old.tags.1", "=", "realtime", True),
        ("update_event", "new.tags.2", "=", "shipped", True),
        ("update_event", "old.tags.2", "IS_NULL", None, True),
        ("update_event_default_identity", "old.status", "IS_NULL", None, True),
        ("update_event_default_identity", "old.id", "=", "1", True),
        ("insert_event", "old.status", "IS_NULL", None, True),
        ("insert_event", "new.status", "=", "open", True),
        ("delete_event", "status", "=", "done", True),
        ("delete_event", "status", "=", "open", False),
        ("delete_event", "old.status", "=", "done", True),
        ("delete_event", "new.status", "IS_NULL", None, True),
        ("delete_event", "tags", "CONTAINS", "shipped", True),
        ("delete_event_default_identity", "id", "=", "2", True),
        ("delete_event_default_identity", "status", "IS_NULL", None, True),
    ],
)
def test_record_addressed(
    name: str, field: str, operator: str, value: str | None, expected: bool
) -> None:
    """Fields read new on INSERT/UPDATE and old on DELETE, unless prefixed with old. or new."""
    assert holds(field, operator, value, event(name)) is expected


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("old", "yes", True),
        ("old", "no", False),
        ("new", "x", False),
    ],
)
def test_column_named_old_is_a_column(field: str, value: str, expected: bool) -> None:
    """A field that is just `old` (or `new`) names a column, not a record."""
    assert holds(field, "=", value, event(old="yes")) is expected


@pytest.mark.parametrize(
    ("field", "changes", "expected"),
    [
        ("meta.labels.area", {}, "infra"),
        ("payload.items.1.name", {"payload": {"items": [{"name": "a"}, {"name": "b"}]}}, "b"),
        ("payload.0", {"payload": {"0": "zero"}}, "zero"),
        ("payload.0.0", {"payload": [["deep"]]}, "deep"),
        ("tags.0", {}, "backend"),
        ("grid.1.0", {"grid": [[1, 2], [3, 4]]}, "3"),
    ],
)
def test_paths_reach_nested_values(field: str, changes: dict[str, Any], expected: str) -> None:
    """Dotted paths key into objects, numeric segments index arrays (and key objects)."""
    assert holds(field, "=", expected, event(**changes))
    assert holds(field, "IS_NOT_NULL", None, event(**changes))


@pytest.mark.parametrize(
    "field",
    [
        "meta.owner.email",
        "tags.2",
        "tags.-1",
        "tags.first",
        "title.0",
        "estimate.x",
        "nope.x",
        "meta.points.x",
    ],
)
def test_paths_that_lead_nowhere_are_missing(field: str) -> None:
    """A key or index that is not there resolves to missing: null for IS_NULL, never `=`."""
    assert holds(field, "IS_NULL", None, event())
    assert not holds(field, "=", "x", event())
    assert holds(field, "!=", "x", event())


# --------------------------------------------------------------------------- wrong-type fields


@pytest.mark.parametrize(
    ("field", "unreadable", "value"),
    [
        ("score", "abc", "1"),
        ("score", True, "1"),
        ("score", [1], "1"),
        ("estimate", "NaN", "1"),
        ("ratio", "Infinity", "1"),
        ("done", "perhaps", "true"),
        ("due_at", "not a time", "2025-07-01"),
        ("due_at", 5, "2025-07-01"),
        ("tags", "backend", "backend"),
    ],
)
def test_unreadable_field_value_takes_part_in_no_comparison(
    field: str, unreadable: Any, value: str
) -> None:
    """A field unreadable as its own column's type: `=` `>` IN CONTAINS false, negations true."""
    change = event(**{field: unreadable})
    for operator in ("=", ">", "<", ">=", "<=", "IN", "CONTAINS"):
        assert not holds(field, operator, value, change), operator
    for operator in ("!=", "NOT_IN", "NOT_CONTAINS", "IS_NOT_NULL"):
        assert holds(field, operator, value, change), operator


# --------------------------------------------------------------------------- ALL / ANY


@pytest.mark.parametrize(
    ("match", "rules", "expected"),
    [
        ("ALL", [("priority", "=", "high"), ("status", "=", "open")], True),
        ("ALL", [("priority", "=", "high"), ("status", "=", "done")], False),
        ("ALL", [("priority", "=", "low"), ("status", "=", "done")], False),
        ("all", [("priority", "=", "high"), ("status", "=", "open")], True),
        ("ANY", [("priority", "=", "low"), ("status", "=", "open")], True),
        ("ANY", [("priority", "=", "high"), ("status", "=", "done")], True),
        ("ANY", [("priority", "=", "low"), ("status", "=", "done")], False),
        ("any", [("priority", "=", "low"), ("status", "=", "open")], True),
        (" Any ", [("priority", "=", "low")], False),
        ("ALL", [], True),
        ("ANY", [], True),
    ],
)
def test_all_and_any(match: str, rules: list[RuleSpec], expected: bool) -> None:
    """ALL needs every rule, ANY at least one; a flow without rules matches either way."""
    compiled = compile_flow(make_flow(*rules, match=match))
    assert compiled.evaluate(event()) == (expected, False)


def test_flow_default_match_is_all() -> None:
    """A flow that does not say `match` needs all its rules."""
    flow = Flow(
        flow_id=1,
        name="f",
        trigger_table="tasks",
        rules=(
            Rule(field="priority", operator="=", value="high"),
            Rule(field="id", operator="=", value="2"),
        ),
    )
    assert compile_flow(flow).evaluate(event()) == (False, False)


# --------------------------------------------------------------------------- event shapes


@pytest.mark.parametrize(
    ("name", "field", "operator", "value", "expected"),
    [
        ("insert_event", "priority", "=", "high", True),
        ("insert_event", "priority", "=", "low", False),
        ("insert_event", "estimate", "=", "3.50", True),
        ("insert_event", "estimate", ">", "4", False),
        ("insert_event", "id", "IN", "1, 2", True),
        ("insert_event", "done", "=", "no", True),
        ("insert_event", "done", "=", "yes", False),
        ("insert_event", "tags", "CONTAINS", "backend", True),
        ("insert_event", "tags.1", "=", "realtime", True),
        ("insert_event", "old.status", "IS_NULL", None, True),
        # without column types a timestamp is just the JSON text
        ("insert_event", "due_at", "=", ISO, True),
        ("insert_event", "due_at", "=", "2025-07-01T17:00:00Z", False),
        ("update_event", "status", "CHANGED_TO", "done", True),
        ("update_event", "title", "CHANGED", None, False),
        ("update_event_default_identity", "status", "CHANGED", None, False),
        ("delete_event", "status", "=", "done", True),
        ("delete_event", "new.status", "IS_NULL", None, True),
        ("delete_event_default_identity", "id", "=", "2", True),
    ],
)
def test_supabase_js_shape(
    name: str, field: str, operator: str, value: str | None, expected: bool
) -> None:
    """Events in the supabase-js shape (eventType/new/old with {}) read like wire events."""
    assert holds(field, operator, value, supabase_js(name)) is expected


@pytest.mark.parametrize(
    "name",
    [
        "insert_event",
        "update_event",
        "update_event_default_identity",
        "delete_event",
        "delete_event_default_identity",
    ],
)
def test_both_shapes_classify_alike(name: str) -> None:
    """The same change in wire and supabase-js shape matches the same flows."""
    index, _ = build_index(
        [
            make_flow(("priority", "=", "high"), flow_id=1),
            make_flow(("status", "CHANGED_TO", "done"), flow_id=2),
            make_flow(("estimate", ">=", "4"), flow_id=3),
            make_flow(("tags", "CONTAINS", "shipped"), flow_id=4),
            make_flow(("id", "IN", "[2]"), flow_id=5),
            make_flow(flow_id=6, trigger_event="DELETE"),
            make_flow(("status", "CHANGED", None), flow_id=7),
        ]
    )
    assert index.classify(supabase_js(name)) == index.classify(event(name))


# --------------------------------------------------------------------------- the index


@pytest.mark.parametrize(
    ("trigger_event", "matched_types"),
    [
        ("*", {"INSERT", "UPDATE", "DELETE"}),
        ("INSERT", {"INSERT"}),
        ("update", {"UPDATE"}),
        ("Delete", {"DELETE"}),
    ],
)
def test_trigger_event(trigger_event: str, matched_types: set[str]) -> None:
    """A flow sees the events of its trigger_event (any case), or every type for `*`."""
    index, _ = build_index([make_flow(trigger_event=trigger_event)])
    for name, change_type in [
        ("insert_event", "INSERT"),
        ("update_event", "UPDATE"),
        ("delete_event", "DELETE"),
    ]:
        matched = bool(index.classify(event(name)).flows)
        assert matched is (change_type in matched_types), change_type


@pytest.mark.parametrize(
    ("trigger_table", "schema", "expected"),
    [
        ("tasks", "public", True),
        ("public.tasks", "public", True),
        ("private.tasks", "public", False),
        ("private.tasks", "private", True),
        ("tasks", "private", False),
        ("Tasks", "public", False),
        ("other", "public", False),
    ],
)
def test_trigger_table(trigger_table: str, schema: str, expected: bool) -> None:
    """trigger_table `table` is in schema public, `schema.table` names both exactly."""
    data = wire_data("insert_event")
    data["schema"] = schema
    index, _ = build_index([make_flow(trigger_table=trigger_table)])
    assert bool(index.classify(ChangeEvent.model_validate(data)).flows) is expected


def _never_called(view: EventView) -> tuple[bool, bool]:
    raise AssertionError("the index consulted a flow of another table or type")


def test_index_never_consults_other_tables_flows() -> None:
    """classify() only evaluates flows bound to the event's schema, table and type."""
    decoys = [
        CompiledFlow(make_flow(flow_id=1), ("public", "other", "INSERT"), _never_called),
        CompiledFlow(make_flow(flow_id=2), ("private", "tasks", "*"), _never_called),
        CompiledFlow(make_flow(flow_id=3), ("public", "tasks", "UPDATE"), _never_called),
        CompiledFlow(make_flow(flow_id=4), ("public", "tasks", "DELETE"), _never_called),
    ]
    wanted = compile_flow(make_flow(flow_id=5, trigger_event="INSERT"))
    index = FlowIndex([*decoys, wanted])
    assert index.classify(event()) == Classification((wanted.flow,), ())


def test_index_with_no_flow_for_the_table_matches_nothing() -> None:
    """An event of a table no flow names yields an empty classification."""
    index, _ = build_index([make_flow(trigger_table="other")])
    assert index.classify(event()) == Classification((), ())


def test_disabled_flows_are_left_out() -> None:
    """Disabled flows are not indexed, never match and are not subscribed to."""
    index, errors = build_index(
        [
            make_flow(flow_id=1, is_enabled=False),
            make_flow(flow_id=2, trigger_table="audit", is_enabled=False),
            make_flow(flow_id=3),
        ]
    )
    assert errors == []
    assert len(index) == 1
    assert [f.flow_id for f in index.flows] == [3]
    assert index.bindings() == {("public", "tasks", "*")}
    assert [f.flow_id for f in index.classify(event()).flows] == [3]


def test_disabled_flow_with_bad_definition_is_still_reported() -> None:
    """build_index reports a broken definition even when the flow is disabled."""
    index, errors = build_index([make_flow(("x", "LIKE", "y"), flow_id=9, is_enabled=False)])
    assert len(index) == 0
    assert [e.flow_id for e in errors] == [9]


def test_matched_flows_ascending_id_whatever_the_input_order() -> None:
    """Matched and indexed flows come in ascending flow_id order."""
    index, _ = build_index(
        [
            make_flow(flow_id=30),
            make_flow(flow_id=10, trigger_event="INSERT"),
            make_flow(("priority", "=", "low"), flow_id=5),
            make_flow(flow_id=20, trigger_table="public.tasks"),
        ]
    )
    assert [f.flow_id for f in index.flows] == [5, 10, 20, 30]
    assert [f.flow_id for f in index.classify(event()).flows] == [10, 20, 30]
    assert [f.flow_id for f in index.classify(event("update_event")).flows] == [20, 30]


def test_bindings_are_distinct() -> None:
    """bindings() gives each (schema, table, trigger_event) once, trigger_event uppercased."""
    index, _ = build_index(
        [
            make_flow(flow_id=1, trigger_event="insert"),
            make_flow(flow_id=2, trigger_event="INSERT"),
            make_flow(flow_id=3, trigger_table="public.tasks"),
            make_flow(flow_id=4, trigger_table="audit.log", trigger_event="delete"),
        ]
    )
    assert len(index) == 4
    assert index.bindings() == {
        ("public", "tasks", "INSERT"),
        ("public", "tasks", "*"),
        ("audit", "log", "DELETE"),
    }


def test_build_index_keeps_serving_the_good_flows() -> None:
    """build_index indexes the flows that compile and returns one error per refused flow."""
    index, errors = build_index(
        [
            make_flow(("priority", "=", "high"), flow_id=1),
            make_flow(("title", "MATCHES", "("), flow_id=2),
            make_flow(("priority", "IN", "[1,2"), flow_id=3),
            make_flow(("priority", "=", "high"), flow_id=4, match="MOST"),
        ]
    )
    assert [f.flow_id for f in index.flows] == [1]
    assert [e.flow_id for e in errors] == [2, 3, 4]
    assert all(isinstance(e, FlowDefinitionError) for e in errors)
    assert [f.flow_id for f in index.classify(event()).flows] == [1]


# --------------------------------------------------------------------------- bad definitions

BAD_RULES = [
    # (rules, reason); the bad rule comes second, after a good one
    pytest.param([("priority", "LIKE", "x")], "unknown operator", id="unknown operator"),
    pytest.param([("priority", "=~", "x")], "unknown operator", id="unknown symbol"),
    pytest.param([("priority", "NOT IN", "x")], "unknown operator", id="space, not underscore"),
    pytest.param([("title", "MATCHES", "(")], "does not compile", id="unbalanced regex"),
    pytest.param([("title", "MATCHES", "a{2,1}")], "does not compile", id="bad repeat"),
    pytest.param([("id", "IN", "[1,2")], "neither a JSON array", id="unclosed array"),
    pytest.param([("id", "IN", '{"a":1}')], "neither a JSON array", id="JSON object"),
    pytest.param([("id", "NOT_IN", " [1,,2]")], "neither a JSON array", id="broken array"),
    *(
        pytest.param([("id", operator, None)], "needs a value", id=f"{operator} without value")
        for operator in (
            "=",
            "!=",
            ">",
            "<=",
            "IN",
            "NOT_IN",
            "CONTAINS",
            "NOT_CONTAINS",
            "STARTS_WITH",
            "ENDS_WITH",
            "MATCHES",
            "CHANGED_TO",
            "CHANGED_FROM",
        )
    ),
    pytest.param([("meta..area", "=", "x")], "empty path segment", id="double dot"),
    pytest.param([("old.", "=", "x")], "empty path segment", id="old. alone"),
    pytest.param([("meta.", "=", "x")], "empty path segment", id="trailing dot"),
]


@pytest.mark.parametrize(("rules", "reason"), BAD_RULES)
def test_compile_flow_refuses_bad_rules(rules: list[RuleSpec], reason: str) -> None:
    """A bad rule is refused with FlowDefinitionError naming the flow, the rule and the reason."""
    flow = make_flow(("id", "=", "1"), *rules, flow_id=42)
    with pytest.raises(FlowDefinitionError) as raised:
        compile_flow(flow)
    where = f"rule #2 (field {rules[0][0]})"
    assert (raised.value.flow_id, raised.value.where) == (42, where)
    assert reason in raised.value.reason
    assert str(raised.value).startswith(f"flow 42: {where}: ")


@pytest.mark.parametrize("field", ["", "  "])
def test_compile_flow_refuses_empty_field(field: str) -> None:
    """An empty or blank field is refused."""
    with pytest.raises(FlowDefinitionError, match="the field is empty"):
        compile_flow(make_flow((field, "=", "x")))


BAD_SETTINGS = [
    # (setting, value, reason)
    pytest.param("match", "MOST", "is not ALL or ANY", id="unknown match"),
    pytest.param("match", "", "is not ALL or ANY", id="empty match"),
    pytest.param("trigger_event", "TRUNCATE", "is not INSERT, UPDATE, DELETE or *", id="TRUNCATE"),
    pytest.param("trigger_event", "", "is not INSERT, UPDATE, DELETE or *", id="empty event"),
    pytest.param("trigger_table", "", "is not a table name", id="empty table"),
    pytest.param("trigger_table", "a.b.c", "is not a table name", id="three parts"),
    pytest.param("trigger_table", ".tasks", "is not a table name", id="empty schema"),
    pytest.param("trigger_table", "public.", "is not a table name", id="empty table part"),
    pytest.param("trigger_table", " tasks", "is not a table name", id="leading space"),
]


@pytest.mark.parametrize(("setting", "value", "reason"), BAD_SETTINGS)
def test_compile_flow_refuses_bad_settings(setting: str, value: str, reason: str) -> None:
    """A bad match, trigger_event or trigger_table is refused, naming the setting."""
    changed: dict[str, Any] = {setting: value}
    flow = dataclasses.replace(make_flow(flow_id=42), **changed)
    with pytest.raises(FlowDefinitionError) as raised:
        compile_flow(flow)
    assert (raised.value.flow_id, raised.value.where) == (42, setting)
    assert reason in raised.value.reason


def test_refusal_names_rule_by_id_when_it_has_one() -> None:
    """A rule with a rule_id is named `rule <id>` in the error."""
    flow = Flow(
        flow_id=3,
        name="f",
        trigger_table="tasks",
        rules=(Rule(rule_id=7, field="priority", operator="LIKE", value="x"),),
    )
    with pytest.raises(FlowDefinitionError) as raised:
        compile_flow(flow)
    assert raised.value.where == "rule 7"
    assert "'LIKE'" in raised.value.reason


@pytest.mark.parametrize(
    "rule",
    [
        ("priority", "IS_NULL", None),
        ("priority", "IS_NOT_NULL", None),
        ("status", "CHANGED", None),
        ("priority", "=", ""),
        ("priority", "IN", ""),
        ("priority", "IN", "5"),
        ("priority", "IN", '"high"'),
        ("priority", "IN", " [] "),
        ("old", "=", "x"),
        ("new.meta.0", "=", "x"),
    ],
)
def test_compile_flow_accepts_good_rules(rule: RuleSpec) -> None:
    """Value-free operators, empty values, comma lists and a column named old all compile."""
    assert compile_flow(make_flow(rule)).flow.rules[0].field == rule[0]


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("match", "any"),
        ("match", "All"),
        ("trigger_event", "*"),
        ("trigger_event", "insert"),
        ("trigger_event", "Delete"),
        ("trigger_table", "audit.log"),
    ],
)
def test_compile_flow_accepts_good_settings(setting: str, value: str) -> None:
    """match and trigger_event in any case and a `schema.table` trigger_table compile."""
    changed: dict[str, Any] = {setting: value}
    flow = dataclasses.replace(make_flow(), **changed)
    assert compile_flow(flow).flow is flow


# --------------------------------------------------------------------------- validate

TASK_COLUMNS = {c["name"]: c["type"] for c in wire_data("insert_event")["columns"]}


@pytest.mark.parametrize(
    ("field", "operator", "value", "problem"),
    [
        ("estimate", ">", "abc", "'abc' cannot be read as a number"),
        ("estimate", ">", " 3 ", None),
        ("id", "=", "1e3", None),
        ("id", "!=", "one", "cannot be read as a number"),
        ("done", "=", "maybe", "'maybe' cannot be read as a boolean"),
        ("done", "=", "YES", None),
        ("due_at", ">", "tomorrow", "'tomorrow' cannot be read as an instant"),
        ("due_at", ">", "2025-01-01", None),
        ("due_on", "<", "2025-13-01", "cannot be read as an instant"),
        ("priority", "=", "anything at all", None),
        ("assignee", "=", "not-a-uuid", None),
        ("kind", "=", "whatever", None),
        ("nope", "=", "x", "column 'nope' does not exist"),
        ("old.nope", "=", "x", "column 'nope' does not exist"),
        ("nope", "IS_NULL", None, "column 'nope' does not exist"),
        ("nope.deeper", "=", "x", "column 'nope' does not exist"),
        ("new.estimate", ">", "abc", "cannot be read as a number"),
        ("old.done", "CHANGED_FROM", "maybe", "cannot be read as a boolean"),
        ("estimate", "CHANGED_TO", "lots", "cannot be read as a number"),
        ("meta.points", ">", "abc", None),
        ("payload.x", "=", "abc", None),
        ("tags", "CONTAINS", "anything", None),
        ("codes", "CONTAINS", "abc", "the elements of column codes (int4)"),
        ("codes", "NOT_CONTAINS", "2", None),
        ("codes.0", "=", "abc", "the elements of column codes"),
        ("codes.0", "=", "2", None),
        ("codes.0.x", "=", "abc", None),
        ("id", "IN", "1, x", "'x' cannot be read as a number"),
        ("id", "NOT_IN", "[1, 2]", None),
        ("id", "IN", "[1, null]", "can never equal"),
        ("estimate", "IS_NULL", "abc", None),
        ("estimate", "CHANGED", "abc", None),
        ("estimate", "STARTS_WITH", "abc", None),
        ("estimate", "MATCHES", "abc", None),
        ("estimate", "CONTAINS", "abc", None),
        ("estimate", "LIKE", "abc", None),
        ("estimate", "=", None, None),
        ("", "=", "x", None),
    ],
)
def test_check_rule_against_columns(
    field: str, operator: str, value: str | None, problem: str | None
) -> None:
    """validate reports a missing column or a value unreadable as the addressed column's type."""
    rule = Rule(field=field, operator=operator, value=value)
    found = check_rule_against_columns(rule, TASK_COLUMNS)
    if problem is None:
        assert found is None
    else:
        assert found is not None
        assert problem in found


# --------------------------------------------------------------------------- robustness

ODD_VALUES: list[Any] = [
    None,
    "",
    " ",
    "NaN",
    "Infinity",
    "-Infinity",
    "1e99999999999999999999",
    "\u0661\u0662",
    "2025-13-45",
    "9999-12-31T23:59:59-23:59",
    "0001-01-01T00:00:00+23:59",
    float("nan"),
    float("inf"),
    10**40,
    -0.0,
    True,
    [],
    {},
    [[[]]],
    {"a": {"b": [None]}},
    [None, {"x": 1}],
]
ODD_RULES: list[RuleSpec] = [
    (field, operator, value)
    for field in ("estimate", "done", "due_at", "tags", "meta", "meta.a.b.0", "tags.0", "score")
    for operator, value in [
        ("=", "1"),
        ("!=", "x"),
        (">", "1e99999999999999999999"),
        ("<", "2025-01-01"),
        ("CONTAINS", "1"),
        ("NOT_CONTAINS", "a"),
        ("STARTS_WITH", "1"),
        ("MATCHES", "^1"),
        ("IN", "[1, null, []]"),
        ("NOT_IN", "a,,b"),
        ("IS_NULL", None),
        ("CHANGED", None),
        ("CHANGED_TO", "NaN"),
        ("CHANGED_FROM", "true"),
    ]
]


@pytest.mark.parametrize("odd", ODD_VALUES, ids=repr)
def test_classify_never_raises_on_odd_values(odd: Any) -> None:
    """Whatever a record holds, classify() answers instead of raising."""
    flows = [make_flow(rule, flow_id=n) for n, rule in enumerate(ODD_RULES, start=1)]
    flows.append(make_flow(*ODD_RULES, flow_id=len(ODD_RULES) + 1, match="ANY"))
    index, errors = build_index(flows)
    assert errors == []
    fields = {"estimate", "done", "due_at", "tags", "meta", "score"}
    for name in ("insert_event", "update_event", "delete_event"):
        result = index.classify(event(name, **dict.fromkeys(fields, odd)))
        assert isinstance(result, Classification)
    changed = update(old=dict.fromkeys(fields, odd), new={field: [odd] for field in fields})
    assert isinstance(index.classify(changed), Classification)
