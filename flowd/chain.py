"""Chains: recognise the changes flowd caused itself, so a loop of flows stops.

After a DB_UPDATE, flowd remembers each row it wrote (table, primary key, the values it
set) with the *cause* of the write: how deep in a chain of flowd-caused changes it is,
and which flows made it. When Realtime later delivers an UPDATE of that row carrying
those values, the change is recognised as flowd's own and inherits depth + 1. Changes
from anyone else have depth 0. Memory is bounded (oldest forgotten first) and entries
expire, so a write whose event never comes is not remembered for ever.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from flowd.models import ChangeEvent

RowKey = tuple[str, str, tuple[Any, ...]]


@dataclass(frozen=True, slots=True)
class Cause:
    """Why a change happened: `depth` flowd writes deep, made by `flows` in order."""

    depth: int = 0
    flows: tuple[int, ...] = ()

    def then(self, flow_id: int) -> Cause:
        return Cause(self.depth + 1, (*self.flows, flow_id))

    def to_json(self) -> str:
        """As the capture trigger stores it (`flowd.cause`, `flow_events.cause`)."""
        return json.dumps({"depth": self.depth, "flows": list(self.flows)})

    @classmethod
    def from_json(cls, text: str) -> Cause:
        """The inverse of `to_json`; ValueError when `text` is not one."""
        try:
            data = json.loads(text)
            return cls(int(data["depth"]), tuple(int(flow) for flow in data["flows"]))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a cause: {text!r}") from exc


EXTERNAL = Cause()


@dataclass(frozen=True, slots=True)
class _Write:
    values: Mapping[str, Any]
    cause: Cause
    expires_at: float


class OwnWrites:
    """Rows flowd wrote recently, by table and primary key."""

    def __init__(
        self,
        *,
        ttl_s: float = 300.0,
        max_rows: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl_s = ttl_s
        self._max_rows = max_rows
        self._clock = clock
        self._writes: OrderedDict[RowKey, list[_Write]] = OrderedDict()
        self._keys: dict[tuple[str, str], tuple[str, ...]] = {}

    def remember(
        self,
        schema: str,
        table: str,
        primary_key: Sequence[str],
        columns: Sequence[str],
        rows: Sequence[Mapping[str, Any]],
        cause: Cause,
    ) -> None:
        """Note that flowd set `columns` of these rows (as read back after the write)."""
        if not primary_key:
            return
        self._keys[(schema, table)] = tuple(primary_key)
        expires = self._clock() + self._ttl_s
        for row in rows:
            key = (schema, table, tuple(row.get(column) for column in primary_key))
            write = _Write({column: row.get(column) for column in columns}, cause, expires)
            self._writes.setdefault(key, []).append(write)
            self._writes.move_to_end(key)
        while len(self._writes) > self._max_rows:
            self._writes.popitem(last=False)

    def recognise(self, event: ChangeEvent) -> Cause:
        """The cause of this change: inherited from flowd's own write, or EXTERNAL."""
        primary_key = self._keys.get((event.schema_name, event.table))
        if event.type != "UPDATE" or primary_key is None or event.record is None:
            return EXTERNAL
        record = event.record
        key = (event.schema_name, event.table, tuple(record.get(column) for column in primary_key))
        writes = self._writes.get(key)
        if not writes:
            return EXTERNAL
        now = self._clock()
        writes[:] = [write for write in writes if write.expires_at > now]
        for index, write in enumerate(writes):
            if all(record.get(column) == value for column, value in write.values.items()):
                del writes[index]
                if not writes:
                    del self._writes[key]
                return write.cause
        if not writes:
            del self._writes[key]
        return EXTERNAL
