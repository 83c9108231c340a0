"""A plainly written evaluator of `shared/spec/rules.md`: the baseline, and the oracle.

Written from the spec alone, sharing no code with `flowd.rules`: for every event it
looks at every flow (or, bucketed, every flow of the event's table and type) and
interprets each rule from its text, reading `rule.value` again each time. It is what a
straightforward rule engine does, and an independent reading of the contract against
which the property test checks flowd.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from flowd.models import ChangeEvent, Flow, Rule

__all__ = ["BucketedNaive", "flow_matches", "naive_classify"]


class _Missing:
    pass


MISSING = _Missing()
NUMBER_TYPES = {"int2", "int4", "int8", "numeric", "float4", "float8"}
INSTANT_TYPES = {"timestamptz", "timestamp", "date"}
TRUE_WORDS = {"true", "t", "yes", "1"}
FALSE_WORDS = {"false", "f", "no", "0"}
NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


# --------------------------------------------------------------------------- reading text


def as_number(value: Any) -> Decimal | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        value = repr(value)
    if not isinstance(value, str) or not NUMBER.fullmatch(value.strip()):
        return None
    try:
        number = Decimal(value.strip())
    except InvalidOperation:
        return None
    return number if number.is_finite() else None


def as_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        word = value.strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
    return None


def as_instant(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        instant = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    return instant if instant.tzinfo else instant.replace(tzinfo=UTC)


def as_text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


READERS: dict[str, Callable[[Any], Any]] = {
    "number": as_number,
    "bool": as_bool,
    "instant": as_instant,
    "text": as_text,
}


# --------------------------------------------------------------------------- the field


def type_of(value: Any, typname: str | None) -> str:
    """number, bool, instant, text, array, object or null: from the column, else the JSON."""
    if typname is not None and typname not in {"json", "jsonb"}:
        if typname.startswith("_"):
            return "array"
        if typname in NUMBER_TYPES:
            return "number"
        if typname == "bool":
            return "bool"
        if typname in INSTANT_TYPES:
            return "instant"
        return "text"
    if value is None or value is MISSING:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "array"
    return "object"


def lookup(event: ChangeEvent, field: str) -> tuple[Any, str | None]:
    """The addressed value (MISSING if absent) and its Postgres type when known."""
    parts = field.split(".")
    record = event.old if event.type == "DELETE" else event.new
    if len(parts) > 1 and parts[0] == "old":
        record, parts = event.old, parts[1:]
    elif len(parts) > 1 and parts[0] == "new":
        record, parts = event.new, parts[1:]
    types = {column.name: column.type for column in event.columns}
    value = record.get(parts[0], MISSING)
    typname = types.get(parts[0])
    for part in parts[1:]:
        if isinstance(value, dict):
            value, typname = value.get(part, MISSING), None
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
            if typname is None or not typname.startswith("_"):
                typname = None
            elif not isinstance(value, list):
                typname = typname[1:]
        else:
            value, typname = MISSING, None
    return value, typname


# --------------------------------------------------------------------------- comparisons

# Each returns True, False, or None for "rule.value cannot be read as the field's type",
# which makes a rule and its negation both false.


def equals(value: Any, typname: str | None, text: str) -> bool | None:
    kind = type_of(value, typname)
    if kind in {"array", "object", "null"}:
        return False
    wanted = READERS[kind](text)
    if wanted is None:
        return None
    if value is None or value is MISSING:
        return False
    actual = READERS[kind](value)
    return actual is not None and actual == wanted


def ordered(value: Any, typname: str | None, text: str, operator: str) -> bool:
    kind = type_of(value, typname)
    if kind not in {"number", "instant", "text"} or value is None or value is MISSING:
        return False
    if kind == "text" and as_number(text) is not None:
        return False
    actual, wanted = READERS[kind](value), READERS[kind](text)
    if actual is None or wanted is None:
        return False
    if operator == ">":
        return bool(actual > wanted)
    if operator == "<":
        return bool(actual < wanted)
    if operator == ">=":
        return bool(actual >= wanted)
    return bool(actual <= wanted)


def contains(value: Any, typname: str | None, text: str) -> bool | None:
    kind = type_of(value, typname)
    if kind == "text":
        return isinstance(value, str) and text in value
    if kind == "object":
        return isinstance(value, dict) and text in value
    if kind != "array" or not isinstance(value, list):
        return False
    element_type = typname[1:] if typname and typname.startswith("_") else None
    if element_type is not None:
        element_kind = type_of(None, element_type)
        if element_kind != "text" and READERS[element_kind](text) is None:
            return None
    for element in value:
        if equals(element, typname if isinstance(element, list) else element_type, text):
            return True
    return False


def in_items(text: str) -> list[Any]:
    """The IN list's items as text; None stands for an item no type can read."""
    if text.strip().startswith("["):
        items = json.loads(text, parse_int=str, parse_float=str)
        result: list[Any] = []
        for item in items:
            if isinstance(item, bool):
                result.append("true" if item else "false")
            elif isinstance(item, str):
                result.append(item)
            else:
                result.append(None)
        return result
    return [item.strip() for item in text.split(",")]


def is_in(value: Any, typname: str | None, text: str) -> bool | None:
    kind = type_of(value, typname)
    if kind in {"array", "object", "null"}:
        return False
    items = in_items(text)
    if any(item is None or READERS[kind](item) is None for item in items):
        return None
    return any(equals(value, typname, item) for item in items)


