"""Classify: decide which flows a change event matches. Pure and synchronous: no I/O.

The contract is `shared/spec/rules.md`. Each flow is compiled once: its rules become
closures with `rule.value` already read as every type it could be compared as (number,
boolean, instant, text), its regular expression compiled and its `IN` list parsed. An
event then only costs reading the fields the rules address.

`rule.value` is read as the type of the field it is compared with: the column's Postgres
type (`event.columns`) for a top-level column, the element type for an element of a typed
array column (`tags.0` of `_text` is text), and the JSON value's own type below a
json/jsonb column or when the event carries no column types (supabase-js shape).

Three outcomes of a comparison keep the negations honest (see `_Verdict`): a field that
cannot be read as its own type simply fails (so `!=`, `NOT_IN`, `NOT_CONTAINS` hold),
whereas a `rule.value` that cannot be read as the field's type makes the rule false
whatever the operator.
"""

from __future__ import annotations

import functools
import json
import math
import operator
import re
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from enum import Enum, StrEnum
from typing import Any, Final, NamedTuple

from flowd.errors import FlowDefinitionError
from flowd.models import ChangeEvent, ChangeType, Flow, Rule
from flowd.rules import limits
from flowd.rules.index import (
    NOTHING_MATCHED,
    NULL_KEY,
    Bucket,
    Classification,
    FlowPlan,
    FlowPredicate,
    Inline,
    OrderBounds,
    RuleCheck,
    RulePlan,
    Unless,
)
from flowd.rules.pattern import PatternRefused, compile_search
from flowd.rules.reltime import evaluation_time, parse_relative

__all__ = [
    "Classification",
    "CompiledFlow",
    "EventView",
    "FlowIndex",
    "build_index",
    "check_rule_against_columns",
    "compile_flow",
    "forget_compiled",
]

_CHANGE_TYPES: Final[tuple[ChangeType, ...]] = ("INSERT", "UPDATE", "DELETE")


class _Missing:
    """A key that is not in the record: behaves as SQL NULL."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


_MISSING: Final = _Missing()


# --------------------------------------------------------------------------- events


class EventView:
    """The parts of one change event that rules read, worked out once per event."""

    __slots__ = ("change_type", "column_types", "new", "old", "readings", "subject")

    change_type: ChangeType
    column_types: dict[str, str]
    new: dict[str, Any]
    old: dict[str, Any]
    subject: dict[str, Any]  # the record a field without `old.`/`new.` addresses
    # each addressed field read once, by its address (`Reading`); for CHANGED*, each
    # field's change (`ChangeReading`)
    readings: dict[str, Any]

    def __init__(self, event: ChangeEvent) -> None:
        self.change_type = change_type = event.type
        self.column_types = event.column_types
        self.new = new = event.record or {}  # as `event.new`, without the call
        self.old = old = event.old_record or {}
        self.subject = old if change_type == "DELETE" else new
        self.readings = {}


Reading = tuple[object, str | None, "_Kind", "Scalar | None", Hashable | None]
"""A field as one event holds it, read once: (value, type name, kind, value read as that
kind or None, index key). The key is `(kind, reading)` (text: the text alone, whose
hash Python keeps), `NULL_KEY` for null or missing,
or None for a value that cannot be read as its own type."""

# --------------------------------------------------------------------------- public API


@dataclass(frozen=True, slots=True)
class CompiledFlow:
    """A flow whose definition has been checked and whose rules are compiled.

    `plan` lets `FlowIndex` look the flow up by its rules instead of trying it on every
    event of its table; a CompiledFlow without one is simply tried on every event.
    """

    flow: Flow
    binding: tuple[str, str, str]  # (schema, table, INSERT/UPDATE/DELETE or "*")
    predicate: FlowPredicate
    plan: FlowPlan | None = None

    def evaluate(self, event: ChangeEvent) -> tuple[bool, bool]:
        """(matched, needs_full_identity) of the rules alone, whatever the event's table."""
        return self.predicate(EventView(event))


class FlowIndex:
    """Compiled flows indexed by (schema, table, type), then by their rules.

    An event never looks at flows of other tables. Within its table and type, a flow
    with an `=`, `IN` or `IS_NULL` rule that must hold is filed under the values that
    make it hold (see `Bucket`), so an event only tries the flows its values select.
    """

    __slots__ = ("_by_event_kind", "_compiled")

    def __init__(self, flows: Iterable[CompiledFlow]) -> None:
        self._compiled = tuple(
            sorted((c for c in flows if c.flow.is_enabled), key=lambda c: c.flow.flow_id)
        )
        by_event_kind: dict[tuple[str, str, str], list[CompiledFlow]] = {}
        for compiled in self._compiled:
            schema, table, trigger_event = compiled.binding
            change_types = _CHANGE_TYPES if trigger_event == "*" else (trigger_event,)
            for change_type in change_types:
                by_event_kind.setdefault((schema, table, change_type), []).append(compiled)
        self._by_event_kind = {
            key: Bucket(key[2], compiled, f"{key[0]}.{key[1]} {key[2]}")
            for key, compiled in by_event_kind.items()
        }

    def classify(self, event: ChangeEvent) -> Classification:
        """The enabled flows of the event's table and type whose rules hold, ascending id."""
        bucket = self._by_event_kind.get((event.schema_name, event.table, event.type))
        if bucket is None:
            return NOTHING_MATCHED
        return bucket.classify(EventView(event))

    def __len__(self) -> int:
        return len(self._compiled)

    @property
    def flows(self) -> tuple[Flow, ...]:
        """Every indexed flow, ascending id."""
        return tuple(compiled.flow for compiled in self._compiled)

    def bindings(self) -> set[tuple[str, str, str]]:
        """Distinct (schema, table, trigger_event) of the indexed flows, to subscribe to."""
        return {compiled.binding for compiled in self._compiled}


