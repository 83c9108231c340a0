"""Indexing: how compiled rules become flow predicates, and how flows are filed so that an
event only tries those its values select (see `Bucket`).

`flowd.classify` compiles each rule into a `RulePlan` and builds one `Bucket` per
(schema, table, change type); this module never reads an event's fields itself.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
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
    "Inline",
    "RuleCheck",
    "RulePlan",
]

NULL_KEY: Final = "null"  # the reading key of a null or missing field

RuleCheck = Callable[["EventView"], bool | None]
"""One compiled rule: True/False, or None for "false because `old` lacks the field"."""

FlowPredicate = Callable[["EventView"], tuple[bool, bool]]
"""A flow's compiled rules: (matched, needs_full_identity)."""

Inline = tuple[str, Mapping[str, object]]
"""A rule's check as a Python expression, and the values it names. In the text, `{r}`
stands for the field's reading and `{c}` for the prefix its names are given; every value
(rule.value read as each kind, key sets, bounds, functions) is passed by name, never
written into the text."""


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
    inline: Inline | None = None  # `check` as an expression over the field's reading


@dataclass(frozen=True, slots=True)
class FlowPlan:
    match_all: bool
    rules: tuple[RulePlan, ...]

    def predicate(self, rules: Iterable[RulePlan]) -> FlowPredicate:
        checks = tuple(rule.check for rule in rules)
        return all_hold(checks) if self.match_all else any_holds(checks)

    def filing(self, change_type: str) -> list[tuple[RulePlan | None, tuple[RulePlan, ...]]]:
        """How to find the flow among those of one change type (see `Bucket`).

        [(rule, rest)]: file it under `rule`'s keys, then check the rules `rest` (none: it
        matched); [(None, rules)]: try `rules` on every event; []: it can never match.
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
                return [(key_rule, tuple(r for r in rules if r is not key_rule))]
        elif not any(rule.changes for rule in rules):
            # no CHANGED*, so no report to keep in order: each keyed rule that holds is a
            # match, and only the other rules are tried on every event
            filed: list[tuple[RulePlan | None, tuple[RulePlan, ...]]]
            filed = [(rule, ()) for rule in rules if rule.keys is not None]
            others = tuple(rule for rule in rules if rule.keys is None)
            if filed:
                return filed + ([(None, others)] if others else [])
        return [(None, rules)]


def _selectivity(rule: RulePlan) -> tuple[bool, int]:
    """Smaller for the rule that lets fewer events through: not a null test, fewest keys."""
    keys = rule.keys or frozenset()
    return NULL_KEY in keys, len(keys)


_Entry = tuple[Flow, FlowPredicate | None]
# A flow tried on every event: with its plan and the rules to try, or its predicate alone.
_Scanned = tuple[Flow, FlowPlan, tuple[RulePlan, ...]] | tuple[Flow, None, FlowPredicate]
_Add = Callable[[Flow], None]
Scanner = Callable[["EventView", _Add, _Add], None]


class Bucket:
    """The flows of one (schema, table, change type), filed so that an event tries few.

    A flow whose rules must all hold, one of them an `=`, `IN` or `IS_NULL` ahead of any
    CHANGED*, is filed under the reading keys on which that rule holds: an event tries it
    only when the field's reading has one of those keys, then checks the other rules.
    A flow any of whose rules may hold, each of them such a rule, is filed under each and
    matches on a hit. Every other flow is tried on every event. Outside UPDATE, CHANGED*
    never holds: flows that need one are left out, and those that may use one drop it.
    """

    __slots__ = ("_indexes", "_scan", "_scanned")

    def __init__(self, change_type: str, flows: Iterable[CompiledFlow]) -> None:
        scanned: list[_Scanned] = []
        fetchers: dict[str, Fetch] = {}
        filed: dict[str, dict[Hashable, list[_Entry]]] = {}
        for compiled in flows:
            plan = compiled.plan
            if plan is None:
                scanned.append((compiled.flow, None, compiled.predicate))
                continue
            for rule, rules in plan.filing(change_type):
                if rule is None:
                    scanned.append((compiled.flow, plan, rules))
                    continue
                assert rule.keys is not None
                assert rule.read is not None
                rest = plan.predicate(rules) if rules else None
                by_key = filed.setdefault(rule.field_key, {})
                for key in rule.keys:
                    by_key.setdefault(key, []).append((compiled.flow, rest))
                fetchers.setdefault(rule.field_key, rule.read)
        self._scanned = tuple(scanned)
        self._scan: Scanner | None = None  # generated on the first event: loading stays quick
        self._indexes = tuple(
            (field_key, fetchers[field_key], {k: tuple(entries) for k, entries in by_key.items()})
            for field_key, by_key in filed.items()
        )

    def _generate(self) -> Scanner:
        self._scan = _scanner(self._scanned)
        return self._scan

    def classify(self, view: EventView) -> Classification:
        matched: list[Flow] = []
        lacking_identity: list[Flow] = []
        if self._scanned:
            scan = self._scan or self._generate()
            scan(view, matched.append, lacking_identity.append)
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


class _Source:
    """The text of one generated scanner, and the values its names stand for."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.values: dict[str, object] = {}
        self._readings: dict[str, str] = {}  # field key → local holding its reading

    def name(self, value: object) -> str:
        name = f"_v{len(self.values)}"
        self.values[name] = value
        return name

    def reading(self, rule: RulePlan) -> str:
        """An expression for the rule's field reading: read once, shared with the closures."""
        local = self._readings.get(rule.field_key)
        if local is None:
            local = self._readings[rule.field_key] = f"r{len(self._readings)}"
            self.values[f"_k{local}"] = rule.field_key
            self.values[f"_read{local}"] = rule.read
        return f"({local} or ({local} := get(_k{local}) or _read{local}(view)))"

    def check(self, rule: RulePlan) -> str:
        if rule.inline is None or rule.read is None:
            return f"{self.name(rule.check)}(view)"
        template, values = rule.inline
        prefix = f"_p{len(self.values)}_"
        self.values.update({prefix + suffix: value for suffix, value in values.items()})
        return template.replace("{r}", self.reading(rule)).replace("{c}", prefix)

    def flow(self, entry: _Scanned) -> None:
        flow = self.name(entry[0])
        if entry[1] is None or (not entry[1].match_all and any(r.changes for r in entry[2])):
            # an ANY flow with a CHANGED* rule reports in rule order: its own predicate does
            predicate = self.name(entry[2] if entry[1] is None else entry[1].predicate(entry[2]))
            self.lines += [
                f"    is_match, lacks = {predicate}(view)",
                f"    if is_match: matched({flow})",
                f"    if lacks: lacking({flow})",
            ]
        elif entry[1].match_all:
            # `and` yields the first falsy verdict: None means the old row lacked the field
            verdict = " and ".join(self.check(rule) for rule in entry[2]) or "True"
            self.lines += [
                f"    verdict = {verdict}",
                f"    if verdict: matched({flow})",
                f"    elif verdict is None: lacking({flow})",
            ]
        else:
            self.lines.append(
                f"    if {' or '.join(self.check(rule) for rule in entry[2]) or 'True'}:"
                f" matched({flow})"
            )

    def function(self) -> Scanner:
        head = ["def scan(view, matched, lacking):", "    get = view.readings.get"]
        if self._readings:
            head.append(f"    {' = '.join(self._readings.values())} = None")
        namespace = dict(self.values)
        exec(compile("\n".join(head + self.lines), "<flowd.classify_index>", "exec"), namespace)
        scan: Scanner = namespace["scan"]  # type: ignore[assignment]
        return scan


def _scanner(scanned: Sequence[_Scanned]) -> Scanner:
    """One generated function trying every scanned flow in turn, its checks inline.

    Saves a Python call per flow and per rule over calling the compiled predicates; a
    field's reading is kept in a local as well as in `view.readings`, where the closures
    of the checks not inlined (CONTAINS, CHANGED*) find it."""
    source = _Source()
    for entry in scanned:
        source.flow(entry)
    return source.function()
