"""Values: what a field is compared as (its `Kind`) and how values are read as each kind.

`rule.value` is read once as every kind it could be compared as (`RuleValue`); a field's
value is read as its own kind when an event is classified (`FIELD_READERS`), and the two
are compared here (`Verdict`) where no index key can tell.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from enum import Enum, StrEnum
from typing import Final

from flowd.rules.limits import IN_LIST, Refused, within
from flowd.rules.reltime import parse_relative


class _NullKey:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NULL_KEY"


NULL_KEY: Final = _NullKey()  # the reading key of a null or missing field, equal to no text


class Missing:
    """A key that is not in the record: behaves as SQL NULL."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = Missing()


# --------------------------------------------------------------------------- types


class Kind(StrEnum):
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
NUMBER: Final = Kind.NUMBER
BOOL: Final = Kind.BOOL
INSTANT: Final = Kind.INSTANT
TEXT: Final = Kind.TEXT
ARRAY: Final = Kind.ARRAY
OBJECT: Final = Kind.OBJECT
NULL: Final = Kind.NULL
OTHER: Final = Kind.OTHER

TYPNAME_KINDS: Final[Mapping[str, Kind]] = {
    **dict.fromkeys(("int2", "int4", "int8", "numeric", "float4", "float8"), NUMBER),
    "bool": BOOL,
    **dict.fromkeys(("timestamptz", "timestamp", "date"), INSTANT),
}
JSON_TYPNAMES: Final = frozenset({"json", "jsonb"})
SCALAR_KINDS: Final = frozenset({NUMBER, BOOL, INSTANT, TEXT})
ORDERED_KINDS: Final = frozenset({NUMBER, INSTANT, TEXT})

Scalar = Decimal | int | bool | datetime | str


def kind_of(value: object, typname: str | None) -> Kind:
    """The kind a field is compared as: its column's type, else its JSON value's."""
    if typname is not None and typname not in JSON_TYPNAMES:
        if typname.startswith("_"):
            return ARRAY
        declared = TYPNAME_KINDS.get(typname)
        if declared is not None:
            return declared
        # text, uuid, enum, …; a domain over a number still arrives as a JSON number
        if value is None or value is MISSING or isinstance(value, str):
            return TEXT
    return _json_kind(value)


def _json_kind(value: object) -> Kind:
    if value is None or value is MISSING:
        return NULL
    if isinstance(value, bool):  # before int: bool is an int in Python
        return BOOL
    if isinstance(value, int | float | Decimal):
        return NUMBER
    if isinstance(value, str):
        return TEXT
    if isinstance(value, list):
        return ARRAY
    if isinstance(value, dict):
        return OBJECT
    if isinstance(value, date):
        return INSTANT
    return OTHER


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


FIELD_READERS: Final[Mapping[Kind, Callable[[object], Scalar | None]]] = {
    NUMBER: _read_number,
    BOOL: _read_bool,
    INSTANT: _read_instant,
    TEXT: _read_text,
}


def reading_key(kind: Kind, actual: Scalar | None) -> Hashable | None:
    """The index key of a value read as `kind`: see `Reading`."""
    if actual is None:
        return None
    return actual if kind is TEXT else (kind, actual)


@dataclass(frozen=True, slots=True)
class RuleValue:
    """`rule.value` read once as each scalar kind; None where it cannot be read so.

    `offset`: the value is relative time (`now-7d`), an instant only once `now` is known."""

    text: str
    as_kind: Mapping[Kind, Scalar | None]
    offset: timedelta | None = None

    @classmethod
    @functools.lru_cache(maxsize=4096)  # rule sets repeat values; readings are immutable
    def read(cls, text: str) -> RuleValue:
        return cls(
            text,
            {
                NUMBER: _parse_number(text),
                BOOL: _parse_bool(text),
                INSTANT: _parse_instant(text),
                TEXT: text,
            },
            parse_relative(text),
        )


def parse_in_items(value: str) -> tuple[RuleValue | None, ...]:
    """The items of an IN list; None for a JSON item no type can read (null, array, object)."""
    stripped = value.strip()
    if not stripped.startswith(("[", "{")):
        texts = value.split(",")
        within(IN_LIST, len(texts))
        return tuple(RuleValue.read(text.strip()) for text in texts)
    try:
        # numbers kept as their text so that they read as any type, like comma items
        items = json.loads(stripped, parse_int=str, parse_float=str, parse_constant=str)
    except (ValueError, RecursionError):
        items = None
    if not isinstance(items, list):
        raise Refused(f"the IN list {value!r} is neither a JSON array nor a comma-separated list")
    within(IN_LIST, len(items))
    return tuple(_json_item(item) for item in items)


def _json_item(item: object) -> RuleValue | None:
    if isinstance(item, bool):
        return RuleValue.read("true" if item else "false")
    return RuleValue.read(item) if isinstance(item, str) else None


# --------------------------------------------------------------------------- comparing


class Verdict(Enum):
    """How a comparison came out; a rule holds on HOLDS, its negation on FAILS."""

    HOLDS = "holds"
    FAILS = "fails"
    UNREADABLE = "rule.value cannot be read as the field's type: rule and negation are false"


FieldTest = Callable[[object, str | None], Verdict]
"""A comparison of a resolved field (value, type name) with the rule."""

HOLDS: Final = Verdict.HOLDS
FAILS: Final = Verdict.FAILS
UNREADABLE: Final = Verdict.UNREADABLE


def equal_verdict(value: object, typname: str | None, expected: RuleValue) -> Verdict:
    kind = kind_of(value, typname)
    if kind not in SCALAR_KINDS:
        return FAILS  # null, arrays and objects are never `=`
    wanted = expected.as_kind[kind]
    if wanted is None:
        return UNREADABLE
    actual = FIELD_READERS[kind](value)
    if actual is None:
        return FAILS
    return HOLDS if actual == wanted else FAILS


def contains_verdict(value: object, typname: str | None, expected: RuleValue) -> Verdict:
    kind = kind_of(value, typname)
    if kind is TEXT:
        return HOLDS if isinstance(value, str) and expected.text in value else FAILS
    if kind is OBJECT:
        return HOLDS if isinstance(value, dict) and expected.text in value else FAILS
    if kind is not ARRAY or not isinstance(value, list):
        return FAILS
    element_typname = typname[1:] if typname is not None and typname.startswith("_") else None
    element_kind = TYPNAME_KINDS.get(element_typname or "")
    if element_kind is not None and expected.as_kind[element_kind] is None:
        return UNREADABLE
    for element in value:
        typed_as = typname if isinstance(element, list) else element_typname
        if equal_verdict(element, typed_as, expected) is HOLDS:
            return HOLDS
    return FAILS


_CONTAINERS: Final = (list, dict)


def same_json(left: object, right: object) -> bool:
    """JSON equality as decoded: unlike Python's ==, true is not 1."""
    if type(left) is type(right) and not isinstance(left, _CONTAINERS):
        return left == right  # text, numbers, booleans and nulls of one type: the usual case
    if isinstance(left, bool) or isinstance(right, bool):
        return left is right
    if isinstance(left, int | float) and isinstance(right, int | float):
        return left == right
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(map(same_json, left, right))
    if isinstance(left, dict) and isinstance(right, dict):
        return left.keys() == right.keys() and all(same_json(left[k], right[k]) for k in left)
    return type(left) is type(right) and left == right