def compile_flow(flow: Flow) -> CompiledFlow:
    """Check `flow`'s definition and compile its rules; FlowDefinitionError if it cannot work."""
    binding = (*_table_of(flow), _trigger_event_of(flow))
    match_all = _match_of(flow) == "ALL"
    rules = tuple(
        _compile_rule(flow.flow_id, position, rule)
        for position, rule in enumerate(flow.rules, start=1)
    )
    plan = FlowPlan(match_all, rules)
    return CompiledFlow(flow, binding, plan.predicate(rules), plan)


def build_index(flows: Iterable[Flow]) -> tuple[FlowIndex, list[FlowDefinitionError]]:
    """Compile every flow; index those that compile, return the refusals in input order."""
    compiled: list[CompiledFlow] = []
    refused: list[FlowDefinitionError] = []
    for flow in flows:
        try:
            compiled.append(compile_flow(flow))
        except FlowDefinitionError as error:
            refused.append(error)
    return FlowIndex(compiled), refused


def forget_compiled() -> None:
    """Forget the rules, fields and values compiled so far, as at start-up (benchmarks)."""
    for cached in (_rule_plan, _parse_field, _field_reader, _column_read_inline, _RuleValue.read):
        cached.cache_clear()


def check_rule_against_columns(rule: Rule, column_types: Mapping[str, str]) -> str | None:
    """A sentence saying why `rule` cannot work on a table with these columns, or None.

    Only what depends on the table is checked here (the column exists; `rule.value` can
    be read as the addressed column's type); `compile_flow` reports everything else.
    """
    try:
        address = _parse_field(rule.field)
        operator_name = _normalise_operator(rule.operator)
        readings = _readings_to_check(operator_name, rule.value)
    except _Refused:
        return None
    if address.column not in column_types:
        return f"column {address.column!r} does not exist in the table"
    addressed = _addressed_type(address, column_types[address.column], operator_name)
    kind = None if addressed is None else _TYPNAME_KINDS.get(addressed[0])
    if addressed is None or kind is None:
        return None  # below json, or text-like: any value reads as itself
    typname, what = addressed
    for reading in readings:
        if reading is None:
            return f"the IN list has an item (null, array or object) that {what} can never equal"
        if reading.as_kind[kind] is None and not (
            kind is _INSTANT and reading.offset is not None and operator_name in _ORDERS
        ):
            if reading.offset is not None:
                return f"{reading.text!r} (relative time) only works with <, >, <= and >="
            return (
                f"value {reading.text!r} cannot be read as {kind.value}, "
                f"the type of {what} ({typname}), so the rule is never true"
            )
    return None


# --------------------------------------------------------------------------- types


class _Kind(StrEnum):
    """What a field is compared as; the value reads in error messages."""

    # StrEnum rather than Enum: str's C hash keeps the per-event kind lookups cheap

    NUMBER = "a number"
    BOOL = "a boolean"
    INSTANT = "an instant"
    TEXT = "text"
    ARRAY = "an array"
    OBJECT = "an object"
    NULL = "null"
    OTHER = "another kind of value"


# Each member by a module name: reading an Enum member off its class costs a call.
_NUMBER: Final = _Kind.NUMBER
_BOOL: Final = _Kind.BOOL
_INSTANT: Final = _Kind.INSTANT
_TEXT: Final = _Kind.TEXT
_ARRAY: Final = _Kind.ARRAY
_OBJECT: Final = _Kind.OBJECT
_NULL: Final = _Kind.NULL
_OTHER: Final = _Kind.OTHER

_TYPNAME_KINDS: Final[Mapping[str, _Kind]] = {
    **dict.fromkeys(("int2", "int4", "int8", "numeric", "float4", "float8"), _NUMBER),
    "bool": _BOOL,
    **dict.fromkeys(("timestamptz", "timestamp", "date"), _INSTANT),
}
_JSON_TYPNAMES: Final = frozenset({"json", "jsonb"})
_SCALAR_KINDS: Final = frozenset({_NUMBER, _BOOL, _INSTANT, _TEXT})
_ORDERED_KINDS: Final = frozenset({_NUMBER, _INSTANT, _TEXT})

