"""Code generation: the function that classifies the events of one bucket.

From how the index filed a bucket's flows (`FiledFlows`), the text of one Python
function is written and compiled on the bucket's first event: each field an index is
keyed by read once into a local, every rule's check inline (`Inline`), and the values
they name passed by name. This is the hot path: per event, nothing else runs.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import replace
from operator import itemgetter

from flowd.models import Flow
from flowd.rules.operators import OPERATORS
from flowd.rules.plans import (
    NOTHING_MATCHED,
    BucketClassifier,
    Classification,
    FiledFlows,
    FlowPlan,
    RulePlan,
    Scanned,
    Unless,
)
from flowd.rules.values import NULL_KEY

__all__ = ["classifier"]


def classifier(bucket: FiledFlows) -> BucketClassifier:
    """The classifier of the events of a bucket filed so."""
    return _Source(bucket).classifier()


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

    def __init__(self, bucket: FiledFlows) -> None:
        self.bucket = bucket
        self.namespace = _Namespace(f"<flowd.rules.codegen: {bucket.name}>")
        self.body = _Body(self.namespace, first_use=False)

    def classifier(self) -> BucketClassifier:
        rests = self._rests()
        reads, eager = self._reads()
        self._indexes(rests)
        self._orders(rests)
        self._negations()
        self._unknown_changes(rests)
        for scanned in self.bucket.scanned:
            self._scan(scanned)
        text = "\n".join(self._head(eager) + reads + self.body.lines + self._tail())
        self.namespace.define([text])
        # Generated code: the namespace holds objects of any type; this one is the classifier.
        classify: BucketClassifier = self.namespace.values["classify"]  # type: ignore[assignment]
        return classify

    def _reads(self) -> tuple[list[str], set[str]]:
        """Statements reading each field an index is keyed by, and those fields."""
        bucket, body = self.bucket, self.body
        reads = ["    types = view.column_types", "    readings = view.readings"]
        read_first = {key: rule for key, (rule, _) in bucket.index.items()}
        read_first |= {key: rule for key, (rule, _) in bucket.orders.items()}
        read_first |= {key: rule for key, (rule, _) in bucket.negations.items()}
        for key, rule in read_first.items():
            local, reading = body.local(key), body.reading(rule)
            if rule.read_inline is None:
                reads.append(f"    {local} = {reading}")
            else:  # for the rest functions
                reads.append(
                    f"    {local} = readings[{self.namespace.name(key, 'key')}] = {reading}"
                )
        eager = set(body.locals)
        body.known.update(eager)
        return reads, eager

    def _indexes(self, rests: Callable[[int | None], object]) -> None:
        """The flows filed under the event's key of each field: tried."""
        body, name = self.body, self.namespace.name
        for key, (_, by_key) in self.bucket.index.items():
            index = {k: tuple((p, rests(n)) for p, n in filed) for k, filed in by_key.items()}
            body.lines.append(f"    found = {name(index, 'index')}.get({body.local(key)}[4])")
            body.lines.append("    if found is not None:")
            self._try("found", 2)

    def _orders(self, rests: Callable[[int | None], object]) -> None:
        """The flows whose bound the field's value passes, by one bisection: tried."""
        body = self.body
        for key, (_, by_kind) in self.bucket.orders.items():
            groups: dict[Hashable, list[object]] = {}
            for (kind, operator_name), filed in by_kind.items():
                filed.sort(key=itemgetter(0))
                cut, below = _order_of(operator_name)
                bounds = [bound for bound, _ in filed]
                entries = tuple((p, rests(n)) for _, (p, n) in filed)
                groups.setdefault(kind, []).append((cut, bounds, entries, below))
            orders = {kind: tuple(kind_groups) for kind, kind_groups in groups.items()}
            local = body.local(key)
            body.lines += [
                f"    groups = {self.namespace.name(orders, 'orders')}.get({local}[2])",
                f"    if groups is not None and {local}[3] is not None:",
                "        for cut, bounds, entries, below in groups:",
                f"            at = cut(bounds, {local}[3])",
                "            found = entries[:at] if below else entries[at:]",
            ]
            self._try("found", 3)

    def _negations(self) -> None:
        """The flows whose negation holds for the event's key: matched."""
        body, name = self.body, self.namespace.name
        extend = "matched.update" if self.bucket.repeats else "matched.extend"
        for key, (_, negations) in self.bucket.negations.items():
            if_key, if_other, if_null = _negation_index(negations)
            local, null_key = body.local(key), name(NULL_KEY, "null")
            other = f"{name(if_other, 'if_other')}.get({local}[2], {name(if_other[None], 'all')})"
            null = f"{name(if_null, 'if_null')}.get({local}[2], {name(if_null[None], 'null_all')})"
            body.lines += [
                f"    if {local}[4] is {null_key}:",
                f"        {extend}({null})",
                f"    elif (found := {name(if_key, 'if_key')}.get({local}[4])) is not None:",
                f"        {extend}(found)",
                "    else:",
                f"        {extend}({other})",
            ]

    def _unknown_changes(self, rests: Callable[[int | None], object]) -> None:
        """Where the old row lacks a column a CHANGED* before a key reads: those flows'
        rules before their key, for the report."""
        lines, name = self.body.lines, self.namespace.name
        if self.bucket.unknown_changes:
            lines.append("    old = view.old")
        for column, watching in self.bucket.unknown_changes.items():
            watched = tuple((p, rests(n)) for p, n in watching)
            lines += [
                f"    if {name(column, 'column')} not in old:",
                f"        for position, before_key in {name(watched, 'watched')}:",
                "            if before_key(view, get) is None:",
                "                lacking.append(position)",
            ]

    def _head(self, eager: set[str]) -> list[str]:
        """The function's first statements: what it matches into, the lazy locals."""
        repeats = self.bucket.repeats
        # a set where one flow may match by more than one rule
        head = ["def classify(view):", f"    matched = {'set()' if repeats else '[]'}"]
        head += [f"    match = matched.{'add' if repeats else 'append'}", "    lacking = []"]
        head.append("    get = view.readings.get")
        if lazy := [local for key, local in self.body.locals.items() if key not in eager]:
            head.append(f"    {' = '.join(lazy)} = None")
        return head

    def _tail(self) -> list[str]:
        """The function's last statements: the matched positions as a Classification."""
        bucket, name = self.bucket, self.namespace.name
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
        return tail

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

    def _scan(self, scanned: Scanned) -> None:
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


def _order_of(operator_name: str) -> tuple[Callable[..., int], bool]:
    """The bisection an order rule's bounds are cut by, and whether it holds below it."""
    order = OPERATORS[operator_name].order
    assert order is not None
    return order.cut, order.holds_below


def _picker(flows: tuple[Flow, ...]) -> Callable[[Sequence[int]], tuple[Flow, ...]]:
    """The flows at some positions, in their order (`itemgetter` picks one as itself)."""

    def pick(positions: Sequence[int]) -> tuple[Flow, ...]:
        if len(positions) > 1:
            # itemgetter of several positions returns a tuple; typeshed says Any.
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
