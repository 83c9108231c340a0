"""Fields: where a rule's field is in an event (`new.a.b`, `old.x`) and how it is read.

A field's address is parsed once per field text (`parse_field`); its reader reads the
field in an event once, as its column's type says (`READINGS`), and keeps the reading
in `EventView.readings` for every other rule on it.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

from flowd.models import ChangeEvent, ChangeType
from flowd.rules.limits import Refused
from flowd.rules.values import (
    ARRAY,
    BOOL,
    FIELD_READERS,
    JSON_TYPNAMES,
    MISSING,
    NULL,
    NULL_KEY,
    NUMBER,
    OBJECT,
    TEXT,
    TYPNAME_KINDS,
    Kind,
    Missing,
    Scalar,
    kind_of,
    reading_key,
    same_json,
)


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


Reading = tuple[object, str | None, Kind, Scalar | None, Hashable | None]
"""A field as one event holds it, read once: (value, type name, kind, value read as that
kind or None, index key). The key is `(kind, reading)` (text: the text alone, whose
hash Python keeps), `NULL_KEY` for null or missing,
or None for a value that cannot be read as its own type."""


Inline = tuple[str, Mapping[str, object]]
"""A rule's check as a Python expression, and the values it names. In the text, `{r}`
stands for the field's reading and `{c}` for the prefix its names are given; every value
(rule.value read as each kind, key sets, bounds, functions) is passed by name, never
written into the text. The first `{r}` is evaluated whenever the expression is."""


Fetch = Callable[[EventView], Reading]


def _any_reading(value: object, typname: str | None) -> Reading:
    """A field's reading worked out from the type name and the value alike."""
    kind = kind_of(value, typname)
    if value is None or value is MISSING:
        return (value, typname, kind, None, NULL_KEY)
    reader = FIELD_READERS.get(kind)
    actual = None if reader is None else reader(value)
    return (value, typname, kind, actual, reading_key(kind, actual))


# --------------------------------------------------------------------------- addressing


class Step(NamedTuple):
    """One path segment below the column: a key, or also an index when it is digits."""

    key: str
    at: int | None


@dataclass(frozen=True, slots=True)
class FieldAddress:
    record: Callable[[EventView], dict[str, Any]]
    column: str
    steps: tuple[Step, ...]
    key: str  # the same for every rule that addresses the same field of the same record

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
def _field_reader(address: FieldAddress) -> Fetch:
    """`FieldAddress.reader`."""
    key, record, column, steps = address.key, address.record, address.column, address.steps
    if not steps:
        return _column_reader(key, record, column)

    def read(view: EventView) -> Reading:
        types = view.column_types
        value, typname = _walk(record(view).get(column, MISSING), types.get(column), steps)
        reading = view.readings[key] = _READINGS[typname](value, typname)
        return reading

    return read


@functools.lru_cache(maxsize=4096)  # one per column: every rule on it shares it
def _column_read_inline(record: str, column: str) -> Inline:
    """`FieldAddress.read_inline` of a column of `view.<record>`."""
    text = (
        "{c}readings[({c}typname := types.get({c}column))]"
        f"(view.{record}.get({{c}}column, {{c}}missing), {{c}}typname)"
    )
    return text, {"readings": _READINGS, "column": column, "missing": MISSING}


def _column_reader(key: str, record: Callable[[EventView], dict[str, Any]], column: str) -> Fetch:
    """`FieldAddress.reader` of a top-level column: read by its column type's own reader."""

    def read(view: EventView) -> Reading:
        typname = view.column_types.get(column)
        value = record(view).get(column, MISSING)
        reading = view.readings[key] = _READINGS[typname](value, typname)
        return reading

    return read


# A reading function by type name, so that a field's type name and value tell its reading with as
# little work as can be: the common cases are read straight, the others by `_any_reading`.
ReadingFunction = Callable[[object, str | None], Reading]


def _text_reading(value: object, typname: str | None) -> Reading:
    """A text-like column (text, uuid, an enum, …)."""
    if type(value) is str:
        return (value, typname, TEXT, value, value)
    return _any_reading(value, typname)


def _array_reading(value: object, typname: str | None) -> Reading:
    """A typed array column: never equal to anything nor ordered."""
    if value is None or value is MISSING:
        return (value, typname, ARRAY, None, NULL_KEY)
    return (value, typname, ARRAY, None, None)


def _json_reading(value: object, typname: str | None) -> Reading:
    """A value whose kind its JSON type says: below json/jsonb, or of no known column."""
    # exact types only: a bool is an int, which the table keeps apart
    kind = _JSON_KINDS.get(type(value))
    # The ignores: `type(value)` was checked against the kind, which mypy cannot follow.
    if kind is TEXT:
        return (value, typname, kind, value, value)  # type: ignore[return-value]
    if kind is BOOL or type(value) is int:
        return (value, typname, kind, value, (kind, value))  # type: ignore[return-value]
    if kind is NULL:
        return (value, typname, kind, None, NULL_KEY)
    if kind is ARRAY or kind is OBJECT:
        return (value, typname, kind, None, None)
    return _any_reading(value, typname)


_JSON_KINDS: Final[Mapping[type, Kind]] = {
    str: TEXT,
    bool: BOOL,
    int: NUMBER,
    list: ARRAY,
    dict: OBJECT,
    type(None): NULL,
    Missing: NULL,
}

_KEPT_READINGS: Final = 4096  # per column type and value type: bounds the memory they take


