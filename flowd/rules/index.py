"""The index: compiled flows by (schema, table, change type), then filed by their rules.

`FlowIndex` hands an event to the `Bucket` of its table and type; a bucket files its
flows (`FiledFlows`) so that an event only tries those its values select, and
classifies with the function `flowd.rules.codegen` generates from that filing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Final

from flowd.models import ChangeEvent, ChangeType, Flow
from flowd.rules.codegen import classifier
from flowd.rules.fields import EventView
from flowd.rules.plans import (
    NOTHING_MATCHED,
    BucketClassifier,
    Classification,
    CompiledFlow,
    Filed,
    FiledFlows,
    RulePlan,
)

__all__ = ["Bucket", "FlowIndex"]

CHANGE_TYPES: Final[tuple[ChangeType, ...]] = ("INSERT", "UPDATE", "DELETE")


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
            change_types = CHANGE_TYPES if trigger_event == "*" else (trigger_event,)
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


class Bucket:
    """The flows of one (schema, table, change type), filed so that an event tries few.

    Keys are rules an index tells from the field's reading alone: an `=`, `IN` or
    `IS_NULL` by the reading keys on which it holds; an order against a fixed value
    (`>`, `<=`, …) by its bound, kept sorted so that one bisection per event finds the
    rules that hold; a negation (`!=`, `NOT_IN`, `IS_NOT_NULL`) by the keys and kinds on
    which it does not, the flows holding for each worked out once.

    A flow whose rules must all hold and that has a key is filed under its most
    selective one (`FlowPlan.filing`): an event tries it only when that key holds, then
    checks the other rules in order. If a CHANGED* rule comes before the key, the flow
    may need reporting even when the key fails: that is checked only on events whose old
    row lacks the CHANGED* column (`unknown_changes`). A flow any of whose rules may
    hold, none a CHANGED*, is filed under each of its keys (and negations) and matches on
    a hit; only its other rules are tried on every event. Every other flow is tried on
    every event. Outside UPDATE, CHANGED* never holds: flows that need one are left out,
    and those that may use one drop it.

    The bucket's events are classified by a function generated for it on its first event
    (loading stays quick): each field read once into a local, checks inline (`flowd.rules.codegen`).
    """

    __slots__ = ("classify", "filed")

    classify: BucketClassifier  # the classifier of the bucket's events
    filed: FiledFlows

    def __init__(self, change_type: str, flows: Iterable[CompiledFlow], name: str = "") -> None:
        self.filed = file_flows(change_type, tuple(flows), name or change_type)
        self.classify = self._generate

    def _generate(self, view: EventView) -> Classification:
        """Classifies the bucket's first event, once its classifier is generated."""
        self.classify = classifier(self.filed)
        return self.classify(view)


def file_flows(change_type: str, compiled: tuple[CompiledFlow, ...], name: str) -> FiledFlows:
    """The flows of one change type filed as `Bucket` says, ascending id."""
    plans = [c.plan for c in compiled if c.plan is not None]
    favoured = Counter(field for plan in plans for field in plan.keyed_fields())
    filed = FiledFlows(name, tuple(c.flow for c in compiled))
    for position, flow in enumerate(compiled):
        if flow.plan is None:
            filed.scanned.append((position, flow.predicate, ()))
            continue
        filing = flow.plan.filing(change_type, favoured)
        filed.repeats = filed.repeats or len(filing) > 1
        for rule, rules, before_key in filing:
            if rule is None:
                filed.scanned.append((position, flow.plan, rules))
                continue
            _file(filed, rule, (position, _rest(filed, rules)))
            for column in {r.changed_column for r in before_key if r.changed_column}:
                watched = filed.unknown_changes.setdefault(column, [])
                watched.append((position, _rest(filed, before_key)))
    return filed


def _rest(filed: FiledFlows, rules: tuple[RulePlan, ...]) -> int | None:
    if not rules:
        return None
    filed.rests.append(rules)
    return len(filed.rests) - 1


def _file(filed: FiledFlows, rule: RulePlan, entry: Filed) -> None:
    assert rule.read is not None
    if rule.unless is not None:
        by_rule = filed.negations.setdefault(rule.field_key, (rule, []))[1]
        by_rule.append((rule.unless, entry[0]))
        return
    if rule.keys is not None:
        by_key = filed.index.setdefault(rule.field_key, (rule, {}))[1]
        for key in rule.keys:
            by_key.setdefault(key, []).append(entry)
        return
    assert rule.bounds is not None
    operator_name, bound_by_kind = rule.bounds
    by_kind = filed.orders.setdefault(rule.field_key, (rule, {}))[1]
    for kind, bound in bound_by_kind.items():
        by_kind.setdefault((kind, operator_name), []).append((bound, entry))
