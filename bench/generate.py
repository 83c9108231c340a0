"""A seeded generator of tables, flows and change events for benchmarks and property tests.

Everything comes from one `random.Random(seed)`, so a seed always yields the same tables,
the same flows and the same events. Rule values and event values are drawn from the same
small vocabularies, so rules do match (and do not) in every way `shared/spec/rules.md`
names: case variants, numbers sent as text, instants in other time zones, nulls and
missing keys, json paths, typed array elements, old-vs-new, and UPDATE/DELETE under both
replica identities.

Every table has an `org_id` column (the tenant a row belongs to), and `TENANT_SCOPED` of
the flows are a tenant's own: one of their rules (at a random place) is `org_id = N` or
`org_id IN (N, M)`, as in a multi-tenant application whose users write their own flows.
The number of tenants grows with the flows (`flows_per_tenant`), every other flow is
global. Operators are drawn with the weights of `OPERATOR_WEIGHTS`, a guess at a realistic rule
set (equality and `IN` on status-like columns first; every operator of the spec present).
Events are produced lazily (`iter_events`), so a burst of any size is never held whole.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from flowd.models import ChangeEvent, Flow, Rule

__all__ = [
    "OPERATOR_WEIGHTS",
    "Table",
    "Workload",
    "iter_events",
    "make_flows",
    "make_tables",
]

TENANT_SCOPED: Final = 0.7  # of the flows that must match ALL rules

# --------------------------------------------------------------------------- columns

TEXT_WORDS: Final = ("open", "Open", "OPEN", "closed", "in_progress", "done", "", " open")
PRIORITIES: Final = ("high", "High", "low", "urgent", "Urgent")
TITLES: Final = ("urgent: fix db", "Urgent fix", "tidy up", "ünïcode ✓ done", "fix: ui")
EMAILS: Final = ("ann@example.com", "ANN@EXAMPLE.COM", "bob@example.org", "eve@test.dev")
INTS: Final = (0, 1, 3, 5, 8, 10, 42, -1)
NUMERICS: Final = ("1.5", "3", "8.25", "10.0", "1e1", "-0.5", "abc")  # numeric sent as text
FLOATS: Final = (0.0, 0.25, 0.5, 1.0, 2.5)
INSTANTS: Final = (
    "2026-11-27T09:51:01.46+00:00",
    "2026-11-27T10:51:01.46+01:00",  # the same instant in another zone
    "2026-11-27T00:00:00+00:00",
    "2026-12-01T08:00:00-05:00",
    "2025-01-01T00:00:00+00:00",
)
DATES: Final = ("2026-11-27", "2026-12-01", "2025-01-01")
TAGS: Final = ("backend", "Backend", "ui", "infra", "ops")
LABEL_AREAS: Final = ("db", "ui", "DB", "net")

# Postgres type → the values a record carries for it (None, a null, is added separately).
_SAMPLES: Final[dict[str, Sequence[Any]]] = {
    "text": TEXT_WORDS,
    "int4": INTS,
    "int8": INTS,
    "numeric": NUMERICS,
    "float8": FLOATS,
    "bool": (True, False),
    "timestamptz": INSTANTS,
    "date": DATES,
}

# (name, type): columns every table may have; `id` is always there and is the primary key.
_COLUMN_POOL: Final = (
    ("status", "text"),
    ("priority", "text"),
    ("title", "text"),
    ("email", "text"),
    ("estimate", "int4"),
    ("amount", "numeric"),
    ("ratio", "float8"),
    ("done", "bool"),
    ("due_at", "timestamptz"),
    ("due_on", "date"),
    ("tags", "_text"),
    ("codes", "_int4"),
    ("meta", "jsonb"),
)


@dataclass(frozen=True, slots=True)
class Table:
    schema: str
    name: str
    columns: tuple[tuple[str, str], ...]  # (name, Postgres type); `id` first

    @property
    def trigger_table(self) -> str:
        return self.name if self.schema == "public" else f"{self.schema}.{self.name}"


def make_tables(count: int, rng: random.Random) -> list[Table]:
    """`count` tables, a few outside schema public, each with 8 to 13 typed columns."""
    tables = []
    for number in range(count):
        schema = "crm" if number % 7 == 3 else "public"
        extra = rng.sample(_COLUMN_POOL, rng.randint(7, len(_COLUMN_POOL)))
        columns = (("id", "int8"), ("org_id", "int8"), *sorted(extra, key=_COLUMN_POOL.index))
        tables.append(Table(schema, f"t{number:02d}", columns))
    return tables


# --------------------------------------------------------------------------- values


def _column_value(typname: str, rng: random.Random) -> Any:
    if rng.random() < 0.08:
        return None
    if typname == "_text":
        return rng.sample(TAGS, rng.randint(0, 3))
    if typname == "_int4":
        return [rng.choice(INTS) for _ in range(rng.randint(0, 3))]
    if typname == "jsonb":
        return _json_value(rng)
    return rng.choice(_SAMPLES[typname])


def _json_value(rng: random.Random) -> Any:
    shape = rng.random()
    if shape < 0.1:
        return rng.choice([[1, "ui", True], "plain", 3])  # not an object at all
    meta: dict[str, Any] = {
        "points": rng.choice([1, 2.5, 5, "5", True, None]),
        "owner": {"email": rng.choice(EMAILS)} if rng.random() < 0.8 else None,
        "labels": {"area": rng.choice(LABEL_AREAS)},
        "list": rng.sample([1, 2, "ui", False, 5.0], 3),
    }
    if rng.random() < 0.2:
        del meta["points"]
    return meta


def _rule_value(typname: str, rng: random.Random) -> str:
    """A `rule.value` for a column of this type: mostly readable, sometimes not."""
    if rng.random() < 0.05:
        return rng.choice(["abc", "", " 5 ", "maybe"])  # often unreadable as the type
    if typname in {"int4", "int8"}:
        return rng.choice([str(v) for v in INTS] + ["5.0", " 10 ", "1e1"])
    if typname == "numeric":
        return rng.choice(["1.5", "3", "8.250", "10", "-0.5"])
    if typname == "float8":
        return rng.choice(["0.5", "1", "2.50", "0"])
    if typname == "bool":
        return rng.choice(["true", "FALSE", "t", "no", "1", "Yes"])
    if typname == "timestamptz":
        return rng.choice(
            ["2026-11-27T09:51:01.460Z", "2026-11-27 10:51:01.46+01", "2026-11-27", " 2026-12-01 "]
        )
    if typname == "date":
        return rng.choice(["2026-11-27", "2026-12-01T00:00:00Z", "2025-01-01 00:00:00+00"])
    if typname == "_int4":
        return rng.choice(["1", "3", "42", "8"])
    if typname in {"_text", "jsonb"}:
        return rng.choice((*TAGS, "area", "owner", "points", "ui"))
    return rng.choice(TEXT_WORDS + PRIORITIES + TITLES[:2])


# --------------------------------------------------------------------------- rules

# Weight of each operator in generated rules; spellings vary (case, `==`, `<>`).
OPERATOR_WEIGHTS: Final[Mapping[str, int]] = {
    "=": 30,
    "IN": 12,
    "!=": 6,
    "NOT_IN": 3,
    "IS_NULL": 3,
    "IS_NOT_NULL": 3,
    ">": 5,
    "<": 3,
    ">=": 3,
    "<=": 2,
    "CONTAINS": 4,
    "NOT_CONTAINS": 2,
    "STARTS_WITH": 3,
    "ENDS_WITH": 2,
    "MATCHES": 3,
    "CHANGED": 3,
    "CHANGED_TO": 5,
    "CHANGED_FROM": 2,
}
_SPELLINGS: Final[Mapping[str, tuple[str, ...]]] = {
    "=": ("=", "=", "=="),
    "!=": ("!=", "<>"),
    "IN": ("IN", "in"),
    "CONTAINS": ("CONTAINS", "contains"),
    "CHANGED_TO": ("CHANGED_TO", "changed_to"),
}
_PATTERNS: Final = ("^urgent", "(?i)^urgent", r"fix\b", "done$", "^$", "[0-9]+", "ü")


def _rule_field(table: Table, operator_name: str, rng: random.Random) -> tuple[str, str]:
    """(field, type the value is read as) for a rule on `table`."""
    name, typname = rng.choice(table.columns[2:])
    if typname == "jsonb" and rng.random() < 0.8:
        path, leaf = rng.choice(
            [
                ("meta.points", "int4"),
                ("meta.owner.email", "text"),
                ("meta.labels.area", "text"),
                ("meta.list.1", "text"),
                ("meta.labels", "_text"),
                ("meta.missing", "text"),
            ]
        )
        return path, leaf
    is_array = typname in {"_text", "_int4"}
    if is_array and operator_name not in {"CONTAINS", "NOT_CONTAINS"} and rng.random() < 0.5:
        return f"{name}.0", typname[1:]
    if operator_name not in {"CHANGED", "CHANGED_TO", "CHANGED_FROM"} and rng.random() < 0.1:
        return f"{rng.choice(['old', 'new'])}.{name}", typname
    return name, typname


def _make_rule(rule_id: int, table: Table, rng: random.Random) -> Rule:
    operators = list(OPERATOR_WEIGHTS)
    operator_name = rng.choices(operators, weights=list(OPERATOR_WEIGHTS.values()))[0]
    field, typname = _rule_field(table, operator_name, rng)
    value: str | None
    if operator_name in {"IN", "NOT_IN"}:
        items = [_rule_value(typname, rng) for _ in range(rng.randint(1, 3))]
        value = json.dumps(items) if rng.random() < 0.4 else ", ".join(items)
    elif operator_name == "MATCHES":
        value = rng.choice(_PATTERNS)
    elif operator_name in {"STARTS_WITH", "ENDS_WITH"}:
        value = rng.choice(["urgent", "Urgent", "open", "done", "@example.com", "fix"])
    elif operator_name in {"IS_NULL", "IS_NOT_NULL", "CHANGED"}:
        value = None
    else:
        value = _rule_value(typname, rng)
    spelling = rng.choice(_SPELLINGS.get(operator_name, (operator_name,)))
    return Rule(rule_id=rule_id, field=field, operator=spelling, value=value)


def _tenant_rule(rule_id: int, tenants: int, rng: random.Random) -> Rule:
    if rng.random() < 0.8:
        return Rule(
            rule_id=rule_id, field="org_id", operator="=", value=str(rng.randint(1, tenants))
        )
    pair = f"{rng.randint(1, tenants)}, {rng.randint(1, tenants)}"
    return Rule(rule_id=rule_id, field="org_id", operator="IN", value=pair)


def make_flows(count: int, tables: Sequence[Table], tenants: int, rng: random.Random) -> list[Flow]:
    """`count` enabled flows, each on one table with 1 to 4 rules (a few with none)."""
    flows = []
    for flow_id in range(1, count + 1):
        table = rng.choice(tables)
        rule_count = 0 if rng.random() < 0.02 else rng.randint(1, 4)
        match = "ANY" if rng.random() < 0.2 else rng.choice(["ALL", "all"])
        rules = [_make_rule(flow_id * 10 + n, table, rng) for n in range(1, rule_count + 1)]
        if match != "ANY" and rng.random() < TENANT_SCOPED:
            rules.insert(rng.randint(0, len(rules)), _tenant_rule(flow_id * 10, tenants, rng))
        flows.append(
            Flow(
                flow_id=flow_id,
                name=f"flow {flow_id}",
                trigger_table=table.trigger_table,
                trigger_event=rng.choice(["INSERT", "UPDATE", "UPDATE", "DELETE", "*"]),
                match=match,
                rules=tuple(rules),
            )
        )
    return flows


# --------------------------------------------------------------------------- events


def _record(table: Table, number: int, tenants: int, rng: random.Random) -> dict[str, Any]:
    record: dict[str, Any] = {"id": number, "org_id": rng.randint(1, tenants)}
    for name, typname in table.columns[2:]:
        if rng.random() < 0.02:
            continue  # an unchanged TOASTed value is left out of the record
        record[name] = _column_value(typname, rng)
    return record


def _event_data(
    tables: Sequence[Table], tenants: int, number: int, rng: random.Random
) -> dict[str, Any]:
    table = rng.choice(tables)
    change_type = rng.choice(["INSERT", "UPDATE", "UPDATE", "UPDATE", "DELETE"])
    full_identity = rng.random() < 0.7
    record = _record(table, number, tenants, rng)
    old = dict(record)
    for name, typname in table.columns[2:]:
        if rng.random() < 0.3:
            old[name] = _column_value(typname, rng)
    if not full_identity:
        old = {"id": number}
    data: dict[str, Any] = {
        "schema": table.schema,
        "table": table.name,
        "type": change_type,
        "commit_timestamp": "2026-11-27T09:51:01.460Z",
        "columns": [{"name": n, "type": t} for n, t in table.columns],
        "errors": None,
    }
    if change_type != "DELETE":
        data["record"] = record
    if change_type != "INSERT":
        data["old_record"] = old
    if rng.random() < 0.05:  # the shape supabase-js hands its users: no column types
        return {
            "schema": table.schema,
            "table": table.name,
            "eventType": change_type,
            "new": data.get("record", {}),
            "old": data.get("old_record", {}),
        }
    return data


def iter_events(
    tables: Sequence[Table], tenants: int, count: int, seed: int
) -> Iterator[ChangeEvent]:
    """`count` change events on `tables`, made one at a time from `seed`."""
    rng = random.Random(seed)
    for number in range(count):
        yield ChangeEvent.model_validate(_event_data(tables, tenants, number, rng))


@dataclass(frozen=True, slots=True)
class Workload:
    """Tables, flows and a seed for events: everything a benchmark run classifies."""

    tables: tuple[Table, ...]
    tenants: int
    flows: tuple[Flow, ...]
    seed: int

    @classmethod
    def make(
        cls, flows: int, tables: int = 24, seed: int = 6, flows_per_tenant: int = 20
    ) -> Workload:
        rng = random.Random(seed)
        made_tables = tuple(make_tables(tables, rng))
        tenants = max(1, flows // flows_per_tenant)
        return cls(made_tables, tenants, tuple(make_flows(flows, made_tables, tenants, rng)), seed)

    def events(self, count: int) -> Iterator[ChangeEvent]:
        """`count` events made one at a time: the same ones for the same workload."""
        return iter_events(self.tables, self.tenants, count, self.seed + 1)
