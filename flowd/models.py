"""Plain data passed between the stages: change events, flow definitions, outcomes.

Everything here is frozen pydantic data with no I/O. The source stage builds
`ChangeEvent`s, the flow store builds `Flow`s, the classifier reads both, the
actions produce `ActionOutcome`s and the recorder writes them.

A flow's definition (`Flow`, `Rule`, `Action`) is a slotted pydantic dataclass, not a
model: the daemon holds every flow for its whole life, and a model's `__dict__` and set
of the fields set would more than double what each one takes.
"""

from __future__ import annotations

import hashlib
import json
import re
from functools import cached_property
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator, model_validator
from pydantic.dataclasses import dataclass

# SCHEDULE: not a change but a row read by a scheduled flow's tick (flowd.feeds.schedule).
ChangeType = Literal["INSERT", "UPDATE", "DELETE", "SCHEDULE"]
TriggerEvent = Literal["INSERT", "UPDATE", "DELETE", "*", "SCHEDULE"]
Status = Literal["RUNNING", "SUCCESS", "FAILURE"]

_frozen = ConfigDict(frozen=True, populate_by_name=True)
_INVALID_TEXT = re.compile("[\x00\ud800-\udfff]")


def valid_text(value: Any) -> Any:
    """`value` as is; ValueError when a string in it (a key too) is not text Postgres can
    store: a NUL character, or a lone surrogate (a flows file's `"\\ud800"`)."""
    pending = [value]
    while pending:  # iterative: a deeply nested config must not raise RecursionError
        item = pending.pop()
        if isinstance(item, str):
            if (found := _INVALID_TEXT.search(item)) is not None:
                what = "a NUL character" if found[0] == "\x00" else "a lone surrogate"
                raise ValueError(f"contains {what} (\\u{ord(found[0]):04x}), which is not text")
        elif isinstance(item, dict):
            pending += [*item.keys(), *item.values()]
        elif isinstance(item, list | tuple):
            pending += item
    return value


def table_ref(name: str) -> tuple[str, str]:
    """(schema, table) of `table` or `schema.table`; a bare name is in `public`."""
    schema, _, table = name.rpartition(".")
    return (schema or "public", table)


class Column(BaseModel):
    model_config = _frozen

    name: str
    type: str


class ChangeEvent(BaseModel):
    """One row change: the `data` object of a Realtime `postgres_changes` frame.

    `record` is None where the wire omits it (DELETE), `old_record` likewise (INSERT).
    Built from the supabase-js shape (`eventType`, `new`, `old`) too. A SCHEDULE event is
    one row read by a tick: `commit_timestamp` is the tick's scheduled time and
    `primary_key` names the row's key columns.
    """

    model_config = _frozen

    schema_name: str = Field(alias="schema")
    table: str
    type: ChangeType
    commit_timestamp: str | None = None
    columns: tuple[Column, ...] = ()
    record: dict[str, Any] | None = None
    old_record: dict[str, Any] | None = None
    errors: list[str] | None = None
    primary_key: tuple[str, ...] | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_supabase_js_shape(cls, data: Any) -> Any:
        if not isinstance(data, dict) or "eventType" not in data or "type" in data:
            return data
        data = dict(data)
        change_type = str(data.pop("eventType")).upper()
        new, old = data.pop("new", None), data.pop("old", None)
        data["type"] = change_type
        if change_type != "DELETE" and new is not None:
            data["record"] = new
        if change_type != "INSERT" and old is not None:
            data["old_record"] = old
        return data

    @field_validator("type", mode="before")
    @classmethod
    def _enum_value(cls, value: Any) -> Any:
        # The realtime client hands over a str Enum; its str() is the member name.
        return getattr(value, "value", value)

    @property
    def new(self) -> dict[str, Any]:
        return self.record or {}

    @property
    def old(self) -> dict[str, Any]:
        return self.old_record or {}

    @cached_property
    def column_types(self) -> dict[str, str]:
        """Each column's Postgres type name, by column name (worked out once per event)."""
        return {column.name: column.type for column in self.columns}

    @cached_property
    def key(self) -> str:
        """A stable idempotency key: the same change always, two changes never, share one.

        A SCHEDULE event's key is its tick and its row's key, not the whole row: a row
        that changed while the tick ran (a DB_UPDATE of its own) keeps its key.
        """
        identity: dict[str, Any] = {
            "schema": self.schema_name,
            "table": self.table,
            "type": self.type,
            "commit_timestamp": self.commit_timestamp,
        }
        if self.type == "SCHEDULE" and self.primary_key is not None:
            identity["row"] = {column: self.new.get(column) for column in self.primary_key}
        else:
            identity |= {"record": self.record, "old_record": self.old_record}
        canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()[:32]

    def to_wire(self) -> dict[str, Any]:
        """The event as it arrives on the wire (absent records stay absent)."""
        return self.model_dump(by_alias=True, exclude_none=True, exclude={"errors"}) | {
            "errors": self.errors
        }


