"""Indexing: how compiled rules become flow predicates, and how the flows of one
(schema, table, change type) are filed so that an event only tries those its values
select (see `Bucket`).

`flowd.rules.classify` compiles each rule into a `RulePlan` and builds one `Bucket` per
(schema, table, change type); this module never reads an event's fields itself.
"""

from __future__ import annotations

import itertools
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from operator import itemgetter
from typing import TYPE_CHECKING, Final, NamedTuple

from flowd.models import Flow

if TYPE_CHECKING:
    from flowd.rules.classify import CompiledFlow, EventView

__all__ = [
    "NOTHING_MATCHED",
    "NULL_KEY",
    "Bucket",
    "Classification",
    "FlowPlan",
    "FlowPredicate",
    "Inline",
    "OrderBounds",
    "RuleCheck",
    "RulePlan",
    "Unless",
]


class _NullKey:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NULL_KEY"


NULL_KEY: Final = _NullKey()  # the reading key of a null or missing field, equal to no text

FieldRead = Callable[["EventView"], tuple[object, ...]]
"""Reads a field in an event once, keeping the reading in `view.readings` (a `Reading`,
or for CHANGED* a `ChangeReading`, see `flowd.rules.classify`)."""

RuleCheck = Callable[["EventView"], bool | None]
"""One compiled rule: True/False, or None for "false because `old` lacks the field"."""

FlowPredicate = Callable[["EventView"], tuple[bool, bool]]
"""A flow's compiled rules: (matched, needs_full_identity)."""

Inline = tuple[str, Mapping[str, object]]
"""A rule's check as a Python expression, and the values it names. In the text, `{r}`
stands for the field's reading and `{c}` for the prefix its names are given; every value
(rule.value read as each kind, key sets, bounds, functions) is passed by name, never
written into the text. The first `{r}` is evaluated whenever the expression is."""

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
    field_key: str  # the address of the field it reads (`_FieldAddress.key`)
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


# --------------------------------------------------------------------------- the bucket

_Filed = tuple[int, int | None]
"""A filed flow: its position in the bucket (ascending id), and the number of the check
of its other rules (see `Bucket._rests`), or None: it matched."""
_Scanned = tuple[int, FlowPlan | FlowPredicate, tuple[RulePlan, ...]]
"""A flow tried on every event: its position, with its plan and the rules to try, or
with its predicate alone (and no rules)."""
BucketClassifier = Callable[["EventView"], Classification]

# An order rule's operator → (the bisection that counts the bounds below a value, whether
# the rule holds for the bounds counted or for the others)
_CUTS: Final[Mapping[str, tuple[Callable[..., int], bool]]] = {
    ">": (bisect_left, True),
    ">=": (bisect_right, True),
    "<": (bisect_right, False),
    "<=": (bisect_left, False),
}


