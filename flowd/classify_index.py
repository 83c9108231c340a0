"""Indexing: how compiled rules become flow predicates, and how flows are filed so that an
event only tries those its values select (see `Bucket`).

`flowd.classify` compiles each rule into a `RulePlan` and builds one `Bucket` per
(schema, table, change type); this module never reads an event's fields itself.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from flowd.models import Flow

if TYPE_CHECKING:
    from flowd.classify import CompiledFlow, EventView, Fetch

__all__ = [
    "NOTHING_MATCHED",
    "NULL_KEY",
    "Bucket",
    "Classification",
    "FlowPlan",
    "FlowPredicate",
    "RuleCheck",
    "RulePlan",
]

NULL_KEY: Final = "null"  # the reading key of a null or missing field

RuleCheck = Callable[["EventView"], bool | None]
"""One compiled rule: True/False, or None for "false because `old` lacks the field"."""

FlowPredicate = Callable[["EventView"], tuple[bool, bool]]
"""A flow's compiled rules: (matched, needs_full_identity)."""


@dataclass(frozen=True)
class Classification:
    """The flows an event matched, and those that could not tell without the old row."""

    flows: tuple[Flow, ...]
    needs_full_identity: tuple[Flow, ...]


NOTHING_MATCHED: Final = Classification((), ())


def all_hold(checks: tuple[RuleCheck, ...]) -> FlowPredicate:
    if len(checks) == 1:
        return _one_holds(checks[0])

    def all_hold(view: EventView) -> tuple[bool, bool]:
        for check in checks:
            verdict = check(view)
            if not verdict:
                return False, verdict is None
        return True, False

    return all_hold


def _one_holds(check: RuleCheck) -> FlowPredicate:
    def one_holds(view: EventView) -> tuple[bool, bool]:
        verdict = check(view)
        return (True, False) if verdict else (False, verdict is None)

    return one_holds


def any_holds(checks: tuple[RuleCheck, ...]) -> FlowPredicate:
    if len(checks) == 1:
        return _one_holds(checks[0])

    def any_holds(view: EventView) -> tuple[bool, bool]:
        lacking_identity = False
        for check in checks:
            verdict = check(view)
            if verdict:
                return True, lacking_identity
            lacking_identity = lacking_identity or verdict is None
        return not checks, lacking_identity

    return any_holds


# --------------------------------------------------------------------------- indexing


@dataclass(frozen=True, slots=True)
class RulePlan:
    """One compiled rule, and what the index needs to file its flow by it."""

    check: RuleCheck
    field_key: str  # the address of the field it reads (`_FieldAddress.key`)
    read: Fetch | None  # reads that field in an event (`_FieldAddress.reader`); None for CHANGED*
    keys: frozenset[Hashable] | None  # the reading keys on which it holds, if only on those
    changes: bool  # CHANGED*: reads the old row, and never holds outside UPDATE


@dataclass(frozen=True, slots=True)
class FlowPlan:
    match_all: bool
    rules: tuple[RulePlan, ...]

    def predicate(self, rules: Iterable[RulePlan]) -> FlowPredicate:
        checks = tuple(rule.check for rule in rules)
        return all_hold(checks) if self.match_all else any_holds(checks)

    def filing(self, change_type: str) -> list[tuple[RulePlan | None, FlowPredicate | None]]:
        """How to find the flow among those of one change type (see `Bucket`).

        [(rule, rest)]: file it under `rule`'s keys, then check `rest` (None: it matched);
        [(None, predicate)]: try it on every event; []: it can never match.
        """
        rules = self.rules
        if change_type != "UPDATE" and any(rule.changes for rule in rules):
            if self.match_all:
                return []
            rules = tuple(rule for rule in rules if not rule.changes)
            if not rules:
                return []
        if self.match_all:
            # a rule after a CHANGED* one is not a key: the CHANGED* one may need reporting
            leading = itertools.takewhile(lambda rule: not rule.changes, rules)
            keyed = [rule for rule in leading if rule.keys is not None]
            if keyed:
                key_rule = min(keyed, key=_selectivity)
                return [(key_rule, self.predicate(r for r in rules if r is not key_rule))]
        elif not any(rule.changes for rule in rules):
            # no CHANGED*, so no report to keep in order: each keyed rule that holds is a
            # match, and only the other rules are tried on every event
            filed: list[tuple[RulePlan | None, FlowPredicate | None]]
            filed = [(rule, None) for rule in rules if rule.keys is not None]
            others = [rule for rule in rules if rule.keys is None]
            if filed:
                return filed + ([(None, self.predicate(others))] if others else [])
        return [(None, self.predicate(rules))]


