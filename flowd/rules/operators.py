"""Operators: one `Operator` record per rule operator, in one registry (`OPERATORS`).

A record names the builder that compiles a rule with the operator, and what else the
compiler, `flowd validate` and the index need to know of it. A builder compiles one
rule into its check, and tells the index how to file its flow by it: the reading keys
on which it holds, an order's bounds, a negation's exceptions, and its check as an
expression for the generated classifier (`Inline`).

A new operator is one entry in `OPERATORS` and, unless it shares one, one builder.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from operator import ge, gt, le, lt
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


class Built(NamedTuple):
    """What a builder of a rule on the field's own reading makes of it (see `_on_field`)."""

    check: RuleCheck
    keys: frozenset[Hashable] | None = None  # the index keys it holds on, if only on those
    inline: Inline | None = None  # the check as an expression (see `flowd.rules.plans`)
    bounds: OrderBounds | None = None  # an order against a fixed value: its bound by kind
    unless: Unless | None = None  # a negation of keys: when it does not hold


RuleBuilder = Callable[["Operator", str, FieldAddress], RulePlan]
"""Compiles a rule with the operator: (the operator, rule.value or "", the field)."""
FieldRuleBuilder = Callable[["Operator", str, FieldAddress], Built]
ValueReadings = Callable[[str], tuple[RuleValue | None, ...]]


class Order(NamedTuple):
    """How an order operator compares, and how the index finds the bounds it holds for."""

    compare: Callable[[Any, Any], Any]  # (the field's value, the bound): whether it holds
    cut: Callable[..., int]  # the bisection that counts the (sorted) bounds below a value
    holds_below: bool  # whether the rule holds for the bounds counted, or for the others


@dataclass(frozen=True, slots=True)
class Operator:
    """One rule operator: the builder of its rules, and what else is known of it."""

    name: str
    build: RuleBuilder
    negated: bool = False  # the negation of the operator it shares `build` with (`!=`)
    needs_value: bool = True  # IS_NULL, IS_NOT_NULL and CHANGED take none
    # rule.value as it is read as the field's type (one value, or an IN list's items), for
    # `flowd validate`; None: it is taken as text whatever the field
    typed_value: ValueReadings | None = None
    on_elements: bool = False  # of an array column, the elements are compared (CONTAINS)
    order: Order | None = None  # `>`, `<`, `>=`, `<=`, which also take `now-7d`
    reads_old_row: bool = False  # CHANGED*: compares with the old row (REPLICA IDENTITY FULL)
    aliases: tuple[str, ...] = ()  # other names it is written as (`==`)


def _on_field(build: FieldRuleBuilder) -> RuleBuilder:
    """A builder of rules on the field's own reading (every operator but CHANGED*)."""

    def plan(operator: Operator, value: str, field: FieldAddress) -> RulePlan:
        built = build(operator, value, field)
        return RulePlan(
            built.check,
            field.key,
            field.reader(),
            built.keys,
            None,
            built.inline,
            built.bounds,
            field.read_inline(),
            built.unless,
        )

    return plan


@_on_field
def _equal_rule(operator: Operator, value: str, field: FieldAddress) -> Built:
    expected = RuleValue.read(value)
    wanted_by_kind = {
        kind: None if (wanted := expected.as_kind[kind]) is None else frozenset({wanted})
        for kind in SCALAR_KINDS
    }
    return _keyed_rule(wanted_by_kind, field, operator.negated)


@_on_field
def _in_rule(operator: Operator, value: str, field: FieldAddress) -> Built:
    items = parse_in_items(value)
    wanted_by_kind = {kind: _readings_as(kind, items) for kind in SCALAR_KINDS}
    return _keyed_rule(wanted_by_kind, field, operator.negated)


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


@_on_field
def _null_rule(operator: Operator, value: str, field: FieldAddress) -> Built:
    key, read = field.key, field.reader()

    def holds(view: EventView) -> bool:
        return (view.readings.get(key) or read(view))[4] is NULL_KEY

    def holds_not(view: EventView) -> bool:
        return (view.readings.get(key) or read(view))[4] is not NULL_KEY

    if operator.negated:
        inline = ("{r}[4] is not {c}null", {"null": NULL_KEY})
        return Built(holds_not, inline=inline, unless=({NULL_KEY: None}, frozenset()))
    return Built(holds, frozenset({NULL_KEY}), ("{r}[4] is {c}null", {"null": NULL_KEY}))


@_on_field
def _order_rule(operator: Operator, value: str, field: FieldAddress) -> Built:
    assert operator.order is not None
    order = operator.order.compare
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
    return Built(holds, inline=inlined, bounds=(operator.name, readable))


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


