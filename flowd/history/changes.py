"""An UPDATE's per-column diff: which columns of the row changed, from what to what."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

ABSENT: Any = None  # the value shown for a side that does not have the column


@dataclass(frozen=True, slots=True)
class ColumnChange:
    """One column of an UPDATE: its old and new value.

    `in_old` is False where the old row lacks the column: without REPLICA IDENTITY FULL,
    Realtime sends only the old row's primary key, so the old value is not known.
    """

    column: str
    old: Any
    new: Any
    in_old: bool = True
    in_new: bool = True


def column_order(event: Mapping[str, Any]) -> list[str]:
    """The event's columns in table order (Realtime sends them), then any the rows add."""
    listed = event.get("columns")
    columns = listed if isinstance(listed, list) else []
    names = [column.get("name") for column in columns if isinstance(column, dict)]
    rows = [row for row in (event.get("record"), event.get("old_record")) if isinstance(row, dict)]
    every = [name for name in names if isinstance(name, str)] + [c for row in rows for c in row]
    return list(dict.fromkeys(every))


def column_changes(
    old: Mapping[str, Any] | None,
    new: Mapping[str, Any] | None,
    order: Sequence[str] = (),
) -> tuple[ColumnChange, ...]:
    """The columns whose values differ, or that one side lacks, in `order`, then the rows'."""
    old, new = old or {}, new or {}
    columns = [c for c in dict.fromkeys([*order, *new, *old]) if c in old or c in new]
    return tuple(
        ColumnChange(
            column,
            old.get(column, ABSENT),
            new.get(column, ABSENT),
            in_old=column in old,
            in_new=column in new,
        )
        for column in columns
        if column not in old or column not in new or not _same(old[column], new[column])
    )


def _same(old: Any, new: Any) -> bool:
    # As JSON text: Python's `True == 1` and `1 == 1.0` would hide a change of type.
    return json.dumps(old, sort_keys=True) == json.dumps(new, sort_keys=True)