Scalar = Decimal | int | bool | datetime | str


def _kind_of(value: object, typname: str | None) -> _Kind:
    """The kind a field is compared as: its column's type, else its JSON value's."""
    if typname is not None and typname not in _JSON_TYPNAMES:
        if typname.startswith("_"):
            return _ARRAY
        declared = _TYPNAME_KINDS.get(typname)
        if declared is not None:
            return declared
        # text, uuid, enum, …; a domain over a number still arrives as a JSON number
        if value is None or value is _MISSING or isinstance(value, str):
            return _TEXT
    return _json_kind(value)


def _json_kind(value: object) -> _Kind:
    if value is None or value is _MISSING:
        return _NULL
    if isinstance(value, bool):  # before int: bool is an int in Python
        return _BOOL
    if isinstance(value, int | float | Decimal):
        return _NUMBER
    if isinstance(value, str):
        return _TEXT
    if isinstance(value, list):
        return _ARRAY
    if isinstance(value, dict):
        return _OBJECT
    if isinstance(value, date):
        return _INSTANT
    return _OTHER


# --------------------------------------------------------------------------- reading

_NUMBER_TEXT: Final = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_BOOL_WORDS: Final[Mapping[str, bool]] = {
    **dict.fromkeys(("true", "t", "yes", "1"), True),
    **dict.fromkeys(("false", "f", "no", "0"), False),
}


def _parse_number(text: str) -> Decimal | None:
    stripped = text.strip()
    if _NUMBER_TEXT.fullmatch(stripped) is None:
        return None  # also keeps out NaN and Infinity, which order with nothing
    try:
        return Decimal(stripped)
    except InvalidOperation:  # an exponent beyond what Decimal can hold
        return None


def _parse_bool(text: str) -> bool | None:
    return _BOOL_WORDS.get(text.strip().lower())


def _parse_instant(text: str) -> datetime | None:
    stripped = text.strip()
    if not stripped[:4].isdigit():
        return None  # every ISO 8601 instant starts with its year; spares raising below
    try:
        parsed = datetime.fromisoformat(stripped)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _read_number(value: object) -> Decimal | int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value  # equal to, hashed and ordered as the Decimal of the same number
    if isinstance(value, float):
        return Decimal(repr(value)) if math.isfinite(value) else None
    if isinstance(value, Decimal):
        return value if value.is_finite() else None
    if isinstance(value, str):
        return _parse_number(value)  # int8/numeric sent as text
    return None


def _read_bool(value: object) -> bool | None:
    if isinstance(value, bool):
        return value
    return _parse_bool(value) if isinstance(value, str) else None


def _read_instant(value: object) -> datetime | None:
    if isinstance(value, str):
        return _parse_instant(value)
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    return None


def _read_text(value: object) -> str | None:
    return value if isinstance(value, str) else None


_FIELD_READERS: Final[Mapping[_Kind, Callable[[object], Scalar | None]]] = {
    _NUMBER: _read_number,
    _BOOL: _read_bool,
    _INSTANT: _read_instant,
    _TEXT: _read_text,
}


def _reading(value: object, typname: str | None) -> Reading:
    """A field's value read once: its kind, its value as that kind, its index key."""
    return _READINGS[typname](value, typname)


def _any_reading(value: object, typname: str | None) -> Reading:
    """`_reading` worked out from the type name and the value alike."""
    kind = _kind_of(value, typname)
    if value is None or value is _MISSING:
        return (value, typname, kind, None, NULL_KEY)
    reader = _FIELD_READERS.get(kind)
    actual = None if reader is None else reader(value)
    return (value, typname, kind, actual, _key(kind, actual))


def _key(kind: _Kind, actual: Scalar | None) -> Hashable | None:
    """The index key of a value read as `kind`: see `Reading`."""
    if actual is None:
        return None
    return actual if kind is _TEXT else (kind, actual)


@dataclass(frozen=True, slots=True)
class _RuleValue:
    """`rule.value` read once as each scalar kind; None where it cannot be read so.

    `offset`: the value is relative time (`now-7d`), an instant only once `now` is known."""

    text: str
    as_kind: Mapping[_Kind, Scalar | None]
    offset: timedelta | None = None

    @classmethod
    @functools.lru_cache(maxsize=4096)  # rule sets repeat values; readings are immutable
    def read(cls, text: str) -> _RuleValue:
        return cls(
            text,
            {
                _NUMBER: _parse_number(text),
                _BOOL: _parse_bool(text),
                _INSTANT: _parse_instant(text),
                _TEXT: text,
            },
            parse_relative(text),
        )


def _parse_in_items(value: str) -> tuple[_RuleValue | None, ...]:
    """The items of an IN list; None for a JSON item no type can read (null, array, object)."""
    stripped = value.strip()
    if not stripped.startswith(("[", "{")):
        texts = value.split(",")
        _within(limits.IN_LIST, len(texts))
        return tuple(_RuleValue.read(text.strip()) for text in texts)
    try:
        # numbers kept as their text so that they read as any type, like comma items
        items = json.loads(stripped, parse_int=str, parse_float=str, parse_constant=str)
    except (ValueError, RecursionError):
        items = None
    if not isinstance(items, list):
        raise _Refused(f"the IN list {value!r} is neither a JSON array nor a comma-separated list")
    _within(limits.IN_LIST, len(items))
    return tuple(_json_item(item) for item in items)