class Bucket:
    """The flows of one (schema, table, change type), filed so that an event tries few.

    Keys are rules an index tells from the field's reading alone: an `=`, `IN` or
    `IS_NULL` by the reading keys on which it holds; an order against a fixed value
    (`>`, `<=`, …) by its bound, kept sorted so that one bisection per event finds the
    rules that hold; a negation (`!=`, `NOT_IN`, `IS_NOT_NULL`) by the keys and kinds on
    which it does not, the flows holding for each worked out once.

    A flow whose rules must all hold and that has a key is filed under its most
    selective one (`_selectivity`): an event tries it only when that key holds, then
    checks the other rules in order. If a CHANGED* rule comes before the key, the flow
    may need reporting even when the key fails: that is checked only on events whose old
    row lacks the CHANGED* column (`unknown_changes`). A flow any of whose rules may
    hold, none a CHANGED*, is filed under each of its keys (and negations) and matches on
    a hit; only its other rules are tried on every event. Every other flow is tried on
    every event. Outside UPDATE, CHANGED* never holds: flows that need one are left out,
    and those that may use one drop it.

    The bucket's events are classified by a function generated for it on its first event
    (loading stays quick): each field read once into a local, checks inline (`_Source`).
    """

    __slots__ = (
        "classify",
        "flows",
        "index",
        "name",
        "negations",
        "orders",
        "repeats",
        "rests",
        "scanned",
        "unknown_changes",
    )

    name: str
    classify: BucketClassifier  # the classifier of the bucket's events
    flows: tuple[Flow, ...]  # ascending id: a flow's position in the bucket
    # by field (with a rule reading it), by key
    index: dict[str, tuple[RulePlan, dict[Hashable, list[_Filed]]]]
    orders: dict[str, tuple[RulePlan, dict[tuple[Hashable, str], list[tuple[object, _Filed]]]]]
    """By field, by (reading kind, operator): (bound, flow) of the order rules."""
    # by field: the negations flows matched on, and their positions
    negations: dict[str, tuple[RulePlan, list[tuple[Unless, int]]]]
    rests: list[tuple[RulePlan, ...]]  # the other rules of the filed ALL flows
    unknown_changes: dict[str, list[_Filed]]
    """By column: the flows filed after a CHANGED* rule on it, and their rules before the
    key, to check when the old row lacks the column (see `Filing.before_key`)."""
    scanned: list[_Scanned]
    repeats: bool  # whether one flow may match by more than one rule

    def __init__(self, change_type: str, flows: Iterable[CompiledFlow], name: str = "") -> None:
        self.name = name or change_type  # names the generated code in tracebacks and profiles
        compiled = tuple(flows)
        plans = [c.plan for c in compiled if c.plan is not None]
        favoured = Counter(field for plan in plans for field in plan.keyed_fields())
        self.flows = tuple(c.flow for c in compiled)
        self.index, self.orders, self.rests, self.scanned = {}, {}, [], []
        self.negations = {}
        self.unknown_changes = {}
        self.repeats = False
        for position, flow in enumerate(compiled):
            if flow.plan is None:
                self.scanned.append((position, flow.predicate, ()))
                continue
            filing = flow.plan.filing(change_type, favoured)
            self.repeats = self.repeats or len(filing) > 1
            for rule, rules, before_key in filing:
                if rule is None:
                    self.scanned.append((position, flow.plan, rules))
                    continue
                self._file(rule, (position, self._rest(rules)))
                for column in {r.changed_column for r in before_key if r.changed_column}:
                    watched = self.unknown_changes.setdefault(column, [])
                    watched.append((position, self._rest(before_key)))
        self.classify: BucketClassifier = self._generate

    def _rest(self, rules: tuple[RulePlan, ...]) -> int | None:
        if not rules:
            return None
        self.rests.append(rules)
        return len(self.rests) - 1

    def _file(self, rule: RulePlan, filed: _Filed) -> None:
        assert rule.read is not None
        if rule.unless is not None:
            by_rule = self.negations.setdefault(rule.field_key, (rule, []))[1]
            by_rule.append((rule.unless, filed[0]))
            return
        if rule.keys is not None:
            by_key = self.index.setdefault(rule.field_key, (rule, {}))[1]
            for key in rule.keys:
                by_key.setdefault(key, []).append(filed)
            return
        assert rule.bounds is not None
        operator_name, bound_by_kind = rule.bounds
        by_kind = self.orders.setdefault(rule.field_key, (rule, {}))[1]
        for kind, bound in bound_by_kind.items():
            by_kind.setdefault((kind, operator_name), []).append((bound, filed))

    @property
    def scanned_only(self) -> bool:
        """Whether every flow is scanned: matched in ascending order, once each."""
        return not self.index and not self.orders and not self.negations

    def _generate(self, view: EventView) -> Classification:
        """Classifies the bucket's first event, once its classifier is generated."""
        self.classify = _Source(self).classifier()
        return self.classify(view)


# --------------------------------------------------------------------------- generating


