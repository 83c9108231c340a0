"""The peer engine `rule-engine` (PyPI) given the same flows, as one expression per flow.

rule-engine evaluates an expression against an object's attributes. It has no notion of
a Postgres column type, of `rule.value` being read as the field's type, or of an old row,
so each field a rule addresses is offered as precomputed attributes, read once per event
by a plain reader of the spec (`bench.naive`) and cached for the event's other flows:

    k_N  the field's kind (number, bool, instant, text, array, object, null)
    v_N  its value read as that kind (Decimal, bool, datetime, str), null if it cannot be
    n_N  whether it is null or missing          t_N/o_N  the value when text/object
    e_N  a typed array's element kind, or ""     an_N/ab_N/ai_N/at_N  array elements by kind
    c_N  CHANGED: present in old and new and different (computed outside rule-engine)

and each rule becomes an expression over them (`translate`), with `rule.value` read at
translation time as every kind it could be compared as. Every operator of the spec is
translated; CHANGED* leans on the precomputed `c_N`. Flows are bucketed by
(schema, table, type) as for the bucketed naive baseline.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal
from typing import Any

import rule_engine

from bench import naive
from flowd.models import ChangeEvent, Flow, Rule

__all__ = ["PeerEngine", "translate"]

SCALARS = ("number", "bool", "instant", "text")


def literal(kind: str, reading: Any) -> str:
    if kind == "number":
        assert isinstance(reading, Decimal)
        return format(reading, "f")
    if kind == "bool":
        return "true" if reading else "false"
    if kind == "instant":
        assert isinstance(reading, datetime)
        return f'd"{reading.isoformat()}"'
    return string(reading)


def string(text: str) -> str:
    return json.dumps(text)


class _Fields:
    """Numbers the distinct field addresses of the translated rules."""

    def __init__(self) -> None:
        self.numbers: dict[str, int] = {}

    def __call__(self, field: str) -> int:
        return self.numbers.setdefault(field, len(self.numbers))


def _readings(text: str) -> dict[str, Any]:
    """`text` read as each scalar kind it can be read as."""
    found = {kind: naive.READERS[kind](text) for kind in SCALARS}
    return {kind: reading for kind, reading in found.items() if reading is not None}


def _equal(n: int, text: str) -> tuple[str, list[str]]:
    """(expression for `=`, kinds `text` cannot be read as)."""
    readable = _readings(text)
    terms = [f'(k_{n} == "{kind}" and v_{n} == {literal(kind, r)})' for kind, r in readable.items()]
    unreadable = [kind for kind in SCALARS if kind not in readable]
    return f"({' or '.join(terms) or 'false'})", unreadable


def _in(n: int, text: str) -> tuple[str, list[str]]:
    items = naive.in_items(text)
    terms, unreadable = [], []
    for kind in SCALARS:
        readings = [None if item is None else naive.READERS[kind](item) for item in items]
        if any(reading is None for reading in readings):
            unreadable.append(kind)
            continue
        listed = ", ".join(literal(kind, reading) for reading in readings)
        terms.append(f'(k_{n} == "{kind}" and v_{n} in [{listed}])')
    return f"({' or '.join(terms) or 'false'})", unreadable


def _negation(n: int, positive: str, unreadable: list[str]) -> str:
    guard = f"k_{n} not in [{', '.join(string(kind) for kind in unreadable)}]"
    return f"({guard} and not {positive})"


def _ordered(n: int, text: str, operator: str) -> str:
    readable = _readings(text)
    if "number" in readable:
        readable.pop("text")  # text against a number never orders
    terms = [
        f'(k_{n} == "{kind}" and v_{n} != null and v_{n} {operator} {literal(kind, r)})'
        for kind, r in readable.items()
        if kind in {"number", "instant", "text"}
    ]
    return f"({' or '.join(terms) or 'false'})"


def _contains(n: int, text: str) -> tuple[str, list[str]]:
    readable = _readings(text)
    elements = " or ".join(f"{literal(kind, r)} in a{kind[0]}_{n}" for kind, r in readable.items())
    unreadable = [kind for kind in SCALARS if kind not in readable]
    typed_ok = f"e_{n} not in [{', '.join(string(kind) for kind in unreadable)}]"
    expression = (
        f'((k_{n} == "text" and t_{n} != null and {string(text)} in t_{n})'
        f' or (k_{n} == "object" and {string(text)} in o_{n})'
        f' or (k_{n} == "array" and {typed_ok} and ({elements or "false"})))'
    )
    return expression, unreadable


def _text_test(n: int, test: str) -> str:
    return f'(k_{n} == "text" and t_{n} != null and {test})'


def translate(rule: Rule, fields: _Fields) -> str:
    """The rule as a rule-engine expression over the fields' precomputed attributes."""
    operator = rule.operator.strip().upper()
    operator = {"==": "=", "<>": "!="}.get(operator, operator)
    text = rule.value or ""
    if operator in {"CHANGED", "CHANGED_TO", "CHANGED_FROM"}:
        path = rule.field.split(".", 1)[1] if rule.field.startswith(("old.", "new.")) else None
        name = path or rule.field
        changed = f"c_{fields(name)}"
        if operator == "CHANGED":
            return changed
        side = fields(("old." if operator == "CHANGED_FROM" else "new.") + name)
        return f"({changed} and {_equal(side, text)[0]})"
    n = fields(rule.field)
    if operator in {"=", "!="}:
        equal, unreadable = _equal(n, text)
        return equal if operator == "=" else _negation(n, equal, unreadable)
    if operator in {"IN", "NOT_IN"}:
        listed, unreadable = _in(n, text)
        return listed if operator == "IN" else _negation(n, listed, unreadable)
    if operator in {">", "<", ">=", "<="}:
        return _ordered(n, text, operator)
    if operator in {"IS_NULL", "IS_NOT_NULL"}:
        return f"n_{n}" if operator == "IS_NULL" else f"not n_{n}"
    if operator in {"CONTAINS", "NOT_CONTAINS"}:
        contains, unreadable = _contains(n, text)
        if operator == "CONTAINS":
            return contains
        typed_unreadable = ", ".join(string(kind) for kind in unreadable)
        return f'(not (k_{n} == "array" and e_{n} in [{typed_unreadable}]) and not {contains})'
    if operator == "STARTS_WITH":
        return _text_test(n, f"t_{n}.starts_with({string(text)})")
    if operator == "ENDS_WITH":
        return _text_test(n, f"t_{n}.ends_with({string(text)})")
    if operator == "MATCHES":
        return _text_test(n, f"t_{n} =~~ {string(text)}")
    raise ValueError(f"unknown operator {rule.operator!r}")


