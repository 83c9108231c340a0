"""A flow as a flows file writes it: its key, its columns, its rules and actions as lists."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from flowd.models import Action, Flow, Rule, rule_value_as_text, valid_text

KEY_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")  # as the flows_key_format check
_KEY_LENGTH = 63
# strict: a file's `is_enabled: "yes"` or `name: 5` is a wrong type, not something to guess at
_written = ConfigDict(extra="forbid", frozen=True, strict=True)


class RuleSpec(BaseModel):
    model_config = _written

    field: str
    operator: str
    value: str | None = None

    _value = field_validator("value", mode="before")(rule_value_as_text)

    _text = field_validator("field", "operator")(valid_text)


class ActionSpec(BaseModel):
    model_config = _written

    type: str
    config: dict[str, Any] = Field(default_factory=dict)

    _text = field_validator("type", "config")(valid_text)


class FlowSpec(BaseModel):
    model_config = _written

    key: str = Field(pattern=KEY_PATTERN.pattern)
    name: str
    trigger_table: str
    trigger_event: str = "*"
    match: str = "ALL"
    is_enabled: bool = True
    schedule: str | None = None
    schedule_tz: str | None = None
    rules: list[RuleSpec] = Field(default_factory=list)
    actions: list[ActionSpec] = Field(default_factory=list)

    _text = field_validator(
        "name", "trigger_table", "trigger_event", "match", "schedule", "schedule_tz"
    )(valid_text)

    def to_flow(self, flow_id: int) -> Flow:
        """The flow the daemon runs, under `flow_id` (the database's, or a stand-in)."""
        return Flow(
            flow_id=flow_id,
            key=self.key,
            name=self.name,
            trigger_table=self.trigger_table,
            trigger_event=self.trigger_event,
            match=self.match,
            is_enabled=self.is_enabled,
            schedule=self.schedule,
            schedule_tz=self.schedule_tz,
            rules=tuple(
                Rule(field=r.field, operator=r.operator, value=r.value) for r in self.rules
            ),
            actions=tuple(
                Action(type=a.type, config=a.config, position=position)
                for position, a in enumerate(self.actions)
            ),
        )


def spec_of(flow: Flow, key: str) -> FlowSpec:
    """`flow` as a file writes it, under `key` (its own, or one derived for it)."""
    return FlowSpec(
        key=key,
        name=flow.name,
        trigger_table=flow.trigger_table,
        trigger_event=flow.trigger_event,
        match=flow.match,
        is_enabled=flow.is_enabled,
        schedule=flow.schedule,
        schedule_tz=flow.schedule_tz,
        rules=[RuleSpec(field=r.field, operator=r.operator, value=r.value) for r in flow.rules],
        actions=[ActionSpec(type=a.type, config=a.config) for a in flow.ordered_actions],
    )


def slugify(name: str) -> str:
    """A key made of `name`: lower case, each run of other characters one `-`."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:_KEY_LENGTH].rstrip("-")
    return slug or "flow"


def derive_keys(flows: Iterable[Flow]) -> dict[int, str]:
    """Each flow's key by flow id: its own, else one made of its name that no other flow
    has (`-2`, `-3` ... appended), in flow order."""
    flows = list(flows)
    taken = {flow.key for flow in flows if flow.key is not None}
    keys: dict[int, str] = {}
    for flow in flows:
        if flow.key is not None:
            keys[flow.flow_id] = flow.key
            continue
        base = key = slugify(flow.name)
        number = 1
        while key in taken:
            number += 1
            suffix = f"-{number}"
            key = base[: _KEY_LENGTH - len(suffix)] + suffix
        taken.add(key)
        keys[flow.flow_id] = key
    return keys