class _Namespace:
    """The values generated functions name, and the functions once defined."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.values: dict[str, object] = {}
        self._names: dict[int, str] = {}  # id of a value → its name

    def name(self, value: object, hint: str) -> str:
        # by id: a named value is kept in `values`, so no other value takes its id
        name = self._names.get(id(value))
        if name is None:
            name = self._names[id(value)] = f"_{hint}{len(self.values)}"
            self.values[name] = value
        return name

    def prefix(self, values: Mapping[str, object]) -> str:
        """A prefix under which `values` are named by their keys (see `Inline`)."""
        prefix = f"_p{len(self.values)}_"
        self.values.update({prefix + suffix: value for suffix, value in values.items()})
        return prefix

    def define(self, functions: Iterable[str]) -> None:
        text = "\n\n".join(functions)
        exec(compile(text, self.filename, "exec"), self.values)


class _Body:
    """The statements of one generated function, each field it reads kept in a local.

    A field is read the first time an expression needs it (from `view.readings` if
    another function read it) and kept in its local. Where the reading is sure to be
    there (after the first rule of a chain, or further in the same chain), the local is
    used as it is; elsewhere it is read if it is not yet.
    """

    def __init__(self, namespace: _Namespace, first_use: bool) -> None:
        self.namespace = namespace
        self.lines: list[str] = []
        self.locals: dict[str, str] = {}  # field key → the local holding its reading
        self.known: set[str] = set()  # fields sure to be read at this point of the text
        # a function made of one chain reads each field at its first use: no local to test
        self._first_use = first_use

    def local(self, field_key: str) -> str:
        local = self.locals.get(field_key)
        if local is None:
            local = self.locals[field_key] = f"r{len(self.locals)}"
        return local

    def read(self, rule: RulePlan) -> str:
        """An expression reading the rule's field into its local."""
        local = self.local(rule.field_key)
        self.known.add(rule.field_key)
        if self._first_use:  # a rest function: its caller may have read the field
            key = self.namespace.name(rule.field_key, "key")
            return f"({local} := get({key}) or {self.namespace.name(rule.read, 'read')}(view))"
        return f"({local} or ({local} := {self.reading(rule)}))"

    def reading(self, rule: RulePlan) -> str:
        """An expression for the rule's field reading, read anew, kept in `view.readings`
        only where `rule.read` has to read it."""
        if rule.read_inline is None:
            return f"{self.namespace.name(rule.read, 'read')}(view)"
        template, values = rule.read_inline
        return template.replace("{c}", self.namespace.prefix(values))

    def check(self, rule: RulePlan) -> str:
        """The rule's check as an expression."""
        if rule.inline is None or rule.read is None:
            return f"{self.namespace.name(rule.check, 'check')}(view)"
        template, values = rule.inline
        prefix = self.namespace.prefix(values)
        local = self.local(rule.field_key)
        # the first `{r}` is evaluated whenever the check is: the others find it read
        reading = local if rule.field_key in self.known else self.read(rule)
        first, _, rest = template.partition("{r}")
        return (first + reading + rest.replace("{r}", local)).replace("{c}", prefix)

    def chain(self, rules: Sequence[RulePlan], joiner: str) -> str:
        """The rules' checks joined by `and`/`or`, of which only the first is sure to run."""
        known = set(self.known)
        text = f" {joiner} ".join(map(self.check, rules)) or "True"
        if rules and rules[0].inline is not None and rules[0].read is not None:
            known.add(rules[0].field_key)
        self.known = known
        return text


