"""Compiling: a flow's definition checked and its rules compiled, once per flow.

The contract is `shared/spec/rules.md`. Each flow is compiled once: its rules become
closures with `rule.value` already read as every type it could be compared as (number,
boolean, instant, text), its regular expression compiled and its `IN` list parsed. An
event then only costs reading the fields the rules address.

`rule.value` is read as the type of the field it is compared with: the column's Postgres
type (`event.columns`) for a top-level column, the element type for an element of a typed
array column (`tags.0` of `_text` is text), and the JSON value's own type below a
json/jsonb column or when the event carries no column types (supabase-js shape).

Three outcomes of a comparison keep the negations honest (see `Verdict`): a field that
cannot be read as its own type simply fails (so `!=`, `NOT_IN`, `NOT_CONTAINS` hold),
whereas a `rule.value` that cannot be read as the field's type makes the rule false
whatever the operator.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping

from flowd.errors import FlowDefinitionError
from flowd.models import Flow, Rule
from flowd.rules.fields import addressed_type, forget_fields, parse_field
from flowd.rules.index import CHANGE_TYPES, FlowIndex
from flowd.rules.limits import RULE_VALUE, Refused, within
from flowd.rules.operators import OPERATORS, Operator, operator_named
from flowd.rules.plans import CompiledFlow, FlowPlan, RulePlan
from flowd.rules.values import INSTANT, TYPNAME_KINDS, RuleValue

__all__ = [
    "build_index",
    "check_rule_against_columns",
    "compile_flow",
    "forget_compiled",
    "needs_old_row",
]


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
    for cached in (_rule_plan, RuleValue.read):
        cached.cache_clear()
    forget_fields()


def check_rule_against_columns(rule: Rule, column_types: Mapping[str, str]) -> str | None:
    """A sentence saying why `rule` cannot work on a table with these columns, or None.

    Only what depends on the table is checked here (the column exists; `rule.value` can
    be read as the addressed column's type); `compile_flow` reports everything else.
    """
    try:
        address = parse_field(rule.field)
        operator = operator_named(rule.operator)
        readings = _readings_to_check(operator, rule.value)
    except Refused:
        return None
    if address.column not in column_types:
        return f"column {address.column!r} does not exist in the table"
    addressed = addressed_type(address, column_types[address.column], operator.on_elements)
    kind = None if addressed is None else TYPNAME_KINDS.get(addressed[0])
    if addressed is None or kind is None:
        return None  # below json, or text-like: any value reads as itself
    typname, what = addressed
    for reading in readings:
        if reading is None:
            return f"the IN list has an item (null, array or object) that {what} can never equal"
        if reading.as_kind[kind] is None and not (
            kind is INSTANT and reading.offset is not None and operator.order is not None
        ):
            if reading.offset is not None:
                return f"{reading.text!r} (relative time) only works with <, >, <= and >="
            return (
                f"value {reading.text!r} cannot be read as {kind.value}, "
                f"the type of {what} ({typname}), so the rule is never true"
            )
    return None


def _readings_to_check(operator: Operator, value: str | None) -> tuple[RuleValue | None, ...]:
    """The readings of rule.value that must succeed for the rule to ever hold."""
    if value is None:
        return ()
    within(RULE_VALUE, len(value))
    return () if operator.typed_value is None else operator.typed_value(value)


# --------------------------------------------------------------------------- compiling


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
    if trigger_event not in ("*", "SCHEDULE", *CHANGE_TYPES):
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
    operators = (OPERATORS.get(rule.operator.strip().upper()) for rule in flow.rules)
    return any(operator is not None and operator.reads_old_row for operator in operators)


def _rule_location(position: int, rule: Rule) -> str:
    if rule.rule_id is not None:
        return f"rule {rule.rule_id}"
    return f"rule #{position} (field {rule.field})" if rule.field else f"rule #{position}"


def _compile_rule(flow_id: int, position: int, rule: Rule) -> RulePlan:
    try:
        within(RULE_VALUE, len(rule.value or ""))  # before the plan cache hashes it
        return _rule_plan(rule.field, rule.operator, rule.value)
    except Refused as refused:
        raise FlowDefinitionError(flow_id, _rule_location(position, rule), refused.reason) from None


@functools.lru_cache(maxsize=16384)  # flows repeat rules; a plan is immutable and shareable
def _rule_plan(field: str, operator_text: str, value: str | None) -> RulePlan:
    operator = operator_named(operator_text)
    address = parse_field(field)
    if value is None and operator.needs_value:
        raise Refused(f"operator {operator.name} needs a value")
    return operator.build(operator, value or "", address)