def _json_item(item: object) -> _RuleValue | None:
    if isinstance(item, bool):
        return _RuleValue.read("true" if item else "false")
    return _RuleValue.read(item) if isinstance(item, str) else None


# --------------------------------------------------------------------------- addressing


class _Step(NamedTuple):
    """One path segment below the column: a key, or also an index when it is digits."""

    key: str
    at: int | None


@dataclass(frozen=True, slots=True)
class _FieldAddress:
    record: Callable[[EventView], dict[str, Any]]
    column: str
    steps: tuple[_Step, ...]
    key: str  # the same for every rule that addresses the same field of the same record

    def resolve(self, view: EventView) -> tuple[object, str | None]:
        return _resolve(self, self.record(view), view.column_types)

    def read_inline(self) -> Inline | None:
        """The field's reading as an expression (see `RulePlan.read_inline`), if it is a
        column: as `reader` reads it, without the call."""
        if self.steps:
            return None
        return _column_read_inline(self.key.partition(":")[0] or "subject", self.column)

    def reader(self) -> Fetch:
        """Reads the field in an event and keeps the reading in `view.readings[key]`.

        A rule asks `view.readings.get(key) or read(view)`: the first one reads."""
        return _field_reader(self)


@functools.lru_cache(maxsize=4096)  # one reader per field
def _field_reader(address: _FieldAddress) -> Fetch:
    """`_FieldAddress.reader`."""
    key, record, column, steps = address.key, address.record, address.column, address.steps
    if not steps:
        return _column_reader(key, record, column)

    def read(view: EventView) -> Reading:
        types = view.column_types
        value, typname = _walk(record(view).get(column, _MISSING), types.get(column), steps)
        reading = view.readings[key] = _READINGS[typname](value, typname)
        return reading

    return read


@functools.lru_cache(maxsize=4096)  # one per column: every rule on it shares it
def _column_read_inline(record: str, column: str) -> Inline:
    """`_FieldAddress.read_inline` of a column of `view.<record>`."""
    text = (
        "{c}readings[({c}typname := types.get({c}column))]"
        f"(view.{record}.get({{c}}column, {{c}}missing), {{c}}typname)"
    )
    return text, {"readings": _READINGS, "column": column, "missing": _MISSING}


def _column_reader(key: str, record: Callable[[EventView], dict[str, Any]], column: str) -> Fetch:
    """`_FieldAddress.reader` of a top-level column: read by its column type's own reader."""

    def read(view: EventView) -> Reading:
        typname = view.column_types.get(column)
        value = record(view).get(column, _MISSING)
        reading = view.readings[key] = _READINGS[typname](value, typname)
        return reading

    return read


# `_reading` by type name, so that a field's type name and value tell its reading with as
# little work as can be: the common cases are read straight, the others by `_any_reading`.
ReadingFunction = Callable[[object, str | None], Reading]


def _text_reading(value: object, typname: str | None) -> Reading:
    """A text-like column (text, uuid, an enum, …)."""
    if type(value) is str:
        return (value, typname, _TEXT, value, value)
    return _any_reading(value, typname)


def _array_reading(value: object, typname: str | None) -> Reading:
    """A typed array column: never equal to anything nor ordered."""
    if value is None or value is _MISSING:
        return (value, typname, _ARRAY, None, NULL_KEY)
    return (value, typname, _ARRAY, None, None)


def _json_reading(value: object, typname: str | None) -> Reading:
    """A value whose kind its JSON type says: below json/jsonb, or of no known column."""
    # exact types only: a bool is an int, which the table keeps apart
    kind = _JSON_KINDS.get(type(value))
    if kind is _TEXT:
        return (value, typname, kind, value, value)  # type: ignore[return-value]
    if kind is _BOOL or type(value) is int:
        return (value, typname, kind, value, (kind, value))  # type: ignore[return-value]
    if kind is _NULL:
        return (value, typname, kind, None, NULL_KEY)
    if kind is _ARRAY or kind is _OBJECT:
        return (value, typname, kind, None, None)
    return _any_reading(value, typname)


_JSON_KINDS: Final[Mapping[type, _Kind]] = {
    str: _TEXT,
    bool: _BOOL,
    int: _NUMBER,
    list: _ARRAY,
    dict: _OBJECT,
    type(None): _NULL,
    _Missing: _NULL,
}

_KEPT_READINGS: Final = 4096  # per column type and value type: bounds the memory they take


