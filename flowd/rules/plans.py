"""Plans: what compiling makes of rules and flows, as plain data for the index.

A rule compiles into a `RulePlan` (its check, and what the index needs to file its flow
by it), a flow into a `FlowPlan` and its `CompiledFlow`; `FiledFlows` is how the index
files the flows of one (schema, table, change type), which `flowd.rules.codegen` turns
into that bucket's classifier. Nothing here reads an event's fields itself.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final, NamedTuple

from flowd.models import ChangeEvent, Flow
from flowd.rules.fields import EventView, Inline
from flowd.rules.values import NULL_KEY

__all__ = [
    "NOTHING_MATCHED",
    "BucketClassifier",
    "Classification",
    "CompiledFlow",
    "FiledFlows",
    "FlowPlan",
    "FlowPredicate",
    "Inline",
    "OrderBounds",
    "RuleCheck",
    "RulePlan",
    "Unless",
]

FieldRead = Callable[[EventView], tuple[object, ...]]
"""Reads a field in an event once, keeping the reading in `view.readings` (a `Reading`,
or for CHANGED* a `ChangeReading`, see `flowd.rules.fields`)."""

RuleCheck = Callable[[EventView], bool | None]
"""One compiled rule: True/False, or None for "false because `old` lacks the field"."""

FlowPredicate = Callable[[EventView], tuple[bool, bool]]
"""A flow's compiled rules: (matched, needs_full_identity)."""


OrderBounds = tuple[str, Mapping[Hashable, object]]
"""An order rule against a fixed value: its operator (`>`, `>=`, `<`, `<=`) and the value
read as each kind of field it can be ordered with (reading kind → bound)."""


Unless = tuple[Mapping[Hashable, Hashable], frozenset[Hashable]]
"""A negation (`!=`, `NOT_IN`, `IS_NOT_NULL`): it holds unless the field's reading key is
one of the first (mapped to the reading kind that key is of), or its reading kind one of
the second."""


class Classification(NamedTuple):
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


# --------------------------------------------------------------------------- filing


@dataclass(frozen=True, slots=True, eq=False)  # one plan per rule text: the same by identity
class RulePlan:
    """One compiled rule, and what the index needs to file its flow by it."""

    check: RuleCheck
    field_key: str  # the address of the field it reads (`FieldAddress.key`)
    read: FieldRead | None  # reads that field in an event (for CHANGED*, its change)
    keys: frozenset[Hashable] | None  # the reading keys on which it holds, if only on those
    # CHANGED*: the column the old row must hold for the change to be known (the rule
    # reads the old row, and never holds outside UPDATE)
    changed_column: str | None
    inline: Inline | None = None  # `check` as an expression over the field's reading
    bounds: OrderBounds | None = None  # an order against a fixed value
    # `read` as an expression (names as in `Inline`) over `view` and `types`, the event's
    # column types; None where only `read` can read it
    read_inline: Inline | None = None
    unless: Unless | None = None  # a negation of keys

    @property
    def changes(self) -> bool:
        return self.changed_column is not None

    @property
    def is_key(self) -> bool:
        """Whether an index can tell from the field's reading alone when the rule holds."""
        return self.keys is not None or self.bounds is not None


class Filing(NamedTuple):
    """One way the index finds a flow (see `FlowPlan.filing`)."""

    key: RulePlan | None  # the rule it is filed under; None: it is tried on every event
    rest: tuple[RulePlan, ...]  # checked once the key holds (none: the flow matched)
    # An ALL flow filed under a rule after a CHANGED* one: the rules before its key. The
    # flow is reported when they yield None, which they only may when the old row lacks a
    # column of theirs (`RulePlan.changed_column`), key or not.
    before_key: tuple[RulePlan, ...] = ()


