"""Operators: what each rule operator builds from `rule.value` and the field it reads.

A builder compiles one rule into its check, and tells the index how to file its flow
by it: the reading keys on which it holds, an order's bounds, a negation's exceptions,
and its check as an expression for the generated classifier (`Inline`).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Hashable, Iterable, Mapping
from datetime import timedelta
from typing import Any, Final, NamedTuple

from flowd.rules.fields import ChangeReading, EventView, FieldAddress, change_reader
from flowd.rules.limits import Refused
from flowd.rules.pattern import PatternRefused, compile_search
from flowd.rules.plans import Inline, OrderBounds, RuleCheck, RulePlan, Unless
from flowd.rules.reltime import evaluation_time
from flowd.rules.values import (
    FAILS,
    HOLDS,
    INSTANT,
    NULL_KEY,
    NUMBER,
    ORDERED_KINDS,
    SCALAR_KINDS,
    TEXT,
    FieldTest,
    Kind,
    RuleValue,
    Scalar,
    contains_verdict,
    equal_verdict,
    parse_in_items,
    reading_key,
)

OPERATOR_ALIASES: Final[Mapping[str, str]] = {"==": "=", "<>": "!="}
NEGATED: Final[Mapping[str, str]] = {
    "!=": "=",
    "NOT_IN": "IN",
    "NOT_CONTAINS": "CONTAINS",
    "IS_NOT_NULL": "IS_NULL",
}
ORDERS: Final[Mapping[str, Callable[[Any, Any], Any]]] = {
    ">": operator.gt,
    "<": operator.lt,
    ">=": operator.ge,
    "<=": operator.le,
}
CHANGE_OPERATORS: Final = frozenset({"CHANGED", "CHANGED_TO", "CHANGED_FROM"})
VALUE_FREE_OPERATORS: Final = frozenset({"IS_NULL", "IS_NOT_NULL", "CHANGED"})
VALUE_READ_AS_FIELD_TYPE: Final = frozenset(
    {"=", "!=", "CHANGED_TO", "CHANGED_FROM", "CONTAINS", "NOT_CONTAINS", *ORDERS}
)


def _equal_test(value: str) -> FieldTest:
    expected = RuleValue.read(value)
    return lambda field, typname: equal_verdict(field, typname, expected)


class Built(NamedTuple):
    """What a rule builder makes of (rule.value, the field, negated?)."""

    check: RuleCheck
    keys: frozenset[Hashable] | None = None  # the index keys it holds on, if only on those
    inline: Inline | None = None  # the check as an expression (see `flowd.rules.plans`)
    bounds: OrderBounds | None = None  # an order against a fixed value: its bound by kind
    unless: Unless | None = None  # a negation of keys: when it does not hold


RuleBuilder = Callable[[str, FieldAddress, bool], Built]


def _equal_rule(value: str, field: FieldAddress, negated: bool) -> Built:
    expected = RuleValue.read(value)
    wanted_by_kind = {
        kind: None if (wanted := expected.as_kind[kind]) is None else frozenset({wanted})
        for kind in SCALAR_KINDS
    }
    return _keyed_rule(wanted_by_kind, field, negated)


def _in_rule(value: str, field: FieldAddress, negated: bool) -> Built:
    items = parse_in_items(value)
    wanted_by_kind = {kind: _readings_as(kind, items) for kind in SCALAR_KINDS}
    return _keyed_rule(wanted_by_kind, field, negated)


def _keyed_rule(
    wanted_by_kind: Mapping[Kind, frozenset[Scalar] | None],
    field: FieldAddress,
    negated: bool,
) -> Built:
    """`=`/`IN` as a set of reading keys: the rule holds when the field's key is one of them.

    A kind `rule.value` cannot be read as makes the rule and its negation false."""
    keys: frozenset[Hashable] = frozenset(
        reading_key(kind, wanted)
        for kind, readings in wanted_by_kind.items()
        for wanted in readings or ()
    )
    unreadable = frozenset(kind for kind, readings in wanted_by_kind.items() if readings is None)
    key, read = field.key, field.reader()

    def holds(view: EventView) -> bool:
        return (view.readings.get(key) or read(view))[4] in keys

    def holds_not(view: EventView) -> bool:
        reading = view.readings.get(key) or read(view)
        return reading[2] not in unreadable and reading[4] not in keys

    if negated:
        inline = "({r}[2] not in {c}unreadable and {r}[4] not in {c}keys)"
        values = {"unreadable": unreadable, "keys": keys}
        kinds = {
            reading_key(kind, wanted): kind
            for kind, readings in wanted_by_kind.items()
            for wanted in readings or ()
        }
        return Built(holds_not, inline=(inline, values), unless=(kinds, unreadable))
    return Built(holds, keys, ("{r}[4] in {c}keys", {"keys": keys}))


def _null_rule(value: str, field: FieldAddress, negated: bool) -> Built:
    key, read = field.key, field.reader()

    def holds(view: EventView) -> bool:
        return (view.readings.get(key) or read(view))[4] is NULL_KEY

    def holds_not(view: EventView) -> bool:
        return (view.readings.get(key) or read(view))[4] is not NULL_KEY

    if negated:
        inline = ("{r}[4] is not {c}null", {"null": NULL_KEY})
        return Built(holds_not, inline=inline, unless=({NULL_KEY: None}, frozenset()))
    return Built(holds, frozenset({NULL_KEY}), ("{r}[4] is {c}null", {"null": NULL_KEY}))


def _order_rule(operator_name: str) -> RuleBuilder:
    order = ORDERS[operator_name]

    def build(value: str, field: FieldAddress, negated: bool) -> Built:
        expected = RuleValue.read(value)
        key, read = field.key, field.reader()
        bounds = {kind: expected.as_kind[kind] for kind in ORDERED_KINDS}
        if expected.as_kind[NUMBER] is not None:
            bounds[TEXT] = None  # text against a number: "10" would sort before "9"
        if (offset := expected.offset) is not None:
            return _relative_order_rule(order, offset, field)

        def holds(view: EventView) -> bool:
            _, _, kind, actual, _ = view.readings.get(key) or read(view)
            bound = bounds.get(kind)
            return bound is not None and actual is not None and bool(order(actual, bound))

        inline = (
            "(({c}bound := {c}bounds.get({r}[2])) is not None"
            " and {r}[3] is not None and {c}order({r}[3], {c}bound))"
        )
        readable: dict[Hashable, object] = {k: b for k, b in bounds.items() if b is not None}
        inlined = (inline, {"bounds": bounds, "order": order})
        return Built(holds, inline=inlined, bounds=(operator_name, readable))

    return build


def _relative_order_rule(
    order: Callable[[Any, Any], Any], offset: timedelta, field: FieldAddress
) -> Built:
    """An instant field ordered against `now` ± offset, `now` read when the event is."""
    key, read = field.key, field.reader()

    def holds(view: EventView) -> bool:
        _, _, kind, actual, _ = view.readings.get(key) or read(view)
        if kind is not INSTANT or actual is None:
            return False
        return bool(order(actual, evaluation_time() + offset))

    inline = (
        "({r}[2] is {c}instant and {r}[3] is not None and {c}order({r}[3], {c}now() + {c}offset))"
    )
    values = {"instant": INSTANT, "order": order, "now": evaluation_time, "offset": offset}
    return Built(holds, inline=(inline, values))


def _contains_rule(value: str, field: FieldAddress, negated: bool) -> Built:
    expected = RuleValue.read(value)
    holds_on = FAILS if negated else HOLDS
    key, read = field.key, field.reader()

    def holds(view: EventView) -> bool:
        value, typname, _, _, _ = view.readings.get(key) or read(view)
        return contains_verdict(value, typname, expected) is holds_on

    # text, the common case, is tested inline: its reading is the text, or None when null
    if negated:
        in_text = "({r}[3] is None or {c}text not in {r}[3])"
    else:
        in_text = "{r}[3] is not None and {c}text in {r}[3]"
    inline = (
        f"({{r}}[2] is {{c}}text_kind and {in_text} or {{r}}[2] is not {{c}}text_kind"
        " and {c}verdict({r}[0], {r}[1], {c}expected) is {c}holds_on)"
    )
    values = {
        "text": value,
        "text_kind": TEXT,
        "verdict": contains_verdict,
        "expected": expected,
        "holds_on": holds_on,
    }
    return Built(holds, inline=(inline, values))


def _text_rule(test: Callable[[str, str], bool]) -> RuleBuilder:
    def build(value: str, field: FieldAddress, negated: bool) -> Built:
        key, read = field.key, field.reader()

        def holds(view: EventView) -> bool:
            _, _, kind, text, _ = view.readings.get(key) or read(view)
            return kind is TEXT and isinstance(text, str) and test(text, value)

        inline = "({r}[2] is {c}text and isinstance({r}[3], str) and {c}test({r}[3], {c}value))"
        return Built(holds, inline=(inline, {"text": TEXT, "test": test, "value": value}))

    return build


def _matches_rule(value: str, field: FieldAddress, negated: bool) -> Built:
    try:
        search = compile_search(value)
    except PatternRefused as refused:
        raise Refused(str(refused)) from None
    key, read = field.key, field.reader()

    def holds(view: EventView) -> bool:
        _, _, kind, text, _ = view.readings.get(key) or read(view)
        return kind is TEXT and isinstance(text, str) and search(text)

    inline = "({r}[2] is {c}text and isinstance({r}[3], str) and {c}search({r}[3]))"
    return Built(holds, inline=(inline, {"text": TEXT, "search": search}))


def _readings_as(kind: Kind, items: Iterable[RuleValue | None]) -> frozenset[Scalar] | None:
    """The items read as `kind`, or None when one of them cannot be."""
    readings: set[Scalar] = set()
    for item in items:
        reading = None if item is None else item.as_kind[kind]
        if reading is None:
            return None
        readings.add(reading)
    return frozenset(readings)


RULE_BUILDERS: Final[Mapping[str, RuleBuilder]] = {
    "=": _equal_rule,
    **{name: _order_rule(name) for name in ORDERS},
    "CONTAINS": _contains_rule,
    "STARTS_WITH": _text_rule(str.startswith),
    "ENDS_WITH": _text_rule(str.endswith),
    "MATCHES": _matches_rule,
    "IN": _in_rule,
    "IS_NULL": _null_rule,
}
KNOWN_OPERATORS: Final = frozenset({*RULE_BUILDERS, *NEGATED, *CHANGE_OPERATORS})


def changed_plan(operator_name: str, address: FieldAddress, value: str | None) -> RulePlan:
    # An explicit old./new. prefix is ignored: CHANGED* always compares the two records.
    key = "changed:" + address.key.partition(":")[2]
    read = change_reader(key, address)
    if value is None or operator_name == "CHANGED":

        def changed(view: EventView) -> bool | None:
            change: ChangeReading = view.readings.get(key) or read(view)
            return change[0]

        return RulePlan(changed, key, read, None, address.column, ("{r}[0]", {}))
    equal = _equal_test(value)
    value_at = 1 if operator_name == "CHANGED_FROM" else 3  # the old value, or the new one

    def check(view: EventView) -> bool | None:
        change: ChangeReading = view.readings.get(key) or read(view)
        if not change[0]:
            return change[0]
        typname = change[value_at + 1]
        return equal(change[value_at], typname if isinstance(typname, str) else None) is HOLDS

    inline = f"({{r}}[0] and {{c}}equal({{r}}[{value_at}], {{r}}[{value_at + 1}]) is {{c}}holds)"
    values = {"equal": equal, "holds": HOLDS}
    return RulePlan(check, key, read, None, address.column, (inline, values))