def _selectivity(rule: RulePlan) -> tuple[bool, int]:
    """Smaller for the rule that lets fewer events through: not a null test, fewest keys."""
    keys = rule.keys or frozenset()
    return NULL_KEY in keys, len(keys)


_Entry = tuple[Flow, FlowPredicate | None]


class Bucket:
    """The flows of one (schema, table, change type), filed so that an event tries few.

    A flow whose rules must all hold, one of them an `=`, `IN` or `IS_NULL` ahead of any
    CHANGED*, is filed under the reading keys on which that rule holds: an event tries it
    only when the field's reading has one of those keys, then checks the other rules.
    A flow any of whose rules may hold, each of them such a rule, is filed under each and
    matches on a hit. Every other flow is tried on every event. Outside UPDATE, CHANGED*
    never holds: flows that need one are left out, and those that may use one drop it.
    """

    __slots__ = ("_indexes", "_scanned")

    def __init__(self, change_type: str, flows: Iterable[CompiledFlow]) -> None:
        scanned: list[tuple[Flow, FlowPredicate]] = []
        fetchers: dict[str, Fetch] = {}
        filed: dict[str, dict[Hashable, list[_Entry]]] = {}
        for compiled in flows:
            plan = compiled.plan
            filing = [(None, compiled.predicate)] if plan is None else plan.filing(change_type)
            for rule, rest in filing:
                if rule is None:
                    assert rest is not None
                    scanned.append((compiled.flow, rest))
                    continue
                assert rule.keys is not None
                assert rule.read is not None
                by_key = filed.setdefault(rule.field_key, {})
                for key in rule.keys:
                    by_key.setdefault(key, []).append((compiled.flow, rest))
                fetchers.setdefault(rule.field_key, rule.read)
        self._scanned = tuple(scanned)
        self._indexes = tuple(
            (field_key, fetchers[field_key], {k: tuple(entries) for k, entries in by_key.items()})
            for field_key, by_key in filed.items()
        )

    def classify(self, view: EventView) -> Classification:
        matched: list[Flow] = []
        lacking_identity: list[Flow] = []
        for flow, predicate in self._scanned:
            is_match, needs_full_identity = predicate(view)
            if is_match:
                matched.append(flow)
            if needs_full_identity:
                lacking_identity.append(flow)
        found = False
        readings = view.readings
        for key, read, entries_by_key in self._indexes:
            entries = entries_by_key.get((readings.get(key) or read(view))[4])
            if entries is None:
                continue
            found = True
            for flow, rest in entries:
                if rest is None:
                    matched.append(flow)
                    continue
                is_match, needs_full_identity = rest(view)
                if is_match:
                    matched.append(flow)
                if needs_full_identity:
                    lacking_identity.append(flow)
        if not matched and not lacking_identity:
            return NOTHING_MATCHED
        if found:
            return Classification(_ascending(matched), _ascending(lacking_identity))
        return Classification(tuple(matched), tuple(lacking_identity))


def _ascending(flows: Iterable[Flow]) -> tuple[Flow, ...]:
    """Once each, ascending id."""
    by_id = {flow.flow_id: flow for flow in flows}
    return tuple(by_id[flow_id] for flow_id in sorted(by_id))