class _Source:
    """The text of a bucket's classifier, and the functions it calls:

    read each field an index is keyed by;
    for each index, the flows filed under the event's key (or whose bound the value
        passes): matched, or their other rules checked (`rest` functions);
    the flows whose negation holds for the event's key: matched;
    where the old row lacks a column a CHANGED* before a key reads: those flows'
        rules before their key, for the report;
    each scanned flow's rules, inline;
    the matched positions, ascending and once each, as flows.
    """

    def __init__(self, bucket: Bucket) -> None:
        self.bucket = bucket
        self.namespace = _Namespace(f"<flowd.rules.index: {bucket.name}>")
        self.body = _Body(self.namespace, first_use=False)

    def classifier(self) -> BucketClassifier:
        bucket, body, name = self.bucket, self.body, self.namespace.name
        rests = self._rests()
        lines = body.lines
        reads = ["    types = view.column_types", "    readings = view.readings"]
        read_first = {key: rule for key, (rule, _) in bucket.index.items()}
        read_first |= {key: rule for key, (rule, _) in bucket.orders.items()}
        read_first |= {key: rule for key, (rule, _) in bucket.negations.items()}
        for key, rule in read_first.items():
            local, reading = body.local(key), body.reading(rule)
            if rule.read_inline is None:
                reads.append(f"    {local} = {reading}")
            else:  # for the rest functions
                reads.append(f"    {local} = readings[{name(key, 'key')}] = {reading}")
        eager = set(body.locals)
        body.known.update(eager)
        for key, (_, by_key) in bucket.index.items():
            index = {k: tuple((p, rests(n)) for p, n in filed) for k, filed in by_key.items()}
            lines.append(f"    found = {name(index, 'index')}.get({body.local(key)}[4])")
            lines.append("    if found is not None:")
            self._try("found", 2)
        for key, (_, by_kind) in bucket.orders.items():
            groups: dict[Hashable, list[object]] = {}
            for (kind, operator_name), filed in by_kind.items():
                filed.sort(key=itemgetter(0))
                cut, below = _CUTS[operator_name]
                bounds = [bound for bound, _ in filed]
                entries = tuple((p, rests(n)) for _, (p, n) in filed)
                groups.setdefault(kind, []).append((cut, bounds, entries, below))
            orders = {kind: tuple(kind_groups) for kind, kind_groups in groups.items()}
            local = body.local(key)
            lines += [
                f"    groups = {name(orders, 'orders')}.get({local}[2])",
                f"    if groups is not None and {local}[3] is not None:",
                "        for cut, bounds, entries, below in groups:",
                f"            at = cut(bounds, {local}[3])",
                "            found = entries[:at] if below else entries[at:]",
            ]
            self._try("found", 3)
        extend = "matched.update" if bucket.repeats else "matched.extend"
        for key, (_, negations) in bucket.negations.items():
            if_key, if_other, if_null = _negation_index(negations)
            local, null_key = body.local(key), name(NULL_KEY, "null")
            other = f"{name(if_other, 'if_other')}.get({local}[2], {name(if_other[None], 'all')})"
            null = f"{name(if_null, 'if_null')}.get({local}[2], {name(if_null[None], 'null_all')})"
            lines += [
                f"    if {local}[4] is {null_key}:",
                f"        {extend}({null})",
                f"    elif (found := {name(if_key, 'if_key')}.get({local}[4])) is not None:",
                f"        {extend}(found)",
                "    else:",
                f"        {extend}({other})",
            ]
        if bucket.unknown_changes:
            lines.append("    old = view.old")
        for column, watching in bucket.unknown_changes.items():
            watched = tuple((p, rests(n)) for p, n in watching)
            lines += [
                f"    if {name(column, 'column')} not in old:",
                f"        for position, before_key in {name(watched, 'watched')}:",
                "            if before_key(view, get) is None:",
                "                lacking.append(position)",
            ]
        for scanned in bucket.scanned:
            self._scan(scanned)
        # a set where one flow may match by more than one rule
        head = ["def classify(view):", f"    matched = {'set()' if bucket.repeats else '[]'}"]
        head += [f"    match = matched.{'add' if bucket.repeats else 'append'}", "    lacking = []"]
        head.append("    get = view.readings.get")
        if lazy := [local for key, local in body.locals.items() if key not in eager]:
            head.append(f"    {' = '.join(lazy)} = None")
        pick = name(_picker(bucket.flows), "pick")
        # a Classification made as the tuple it is: its __new__ is a Python call
        new = f"{name(tuple.__new__, 'new')}({name(Classification, 'classification')}"
        tail = [
            "    if lacking:",
            f"        return {new}, ({pick}(sorted(matched)), {pick}(sorted(set(lacking)))))",
            "    if not matched:",
            f"        return {name(NOTHING_MATCHED, 'nothing')}",
        ]
        if bucket.repeats:
            tail.append(f"    return {new}, ({pick}(sorted(matched)), ()))")
        else:
            if not bucket.scanned_only:  # else scanned in ascending order, once each
                tail.append("    matched.sort()")
            tail.append(f"    return {new}, ({pick}(matched), ()))")
        self.namespace.define(["\n".join(head + reads + lines + tail)])
        classify: BucketClassifier = self.namespace.values["classify"]  # type: ignore[assignment]
        return classify

    def _rests(self) -> Callable[[int | None], object]:
        """Defines the rest functions; gives the one of a number (None for None)."""
        texts = []
        for number, rules in enumerate(self.bucket.rests):
            # `and` yields the first falsy verdict: None means the old row lacked the field
            chain = _Body(self.namespace, first_use=True).chain(rules, "and")
            texts.append(f"def rest{number}(view, get):\n    return {chain}")
        self.namespace.define(texts)
        values = self.namespace.values
        return lambda number: None if number is None else values[f"rest{number}"]

    def _try(self, entries: str, depth: int) -> None:
        """Statements trying the filed flows of `entries`, (position, rest) each."""
        indent = "    " * depth
        self.body.lines += [
            f"{indent}for position, rest in {entries}:",
            f"{indent}    if rest is None:",
            f"{indent}        match(position)",
            f"{indent}    elif verdict := rest(view, get):",
            f"{indent}        match(position)",
            f"{indent}    elif verdict is None:",
            f"{indent}        lacking.append(position)",
        ]

    def _scan(self, scanned: _Scanned) -> None:
        lines, (position, plan, rules) = self.body.lines, scanned
        if not isinstance(plan, FlowPlan):
            lines += [
                f"    is_match, lacks = {self.namespace.name(plan, 'predicate')}(view)",
                f"    if is_match: match({position})",
                f"    if lacks: lacking.append({position})",
            ]
        elif not plan.match_all and any(rule.changes for rule in rules):
            # Whether an ANY flow needs reporting depends on the order of its rules: only
            # when one of its fields' change is unknown, its predicate tells
            unknown = [replace(r, inline=("{r}[0] is None", {})) for r in rules if r.changes]
            predicate = self.namespace.name(plan.predicate(rules), "predicate")
            lines += [
                f"    if {self.body.chain(rules, 'or')}: match({position})",
                f"    if ({self.body.chain(unknown, 'or')}) and {predicate}(view)[1]:",
                f"        lacking.append({position})",
            ]
        elif plan.match_all:
            # `and` yields the first falsy verdict: None means the old row lacked the field
            lines += [
                f"    verdict = {self.body.chain(rules, 'and')}",
                f"    if verdict: match({position})",
                f"    elif verdict is None: lacking.append({position})",
            ]
        else:
            lines.append(f"    if {self.body.chain(rules, 'or')}: match({position})")