def rule_value_as_text(value: Any) -> Any:
    """A rule's value as its column holds it: text (a file's `5` or `[High, Urgent]` as JSON)."""
    if value is None or isinstance(value, str):
        return valid_text(value)
    return json.dumps(valid_text(value))


@dataclass(frozen=True, slots=True, kw_only=True)
class Rule:
    rule_id: int | None = None
    field: str
    operator: str
    value: str | None = None

    _value = field_validator("value", mode="before")(rule_value_as_text)

    _text = field_validator("field", "operator")(valid_text)


@dataclass(frozen=True, slots=True, kw_only=True)
class Action:
    action_id: int | None = None
    type: str
    config: dict[str, Any] = Field(default_factory=dict)
    position: int = 0

    _text = field_validator("type", "config")(valid_text)


@dataclass(frozen=True, slots=True, kw_only=True)
class Flow:
    """A flow as stored in `flows`, with its rules and actions."""

    flow_id: Annotated[int, Field(ge=-(2**63), lt=2**63)]  # a bigint
    name: str
    key: str | None = None  # the flows file's name for it (flowd.flowfiles); None: unset
    trigger_table: str
    trigger_event: str = "*"
    is_enabled: bool = True
    match: str = "ALL"
    schedule: str | None = None  # SCHEDULE flows: a five-field cron expression
    schedule_tz: str | None = None  # its time zone; None is UTC
    rules: tuple[Rule, ...] = ()
    actions: tuple[Action, ...] = ()

    _text = field_validator(
        "name", "key", "trigger_table", "trigger_event", "match", "schedule", "schedule_tz"
    )(valid_text)

    @property
    def table_ref(self) -> tuple[str, str]:
        """(schema, table) named by `trigger_table`."""
        return table_ref(self.trigger_table)

    @property
    def is_scheduled(self) -> bool:
        return self.trigger_event.strip().upper() == "SCHEDULE"

    @property
    def ordered_actions(self) -> tuple[Action, ...]:
        return tuple(sorted(self.actions, key=lambda a: (a.position, a.action_id or 0)))


_FLOW = TypeAdapter(Flow)


def parse_flow(data: Any) -> Flow:
    """A flow from its stored or written shape (a mapping); pydantic.ValidationError if invalid."""
    return _FLOW.validate_python(data)


class ActionOutcome(BaseModel):
    """What one action did: the per-action details kept in `flow_executions`."""

    model_config = _frozen

    action_id: int | None
    type: str
    ok: bool
    attempts: int = 0
    duration_ms: int = 0
    http_status: int | None = None
    rows_written: int | None = None
    error: str | None = None

    def describe(self) -> str:
        """One line of the execution's human-readable log."""
        what = f"action {self.action_id} {self.type}"
        if self.http_status is not None:
            what += f" HTTP {self.http_status}"
        if self.rows_written is not None:
            what += f" rows written {self.rows_written}"
        what += f", {self.attempts} attempt{'s' if self.attempts != 1 else ''}"
        what += f", {self.duration_ms} ms"
        return f"{'ok' if self.ok else 'FAILED'}: {what}" + (
            f": {self.error}" if self.error else ""
        )