def _declared_reading(kind: _Kind) -> ReadingFunction:
    """Reads a column of one declared type (a number, a boolean, an instant).

    Its readings of plain values are kept, apart by the value's exact type (1, 1.0 and
    True are equal keys of one dict): reading text or a float as a number or an instant
    is the costly part of a field, and a column's values repeat across events."""
    read = _FIELD_READERS[kind]
    kept_by_type: dict[type, dict[object, Reading]] = {str: {}, int: {}, float: {}, bool: {}}

    def reading(value: object, typname: str | None) -> Reading:
        kept = kept_by_type.get(type(value))
        if kept is None:  # null, missing, or a value the column cannot hold
            if value is None or value is _MISSING:
                return (value, typname, kind, None, NULL_KEY)
            actual = read(value)
            return (value, typname, kind, actual, _key(kind, actual))
        found = kept.get(value)
        if found is None:
            if len(kept) >= _KEPT_READINGS:
                kept.clear()
            actual = read(value)
            found = (value, typname, kind, actual, _key(kind, actual))
            kept[value] = found
        return found

    return reading


class _ReadingsByType(dict[str | None, ReadingFunction]):
    """The reading function of each type name; one not met yet (an array, an enum, a
    domain) is worked out on first use and kept."""

    def __missing__(self, typname: str | None) -> ReadingFunction:
        assert typname is not None
        reading = self[typname] = _array_reading if typname.startswith("_") else _text_reading
        return reading


_READINGS: Final = _ReadingsByType(
    {  # type: ignore[misc]  # the None key: dict.fromkeys' key type is not inferred
        **dict.fromkeys((None, *_JSON_TYPNAMES), _json_reading),
        **dict.fromkeys(("text", "varchar", "bpchar", "uuid", "citext", "name"), _text_reading),
        # one per type name: a kept reading carries its type name
        **{typname: _declared_reading(kind) for typname, kind in _TYPNAME_KINDS.items()},
    }
)


_RECORDS: Final[Mapping[str, Callable[[EventView], dict[str, Any]]]] = {
    "old": operator.attrgetter("old"),
    "new": operator.attrgetter("new"),
}
_subject_record: Final[Callable[[EventView], dict[str, Any]]] = operator.attrgetter("subject")


@functools.lru_cache(maxsize=4096)  # flows repeat fields: rules on one share its reader
def _parse_field(field: str) -> _FieldAddress:
    if not field.strip():
        raise _Refused("the field is empty")
    segments = field.split(".")
    record, record_name = _subject_record, ""
    # `old` alone is a column named old, not the old record
    if len(segments) > 1 and segments[0] in _RECORDS:
        record, record_name = _RECORDS[segments[0]], segments[0]
        segments = segments[1:]
    if "" in segments:
        raise _Refused(f"the field {field!r} has an empty path segment")
    steps = tuple(
        _Step(segment, int(segment) if segment.isascii() and segment.isdigit() else None)
        for segment in segments[1:]
    )
    return _FieldAddress(record, segments[0], steps, f"{record_name}:{'.'.join(segments)}")


def _resolve(
    address: _FieldAddress, record: Mapping[str, Any], column_types: Mapping[str, str]
) -> tuple[object, str | None]:
    """The addressed value (or _MISSING) and its Postgres type name when one is known."""
    column = address.column
    return _walk(record.get(column, _MISSING), column_types.get(column), address.steps)


def _walk(
    value: object, typname: str | None, steps: tuple[_Step, ...]
) -> tuple[object, str | None]:
    """Down a column's value (of type `typname`) along the path's steps."""
    for key, at in steps:
        if isinstance(value, dict):
            value, typname = value.get(key, _MISSING), None
        elif isinstance(value, list) and at is not None and at < len(value):
            value = value[at]
            if typname is not None and typname.startswith("_"):
                # a row of a multidimensional array is still an array of the element type
                typname = typname if isinstance(value, list) else typname[1:]
            else:
                typname = None
        else:
            value, typname = _MISSING, None
    return value, typname


def _addressed_type(
    address: _FieldAddress, typname: str, operator_name: str
) -> tuple[str, str] | None:
    """(type name, description) rule.value is read as, when the columns alone tell it."""
    is_array = typname.startswith("_")
    if operator_name in {"CONTAINS", "NOT_CONTAINS"}:
        if is_array and not address.steps:
            return typname[1:], f"the elements of column {address.column}"
        return None  # text and objects take the value as it is
    if not address.steps:
        return typname, f"column {address.column}"
    if is_array and len(address.steps) == 1 and address.steps[0].at is not None:
        return typname[1:], f"the elements of column {address.column}"
    return None  # below json/jsonb, only the event's values tell


def _readings_to_check(operator_name: str, value: str | None) -> tuple[_RuleValue | None, ...]:
    """The readings of rule.value that must succeed for the rule to ever hold."""
    if value is None:
        return ()
    _within(limits.RULE_VALUE, len(value))
    if operator_name in {"IN", "NOT_IN"}:
        return _parse_in_items(value)
    if operator_name in _VALUE_READ_AS_FIELD_TYPE:
        return (_RuleValue.read(value),)
    return ()


# --------------------------------------------------------------------------- comparing