@dataclass(frozen=True, slots=True)
class FlowPlan:
    match_all: bool
    rules: tuple[RulePlan, ...]

    def predicate(self, rules: Iterable[RulePlan]) -> FlowPredicate:
        checks = tuple(rule.check for rule in rules)
        return all_hold(checks) if self.match_all else any_holds(checks)

    def filing(self, change_type: str, favoured: Mapping[str, int]) -> list[Filing]:
        """How to find the flow among those of one change type (see `Bucket`): each of
        the returned filings may match it; none: it can never match.

        `favoured` counts, by field, the flows that could be filed under it: of two rules
        as selective, the flow is filed under the one whose field more flows read.
        """
        rules = self.rules
        if change_type != "UPDATE" and any(rule.changes for rule in rules):
            if self.match_all:
                return []
            rules = tuple(rule for rule in rules if not rule.changes)
            if not rules:
                return []
        if self.match_all:
            keyed = [rule for rule in rules if rule.is_key]
            if not keyed and len(rules) == 1 and rules[0].unless is not None:
                return [Filing(rules[0], ())]  # matched where its negation holds
            if keyed:
                key_rule = min(keyed, key=lambda rule: _selectivity(rule, favoured))
                before_key = tuple(itertools.takewhile(lambda r: r is not key_rule, rules))
                if not any(rule.changes for rule in before_key):
                    before_key = ()
                rest = tuple(rule for rule in rules if rule is not key_rule)
                return [Filing(key_rule, rest, before_key)]
        elif not any(rule.changes for rule in rules):
            # no CHANGED*, so no report to keep in order: each keyed rule that holds is a
            # match, and only the other rules are tried on every event
            filed = [Filing(rule, ()) for rule in rules if rule.is_key or rule.unless]
            others = tuple(rule for rule in rules if not (rule.is_key or rule.unless))
            if filed:
                return filed + ([Filing(None, others)] if others else [])
        return [Filing(None, rules)]

    def keyed_fields(self) -> set[str]:
        """The fields of the rules the flow could be filed under."""
        return {rule.field_key for rule in self.rules if rule.is_key}


def _selectivity(rule: RulePlan, favoured: Mapping[str, int]) -> tuple[bool, bool, int, int]:
    """Smaller for the better key: values before orders (which hold for about half the
    events), then not a null test, then the field more flows may be filed under (read
    once for them all), then fewest keys."""
    keys = rule.keys or ()
    return rule.keys is None, NULL_KEY in keys, -favoured.get(rule.field_key, 0), len(keys)


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


# --------------------------------------------------------------------------- filed flows

Filed = tuple[int, int | None]
"""A filed flow: its position in the bucket (ascending id), and the number of the check
of its other rules (see `FiledFlows.rests`), or None: it matched."""
Scanned = tuple[int, FlowPlan | FlowPredicate, tuple[RulePlan, ...]]
"""A flow tried on every event: its position, with its plan and the rules to try, or
with its predicate alone (and no rules)."""
BucketClassifier = Callable[[EventView], Classification]


@dataclass(slots=True, eq=False)
class FiledFlows:
    """The flows of one (schema, table, change type) as `flowd.rules.index.Bucket` files
    them, from which its classifier is generated."""

    name: str  # names the generated code in tracebacks and profiles
    flows: tuple[Flow, ...]  # ascending id: a flow's position in the bucket
    # by field (with a rule reading it), by key
    index: dict[str, tuple[RulePlan, dict[Hashable, list[Filed]]]] = field(default_factory=dict)
    orders: dict[str, tuple[RulePlan, dict[tuple[Hashable, str], list[tuple[object, Filed]]]]] = (
        field(default_factory=dict)
    )
    """By field, by (reading kind, operator): (bound, flow) of the order rules."""
    # by field: the negations flows matched on, and their positions
    negations: dict[str, tuple[RulePlan, list[tuple[Unless, int]]]] = field(default_factory=dict)
    rests: list[tuple[RulePlan, ...]] = field(default_factory=list)  # the other rules of ALL flows
    unknown_changes: dict[str, list[Filed]] = field(default_factory=dict)
    """By column: the flows filed after a CHANGED* rule on it, and their rules before the
    key, to check when the old row lacks the column (see `Filing.before_key`)."""
    scanned: list[Scanned] = field(default_factory=list)
    repeats: bool = False  # whether one flow may match by more than one rule

    @property
    def scanned_only(self) -> bool:
        """Whether every flow is scanned: matched in ascending order, once each."""
        return not self.index and not self.orders and not self.negations