@_on_field
def _contains_rule(operator: Operator, value: str, field: FieldAddress) -> Built:
    expected = RuleValue.read(value)
    negated = operator.negated
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
    @_on_field
    def build(operator: Operator, value: str, field: FieldAddress) -> Built:
        key, read = field.key, field.reader()

        def holds(view: EventView) -> bool:
            _, _, kind, text, _ = view.readings.get(key) or read(view)
            return kind is TEXT and isinstance(text, str) and test(text, value)

        inline = "({r}[2] is {c}text and isinstance({r}[3], str) and {c}test({r}[3], {c}value))"
        return Built(holds, inline=(inline, {"text": TEXT, "test": test, "value": value}))

    return build


@_on_field
def _matches_rule(operator: Operator, value: str, field: FieldAddress) -> Built:
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


def _changed_rule(operator: Operator, value: str, field: FieldAddress) -> RulePlan:
    """CHANGED: whether the field differs between the old row and the new."""
    key, read = _change_of(field)

    def changed(view: EventView) -> bool | None:
        change: ChangeReading = view.readings.get(key) or read(view)
        return change[0]

    return RulePlan(changed, key, read, None, field.column, ("{r}[0]", {}))


def _equal_test(value: str) -> FieldTest:
    expected = RuleValue.read(value)
    return lambda field, typname: equal_verdict(field, typname, expected)


def _changed_value_rule(value_at: int) -> RuleBuilder:
    """CHANGED_TO (`value_at` 3: the new value) or CHANGED_FROM (1: the old one)."""

    def build(operator: Operator, value: str, field: FieldAddress) -> RulePlan:
        key, read = _change_of(field)
        equal = _equal_test(value)

        def check(view: EventView) -> bool | None:
            change: ChangeReading = view.readings.get(key) or read(view)
            if not change[0]:
                return change[0]
            typname = change[value_at + 1]
            return equal(change[value_at], typname if isinstance(typname, str) else None) is HOLDS

        inline = (
            f"({{r}}[0] and {{c}}equal({{r}}[{value_at}], {{r}}[{value_at + 1}]) is {{c}}holds)"
        )
        values = {"equal": equal, "holds": HOLDS}
        return RulePlan(check, key, read, None, field.column, (inline, values))

    return build


def _change_of(field: FieldAddress) -> tuple[str, Callable[[EventView], ChangeReading]]:
    """The key and reader of the field's change in an UPDATE."""
    # An explicit old./new. prefix is ignored: CHANGED* always compares the two records.
    key = "changed:" + field.key.partition(":")[2]
    return key, change_reader(key, field)


def _one_value(value: str) -> tuple[RuleValue | None, ...]:
    return (RuleValue.read(value),)


def _registry(*operators: Operator) -> Mapping[str, Operator]:
    return {name: entry for entry in operators for name in (entry.name, *entry.aliases)}


OPERATORS: Final = _registry(
    Operator("=", _equal_rule, typed_value=_one_value, aliases=("==",)),
    Operator("!=", _equal_rule, negated=True, typed_value=_one_value, aliases=("<>",)),
    Operator(">", _order_rule, typed_value=_one_value, order=Order(gt, bisect_left, True)),
    Operator(">=", _order_rule, typed_value=_one_value, order=Order(ge, bisect_right, True)),
    Operator("<", _order_rule, typed_value=_one_value, order=Order(lt, bisect_right, False)),
    Operator("<=", _order_rule, typed_value=_one_value, order=Order(le, bisect_left, False)),
    Operator("CONTAINS", _contains_rule, typed_value=_one_value, on_elements=True),
    Operator(
        "NOT_CONTAINS", _contains_rule, negated=True, typed_value=_one_value, on_elements=True
    ),
    Operator("STARTS_WITH", _text_rule(str.startswith)),
    Operator("ENDS_WITH", _text_rule(str.endswith)),
    Operator("MATCHES", _matches_rule),
    Operator("IN", _in_rule, typed_value=parse_in_items),
    Operator("NOT_IN", _in_rule, negated=True, typed_value=parse_in_items),
    Operator("IS_NULL", _null_rule, needs_value=False),
    Operator("IS_NOT_NULL", _null_rule, negated=True, needs_value=False),
    Operator("CHANGED", _changed_rule, needs_value=False, reads_old_row=True),
    Operator("CHANGED_TO", _changed_value_rule(3), typed_value=_one_value, reads_old_row=True),
    Operator("CHANGED_FROM", _changed_value_rule(1), typed_value=_one_value, reads_old_row=True),
)
"""Every operator by each name it is written as (upper case)."""


def operator_named(name: str) -> Operator:
    """The operator `name` (any case, spaces around) names; Refused if none."""
    found = OPERATORS.get(name.strip().upper())
    if found is None:
        raise Refused(f"unknown operator {name!r}")
    return found