class _Verdict(Enum):
    """How a comparison came out; a rule holds on HOLDS, its negation on FAILS."""

    HOLDS = "holds"
    FAILS = "fails"
    UNREADABLE = "rule.value cannot be read as the field's type: rule and negation are false"


FieldTest = Callable[[object, str | None], _Verdict]
"""A comparison of a resolved field (value, type name) with the rule."""

_HOLDS: Final = _Verdict.HOLDS
_FAILS: Final = _Verdict.FAILS
_UNREADABLE: Final = _Verdict.UNREADABLE


def _equal_verdict(value: object, typname: str | None, expected: _RuleValue) -> _Verdict:
    kind = _kind_of(value, typname)
    if kind not in _SCALAR_KINDS:
        return _FAILS  # null, arrays and objects are never `=`
    wanted = expected.as_kind[kind]
    if wanted is None:
        return _UNREADABLE
    actual = _FIELD_READERS[kind](value)
    if actual is None:
        return _FAILS
    return _HOLDS if actual == wanted else _FAILS


def _contains_verdict(value: object, typname: str | None, expected: _RuleValue) -> _Verdict:
    kind = _kind_of(value, typname)
    if kind is _TEXT:
        return _HOLDS if isinstance(value, str) and expected.text in value else _FAILS
    if kind is _OBJECT:
        return _HOLDS if isinstance(value, dict) and expected.text in value else _FAILS
    if kind is not _ARRAY or not isinstance(value, list):
        return _FAILS
    element_typname = typname[1:] if typname is not None and typname.startswith("_") else None
    element_kind = _TYPNAME_KINDS.get(element_typname or "")
    if element_kind is not None and expected.as_kind[element_kind] is None:
        return _UNREADABLE
    for element in value:
        typed_as = typname if isinstance(element, list) else element_typname
        if _equal_verdict(element, typed_as, expected) is _HOLDS:
            return _HOLDS
    return _FAILS


_CONTAINERS: Final = (list, dict)


def _same_json(left: object, right: object) -> bool:
    """JSON equality as decoded: unlike Python's ==, true is not 1."""
    if type(left) is type(right) and not isinstance(left, _CONTAINERS):
        return left == right  # text, numbers, booleans and nulls of one type: the usual case
    if isinstance(left, bool) or isinstance(right, bool):
        return left is right
    if isinstance(left, int | float) and isinstance(right, int | float):
        return left == right
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(map(_same_json, left, right))
    if isinstance(left, dict) and isinstance(right, dict):
        return left.keys() == right.keys() and all(_same_json(left[k], right[k]) for k in left)
    return type(left) is type(right) and left == right


# --------------------------------------------------------------------------- operators

_OPERATOR_ALIASES: Final[Mapping[str, str]] = {"==": "=", "<>": "!="}
_NEGATED: Final[Mapping[str, str]] = {
    "!=": "=",
    "NOT_IN": "IN",
    "NOT_CONTAINS": "CONTAINS",
    "IS_NOT_NULL": "IS_NULL",
}
_ORDERS: Final[Mapping[str, Callable[[Any, Any], Any]]] = {
    ">": operator.gt,
    "<": operator.lt,
    ">=": operator.ge,
    "<=": operator.le,
}
_CHANGE_OPERATORS: Final = frozenset({"CHANGED", "CHANGED_TO", "CHANGED_FROM"})
_VALUE_FREE_OPERATORS: Final = frozenset({"IS_NULL", "IS_NOT_NULL", "CHANGED"})
_VALUE_READ_AS_FIELD_TYPE: Final = frozenset(
    {"=", "!=", "CHANGED_TO", "CHANGED_FROM", "CONTAINS", "NOT_CONTAINS", *_ORDERS}
)


def _equal_test(value: str) -> FieldTest:
    expected = _RuleValue.read(value)
    return lambda field, typname: _equal_verdict(field, typname, expected)


Fetch = Callable[[EventView], Reading]


class Built(NamedTuple):
    """What a rule builder makes of (rule.value, the field, negated?)."""

    check: RuleCheck
    keys: frozenset[Hashable] | None = None  # the index keys it holds on, if only on those
    inline: Inline | None = None  # the check as an expression (see `flowd.rules.index`)
    bounds: OrderBounds | None = None  # an order against a fixed value: its bound by kind
    unless: Unless | None = None  # a negation of keys: when it does not hold


RuleBuilder = Callable[[str, _FieldAddress, bool], Built]


def _equal_rule(value: str, field: _FieldAddress, negated: bool) -> Built:
    expected = _RuleValue.read(value)
    wanted_by_kind = {
        kind: None if (wanted := expected.as_kind[kind]) is None else frozenset({wanted})
        for kind in _SCALAR_KINDS
    }
    return _keyed_rule(wanted_by_kind, field, negated)


def _in_rule(value: str, field: _FieldAddress, negated: bool) -> Built:
    items = _parse_in_items(value)
    wanted_by_kind = {kind: _readings_as(kind, items) for kind in _SCALAR_KINDS}
    return _keyed_rule(wanted_by_kind, field, negated)