def _declared_reading(kind: Kind) -> ReadingFunction:
    """Reads a column of one declared type (a number, a boolean, an instant).

    Its readings of plain values are kept, apart by the value's exact type (1, 1.0 and
    True are equal keys of one dict): reading text or a float as a number or an instant
    is the costly part of a field, and a column's values repeat across events."""
    read = FIELD_READERS[kind]
    kept_by_type: dict[type, dict[object, Reading]] = {str: {}, int: {}, float: {}, bool: {}}

    def reading(value: object, typname: str | None) -> Reading:
        kept = kept_by_type.get(type(value))
        if kept is None:  # null, missing, or a value the column cannot hold
            if value is None or value is MISSING:
                return (value, typname, kind, None, NULL_KEY)
            actual = read(value)
            return (value, typname, kind, actual, reading_key(kind, actual))
        found = kept.get(value)
        if found is None:
            if len(kept) >= _KEPT_READINGS:
                kept.clear()
            actual = read(value)
            found = (value, typname, kind, actual, reading_key(kind, actual))
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
        **dict.fromkeys((None, *JSON_TYPNAMES), _json_reading),
        **dict.fromkeys(("text", "varchar", "bpchar", "uuid", "citext", "name"), _text_reading),
        # one per type name: a kept reading carries its type name
        **{typname: _declared_reading(kind) for typname, kind in TYPNAME_KINDS.items()},
    }
)


_RECORDS: Final[Mapping[str, Callable[[EventView], dict[str, Any]]]] = {
    "old": operator.attrgetter("old"),
    "new": operator.attrgetter("new"),
}
_subject_record: Final[Callable[[EventView], dict[str, Any]]] = operator.attrgetter("subject")


@functools.lru_cache(maxsize=4096)  # flows repeat fields: rules on one share its reader
def parse_field(field: str) -> FieldAddress:
    if not field.strip():
        raise Refused("the field is empty")
    segments = field.split(".")
    record, record_name = _subject_record, ""
    # `old` alone is a column named old, not the old record
    if len(segments) > 1 and segments[0] in _RECORDS:
        record, record_name = _RECORDS[segments[0]], segments[0]
        segments = segments[1:]
    if "" in segments:
        raise Refused(f"the field {field!r} has an empty path segment")
    steps = tuple(
        Step(segment, int(segment) if segment.isascii() and segment.isdigit() else None)
        for segment in segments[1:]
    )
    return FieldAddress(record, segments[0], steps, f"{record_name}:{'.'.join(segments)}")


def resolve(
    address: FieldAddress, record: Mapping[str, Any], column_types: Mapping[str, str]
) -> tuple[object, str | None]:
    """The addressed value (or MISSING) and its Postgres type name when one is known."""
    column = address.column
    return _walk(record.get(column, MISSING), column_types.get(column), address.steps)


def _walk(value: object, typname: str | None, steps: tuple[Step, ...]) -> tuple[object, str | None]:
    """Down a column's value (of type `typname`) along the path's steps."""
    for key, at in steps:
        if isinstance(value, dict):
            value, typname = value.get(key, MISSING), None
        elif isinstance(value, list) and at is not None and at < len(value):
            value = value[at]
            if typname is not None and typname.startswith("_"):
                # a row of a multidimensional array is still an array of the element type
                typname = typname if isinstance(value, list) else typname[1:]
            else:
                typname = None
        else:
            value, typname = MISSING, None
    return value, typname


def addressed_type(
    address: FieldAddress, typname: str, on_elements: bool
) -> tuple[str, str] | None:
    """(type name, description) rule.value is read as, when the columns alone tell it;
    `on_elements`: the operator compares an array's elements (CONTAINS)."""
    is_array = typname.startswith("_")
    if on_elements:
        if is_array and not address.steps:
            return typname[1:], f"the elements of column {address.column}"
        return None  # text and objects take the value as it is
    if not address.steps:
        return typname, f"column {address.column}"
    if is_array and len(address.steps) == 1 and address.steps[0].at is not None:
        return typname[1:], f"the elements of column {address.column}"
    return None  # below json/jsonb, only the event's values tell


ChangeReading = tuple[bool | None, object, str | None, object, str | None]
"""A field's change in one UPDATE, worked out once for every CHANGED* rule on it:
(changed, or None when `old` lacks it; old value and type name; new value and type name)."""


def change_reader(key: str, address: FieldAddress) -> Callable[[EventView], ChangeReading]:
    column = address.column

    def read(view: EventView) -> ChangeReading:
        change: ChangeReading
        if view.change_type != "UPDATE":
            change = (False, MISSING, None, MISSING, None)
        elif column not in view.old:
            # REPLICA IDENTITY DEFAULT: old carries only the primary key
            lacks = column in view.new or column in view.column_types
            change = (None if lacks else False, MISSING, None, MISSING, None)
        else:
            old_value, old_typname = resolve(address, view.old, view.column_types)
            new_value, new_typname = resolve(address, view.new, view.column_types)
            changed = not (
                old_value is MISSING or new_value is MISSING or same_json(old_value, new_value)
            )
            change = (changed, old_value, old_typname, new_value, new_typname)
        view.readings[key] = change
        return change

    return read


def forget_fields() -> None:
    """Forget the fields parsed and the readers made so far (benchmarks)."""
    for cached in (parse_field, _field_reader, _column_read_inline):
        cached.cache_clear()