def changed(event: ChangeEvent, field: str) -> bool:
    if event.type != "UPDATE":
        return False
    path = field.split(".")
    if len(path) > 1 and path[0] in {"old", "new"}:
        path = path[1:]
    old_value = _walk(event.old, path)
    new_value = _walk(event.new, path)
    if old_value is MISSING or new_value is MISSING:
        return False
    return not same_json(old_value, new_value)


def _walk(record: dict[str, Any], path: list[str]) -> Any:
    value: Any = record.get(path[0], MISSING)
    for part in path[1:]:
        if isinstance(value, dict):
            value = value.get(part, MISSING)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return MISSING
    return value


def same_json(left: Any, right: Any) -> bool:
    if isinstance(left, bool) or isinstance(right, bool):
        return left is right
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(map(same_json, left, right))
    if isinstance(left, dict) and isinstance(right, dict):
        return left.keys() == right.keys() and all(same_json(left[k], right[k]) for k in left)
    if isinstance(left, int | float) and isinstance(right, int | float):
        return left == right
    return type(left) is type(right) and bool(left == right)


# --------------------------------------------------------------------------- rules and flows


Check = Callable[[Any, str | None, str], bool | None]
# The operators read as a three-valued check of the value, and the verdict that makes each hold.
_VERDICTS: dict[str, tuple[Check, bool]] = {
    "=": (equals, True),
    "!=": (equals, False),
    "CONTAINS": (contains, True),
    "NOT_CONTAINS": (contains, False),
    "IN": (is_in, True),
    "NOT_IN": (is_in, False),
}
_TEXT_TESTS: dict[str, Callable[[str, str], bool]] = {
    "STARTS_WITH": str.startswith,
    "ENDS_WITH": str.endswith,
    "MATCHES": lambda value, text: re.search(text, value) is not None,
}


def rule_holds(rule: Rule, event: ChangeEvent) -> bool:
    operator = rule.operator.strip().upper()
    operator = {"==": "=", "<>": "!="}.get(operator, operator)
    text = rule.value or ""
    if operator in {"CHANGED", "CHANGED_TO", "CHANGED_FROM"}:
        return _change_holds(rule.field, operator, text, event)
    value, typname = lookup(event, rule.field)
    if operator in {"IS_NULL", "IS_NOT_NULL"}:
        return (value is None or value is MISSING) == (operator == "IS_NULL")
    if operator in _VERDICTS:
        check, holds = _VERDICTS[operator]
        return check(value, typname, text) is holds
    if operator in {">", "<", ">=", "<="}:
        return ordered(value, typname, text, operator)
    if operator in _TEXT_TESTS:
        is_text = type_of(value, typname) == "text" and isinstance(value, str)
        return is_text and _TEXT_TESTS[operator](value, text)
    raise ValueError(f"unknown operator {rule.operator!r}")


def _change_holds(field: str, operator: str, text: str, event: ChangeEvent) -> bool:
    """CHANGED, and CHANGED_TO / CHANGED_FROM: changed, and the new / old value is `text`."""
    if not changed(event, field):
        return False
    if operator == "CHANGED":
        return True
    bare = field.split(".", 1)[1] if field.startswith(("old.", "new.")) else ""
    prefix = "old." if operator == "CHANGED_FROM" else "new."
    return equals(*lookup(event, prefix + (bare or field)), text) is True


def sees(flow: Flow, event: ChangeEvent) -> bool:
    """Whether the flow looks at this event at all: enabled, its table, its type."""
    schema, _, table = flow.trigger_table.rpartition(".")
    trigger_event = flow.trigger_event.strip().upper()
    return (
        flow.is_enabled
        and (schema or "public", table) == (event.schema_name, event.table)
        and trigger_event in {"*", event.type}
    )


def flow_matches(flow: Flow, event: ChangeEvent) -> bool:
    if not flow.rules:
        return True
    verdicts = (rule_holds(rule, event) for rule in flow.rules)
    return any(verdicts) if flow.match.strip().upper() == "ANY" else all(verdicts)


def naive_classify(flows: Sequence[Flow], event: ChangeEvent) -> list[int]:
    """Every flow, every event: the ids of the matching flows, ascending."""
    return sorted(f.flow_id for f in flows if sees(f, event) and flow_matches(f, event))


class BucketedNaive:
    """The naive evaluator, but with flows grouped by (schema, table, type) up front."""

    def __init__(self, flows: Iterable[Flow]) -> None:
        self._buckets: dict[tuple[str, str, str], list[Flow]] = {}
        for flow in sorted(flows, key=lambda f: f.flow_id):
            if not flow.is_enabled:
                continue
            schema, _, table = flow.trigger_table.rpartition(".")
            trigger_event = flow.trigger_event.strip().upper()
            for change_type in ("INSERT", "UPDATE", "DELETE"):
                if trigger_event in {"*", change_type}:
                    key = (schema or "public", table, change_type)
                    self._buckets.setdefault(key, []).append(flow)

    def classify(self, event: ChangeEvent) -> list[int]:
        flows = self._buckets.get((event.schema_name, event.table, event.type), ())
        return [flow.flow_id for flow in flows if flow_matches(flow, event)]