def _keyed_rule(
    wanted_by_kind: Mapping[_Kind, frozenset[Scalar] | None],
    field: _FieldAddress,
    negated: bool,
) -> Built:
    """`=`/`IN` as a set of reading keys: the rule holds when the field's key is one of them.

    A kind `rule.value` cannot be read as makes the rule and its negation false."""
    keys: frozenset[Hashable] = frozenset(
        _key(kind, wanted) for kind, readings in wanted_by_kind.items() for wanted in readings or ()
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
            _key(kind, wanted): kind
            for kind, readings in wanted_by_kind.items()
            for wanted in readings or ()
        }
        return Built(holds_not, inline=(inline, values), unless=(kinds, unreadable))
    return Built(holds, keys, ("{r}[4] in {c}keys", {"keys": keys}))


def _null_rule(value: str, field: _FieldAddress, negated: bool) -> Built:
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
    order = _ORDERS[operator_name]

    def build(value: str, field: _FieldAddress, negated: bool) -> Built:
        expected = _RuleValue.read(value)
        key, read = field.key, field.reader()
        bounds = {kind: expected.as_kind[kind] for kind in _ORDERED_KINDS}
        if expected.as_kind[_NUMBER] is not None:
            bounds[_TEXT] = None  # text against a number: "10" would sort before "9"
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
    order: Callable[[Any, Any], Any], offset: timedelta, field: _FieldAddress
) -> Built:
    """An instant field ordered against `now` ± offset, `now` read when the event is."""
    key, read = field.key, field.reader()

    def holds(view: EventView) -> bool:
        _, _, kind, actual, _ = view.readings.get(key) or read(view)
        if kind is not _INSTANT or actual is None:
            return False
        return bool(order(actual, evaluation_time() + offset))

    inline = (
        "({r}[2] is {c}instant and {r}[3] is not None and {c}order({r}[3], {c}now() + {c}offset))"
    )
    values = {"instant": _INSTANT, "order": order, "now": evaluation_time, "offset": offset}
    return Built(holds, inline=(inline, values))


def _contains_rule(value: str, field: _FieldAddress, negated: bool) -> Built:
    expected = _RuleValue.read(value)
    holds_on = _FAILS if negated else _HOLDS
    key, read = field.key, field.reader()

    def holds(view: EventView) -> bool:
        value, typname, _, _, _ = view.readings.get(key) or read(view)
        return _contains_verdict(value, typname, expected) is holds_on

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
        "text_kind": _TEXT,
        "verdict": _contains_verdict,
        "expected": expected,
        "holds_on": holds_on,
    }
    return Built(holds, inline=(inline, values))


def _text_rule(test: Callable[[str, str], bool]) -> RuleBuilder:
    def build(value: str, field: _FieldAddress, negated: bool) -> Built:
        key, read = field.key, field.reader()

        def holds(view: EventView) -> bool:
            _, _, kind, text, _ = view.readings.get(key) or read(view)
            return kind is _TEXT and isinstance(text, str) and test(text, value)

        inline = "({r}[2] is {c}text and isinstance({r}[3], str) and {c}test({r}[3], {c}value))"
        return Built(holds, inline=(inline, {"text": _TEXT, "test": test, "value": value}))

    return build


def _matches_rule(value: str, field: _FieldAddress, negated: bool) -> Built:
    try:
        search = compile_search(value)
    except PatternRefused as refused:
        raise _Refused(str(refused)) from None
    key, read = field.key, field.reader()

    def holds(view: EventView) -> bool:
        _, _, kind, text, _ = view.readings.get(key) or read(view)
        return kind is _TEXT and isinstance(text, str) and search(text)

    inline = "({r}[2] is {c}text and isinstance({r}[3], str) and {c}search({r}[3]))"
    return Built(holds, inline=(inline, {"text": _TEXT, "search": search}))


def _readings_as(kind: _Kind, items: Iterable[_RuleValue | None]) -> frozenset[Scalar] | None:
    """The items read as `kind`, or None when one of them cannot be."""
    readings: set[Scalar] = set()
    for item in items:
        reading = None if item is None else item.as_kind[kind]
        if reading is None:
            return None
        readings.add(reading)
    return frozenset(readings)


_RULE_BUILDERS: Final[Mapping[str, RuleBuilder]] = {
    "=": _equal_rule,
    **{name: _order_rule(name) for name in _ORDERS},
    "CONTAINS": _contains_rule,
    "STARTS_WITH": _text_rule(str.startswith),
    "ENDS_WITH": _text_rule(str.endswith),
    "MATCHES": _matches_rule,
    "IN": _in_rule,
    "IS_NULL": _null_rule,
}
_KNOWN_OPERATORS: Final = frozenset({*_RULE_BUILDERS, *_NEGATED, *_CHANGE_OPERATORS})


# --------------------------------------------------------------------------- compiling