def _picker(flows: tuple[Flow, ...]) -> Callable[[Sequence[int]], tuple[Flow, ...]]:
    """The flows at some positions, in their order (`itemgetter` picks one as itself)."""

    def pick(positions: Sequence[int]) -> tuple[Flow, ...]:
        if len(positions) > 1:
            return itemgetter(*positions)(flows)  # type: ignore[no-any-return]
        return (flows[positions[0]],) if positions else ()

    return pick


_Holding = dict[Hashable, tuple[int, ...]]


def _negation_index(negations: Sequence[tuple[Unless, int]]) -> tuple[_Holding, _Holding, _Holding]:
    """Which negations of one field hold, by the field's reading: (by each key a rule
    names, by kind for any other key, by kind for a null). Under None, the kinds no rule
    names: every negation holds but those naming the key."""
    kinds = {kind for (_, unreadable), _ in negations for kind in unreadable}
    named = {k: kind for (keys, _), _ in negations for k, kind in keys.items() if k is not NULL_KEY}

    def holding(kind: Hashable, key: object) -> tuple[int, ...]:
        return tuple(
            p for (keys, unreadable), p in negations if kind not in unreadable and key not in keys
        )

    by_key = {key: holding(kind, key) for key, kind in named.items()}
    otherwise = {kind: holding(kind, None) for kind in (*kinds, None)}
    null = {kind: holding(kind, NULL_KEY) for kind in (*kinds, None)}
    return by_key, otherwise, null