def flow_expression(flow: Flow, fields: _Fields) -> str:
    if not flow.rules:
        return "true"
    joiner = " or " if flow.match.strip().upper() == "ANY" else " and "
    return joiner.join(f"({translate(rule, fields)})" for rule in flow.rules)


class _EventAttributes:
    """The attributes of one event, each worked out when an expression first asks."""

    __slots__ = ("cache", "event", "fields")

    def __init__(self, event: ChangeEvent, fields: list[str]) -> None:
        self.event = event
        self.fields = fields
        self.cache: dict[str, Any] = {}

    def get(self, name: str) -> Any:
        value = self.cache.get(name, naive.MISSING)
        if value is naive.MISSING:
            _prefix, _, number = name.partition("_")
            self._compute(int(number))
            value = self.cache[name]
        return value

    def _compute(self, n: int) -> None:
        field = self.fields[n]
        value, typname = naive.lookup(self.event, field)
        kind = naive.type_of(value, typname)
        is_null = value is None or value is naive.MISSING
        reading = None if is_null or kind not in SCALARS else naive.READERS[kind](value)
        by_kind: dict[str, list[Any]] = {kind: [] for kind in SCALARS}
        element_kind = ""
        if isinstance(value, list):
            element_type = typname[1:] if typname and typname.startswith("_") else None
            if element_type is not None:
                declared = naive.type_of(None, element_type)
                element_kind = "" if declared == "text" else declared
            for element in value:
                typed = typname if isinstance(element, list) else element_type
                element_kind_of = naive.type_of(element, typed)
                if element_kind_of in SCALARS and element is not None:
                    read = naive.READERS[element_kind_of](element)
                    if read is not None:
                        by_kind[element_kind_of].append(read)
        self.cache.update(
            {
                f"k_{n}": kind,
                f"v_{n}": reading,
                f"n_{n}": is_null,
                f"t_{n}": value if kind == "text" and isinstance(value, str) else None,
                f"o_{n}": value if isinstance(value, dict) else {},
                f"e_{n}": element_kind,
                f"an_{n}": by_kind["number"],
                f"ab_{n}": by_kind["bool"],
                f"ai_{n}": by_kind["instant"],
                f"at_{n}": by_kind["text"],
                f"c_{n}": naive.changed(self.event, field),
            }
        )


def _resolve(thing: _EventAttributes, name: str) -> Any:
    return thing.get(name)


class PeerEngine:
    """rule-engine with every flow's expression compiled once, bucketed by table and type."""

    def __init__(self, flows: Iterable[Flow]) -> None:
        fields = _Fields()
        context = rule_engine.Context(resolver=_resolve)
        self._buckets: dict[tuple[str, str, str], list[tuple[int, rule_engine.Rule]]] = {}
        for flow in sorted(flows, key=lambda f: f.flow_id):
            expression = rule_engine.Rule(flow_expression(flow, fields), context=context)
            schema, _, table = flow.trigger_table.rpartition(".")
            trigger_event = flow.trigger_event.strip().upper()
            for change_type in ("INSERT", "UPDATE", "DELETE"):
                if flow.is_enabled and trigger_event in {"*", change_type}:
                    key = (schema or "public", table, change_type)
                    self._buckets.setdefault(key, []).append((flow.flow_id, expression))
        self._fields = list(fields.numbers)

    def classify(self, event: ChangeEvent) -> list[int]:
        flows = self._buckets.get((event.schema_name, event.table, event.type), ())
        attributes = _EventAttributes(event, self._fields)
        return [flow_id for flow_id, rule in flows if rule.matches(attributes)]