class _Refused(Exception):
    """A rule or flow setting cannot work; `reason` is the sentence users read."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _within(bound: limits.Bound, size: int) -> None:
    if (reason := bound.refusal(size)) is not None:
        raise _Refused(reason)


def _table_of(flow: Flow) -> tuple[str, str]:
    parts = flow.trigger_table.split(".")
    if len(parts) > 2 or any(not part or part != part.strip() for part in parts):
        raise FlowDefinitionError(
            flow.flow_id,
            "trigger_table",
            f"{flow.trigger_table!r} is not a table name: write `table` or `schema.table`",
        )
    return flow.table_ref


def _trigger_event_of(flow: Flow) -> str:
    trigger_event = flow.trigger_event.strip().upper()
    if trigger_event not in ("*", "SCHEDULE", *_CHANGE_TYPES):
        raise FlowDefinitionError(
            flow.flow_id,
            "trigger_event",
            f"{flow.trigger_event!r} is not INSERT, UPDATE, DELETE or * (nor SCHEDULE)",
        )
    return trigger_event


def _match_of(flow: Flow) -> str:
    match = flow.match.strip().upper()
    if match not in {"ALL", "ANY"}:
        raise FlowDefinitionError(flow.flow_id, "match", f"{flow.match!r} is not ALL or ANY")
    return match


def needs_old_row(flow: Flow) -> bool:
    """Whether a rule of the flow compares with the old row (CHANGED*), so the trigger
    table needs REPLICA IDENTITY FULL."""
    names = (rule.operator.strip().upper() for rule in flow.rules)
    return any(_OPERATOR_ALIASES.get(name, name) in _CHANGE_OPERATORS for name in names)


def _normalise_operator(name: str) -> str:
    normalised = name.strip().upper()
    normalised = _OPERATOR_ALIASES.get(normalised, normalised)
    if normalised not in _KNOWN_OPERATORS:
        raise _Refused(f"unknown operator {name!r}")
    return normalised


def _rule_location(position: int, rule: Rule) -> str:
    if rule.rule_id is not None:
        return f"rule {rule.rule_id}"
    return f"rule #{position} (field {rule.field})" if rule.field else f"rule #{position}"


def _compile_rule(flow_id: int, position: int, rule: Rule) -> RulePlan:
    try:
        _within(limits.RULE_VALUE, len(rule.value or ""))  # before the plan cache hashes it
        return _rule_plan(rule.field, rule.operator, rule.value)
    except _Refused as refused:
        raise FlowDefinitionError(flow_id, _rule_location(position, rule), refused.reason) from None


@functools.lru_cache(maxsize=16384)  # flows repeat rules; a plan is immutable and shareable
def _rule_plan(field: str, operator_text: str, value: str | None) -> RulePlan:
    operator_name = _normalise_operator(operator_text)
    address = _parse_field(field)
    if value is None and operator_name not in _VALUE_FREE_OPERATORS:
        raise _Refused(f"operator {operator_name} needs a value")
    if operator_name in _CHANGE_OPERATORS:
        return _changed_plan(operator_name, address, value)
    positive = _NEGATED.get(operator_name, operator_name)
    built = _RULE_BUILDERS[positive](value or "", address, positive != operator_name)
    return RulePlan(
        built.check,
        address.key,
        address.reader(),
        built.keys,
        None,
        built.inline,
        built.bounds,
        address.read_inline(),
        built.unless,
    )


ChangeReading = tuple[bool | None, object, str | None, object, str | None]
"""A field's change in one UPDATE, worked out once for every CHANGED* rule on it:
(changed, or None when `old` lacks it; old value and type name; new value and type name)."""


def _changed_plan(operator_name: str, address: _FieldAddress, value: str | None) -> RulePlan:
    # An explicit old./new. prefix is ignored: CHANGED* always compares the two records.
    key = "changed:" + address.key.partition(":")[2]
    read = _change_reader(key, address)
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
        return equal(change[value_at], typname if isinstance(typname, str) else None) is _HOLDS

    inline = f"({{r}}[0] and {{c}}equal({{r}}[{value_at}], {{r}}[{value_at + 1}]) is {{c}}holds)"
    values = {"equal": equal, "holds": _HOLDS}
    return RulePlan(check, key, read, None, address.column, (inline, values))


def _change_reader(key: str, address: _FieldAddress) -> Callable[[EventView], ChangeReading]:
    column = address.column

    def read(view: EventView) -> ChangeReading:
        change: ChangeReading
        if view.change_type != "UPDATE":
            change = (False, _MISSING, None, _MISSING, None)
        elif column not in view.old:
            # REPLICA IDENTITY DEFAULT: old carries only the primary key
            lacks = column in view.new or column in view.column_types
            change = (None if lacks else False, _MISSING, None, _MISSING, None)
        else:
            old_value, old_typname = _resolve(address, view.old, view.column_types)
            new_value, new_typname = _resolve(address, view.new, view.column_types)
            changed = not (
                old_value is _MISSING or new_value is _MISSING or _same_json(old_value, new_value)
            )
            change = (changed, old_value, old_typname, new_value, new_typname)
        view.readings[key] = change
        return change

    return read
