"""Benchmark: flowd's classifier against a naive baseline, side by side in one run.

flowd compiles every flow's rules once and indexes flows by (schema, table, type), so
an event is checked only against the flows of its own table. The baseline is what a
straightforward implementation does: for every event, look at every flow and compile
(parse) its rules again before evaluating them. Both must agree on every event.

    python bench/classify.py [--flows 400] [--tables 20] [--events 5000] [--repeat 7]

Prints the machine, the median time per event of each, and the ratio.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import time
from collections.abc import Callable

from flowd.classify import build_index, compile_flow
from flowd.models import ChangeEvent, Flow, Rule

OPERATORS = [
    ("priority", "=", "high"),
    ("estimate", ">", "3"),
    ("status", "IN", "open, blocked, review"),
    ("title", "MATCHES", "^urgent"),
    ("meta.points", ">=", "5"),
    ("tags", "CONTAINS", "backend"),
    ("status", "CHANGED_TO", "done"),
]
COLUMNS = [
    {"name": "id", "type": "int8"},
    {"name": "title", "type": "text"},
    {"name": "priority", "type": "text"},
    {"name": "status", "type": "text"},
    {"name": "estimate", "type": "numeric"},
    {"name": "tags", "type": "_text"},
    {"name": "meta", "type": "jsonb"},
]


def make_flows(count: int, tables: int, rng: random.Random) -> list[Flow]:
    flows = []
    for flow_id in range(1, count + 1):
        rules = tuple(
            Rule(rule_id=flow_id * 10 + n, field=f, operator=o, value=v)
            for n, (f, o, v) in enumerate(rng.sample(OPERATORS, rng.randint(1, 3)))
        )
        flows.append(
            Flow(
                flow_id=flow_id,
                name=f"flow {flow_id}",
                trigger_table=f"t{rng.randrange(tables)}",
                trigger_event=rng.choice(["INSERT", "UPDATE", "*"]),
                match=rng.choice(["ALL", "ANY"]),
                rules=rules,
            )
        )
    return flows


def make_events(count: int, tables: int, rng: random.Random) -> list[ChangeEvent]:
    events = []
    for number in range(count):
        record = {
            "id": number,
            "title": rng.choice(["urgent: fix", "tidy", "urgent"]),
            "priority": rng.choice(["high", "low"]),
            "status": rng.choice(["open", "done", "review"]),
            "estimate": rng.choice([1.5, 3, 8.25]),
            "tags": rng.sample(["backend", "ui", "infra"], 2),
            "meta": {"points": rng.randint(1, 8)},
        }
        events.append(
            ChangeEvent.model_validate(
                {
                    "schema": "public",
                    "table": f"t{rng.randrange(tables)}",
                    "type": "UPDATE",
                    "commit_timestamp": "2026-11-27T09:51:01.460Z",
                    "columns": COLUMNS,
                    "record": record,
                    "old_record": {**record, "status": "open"},
                }
            )
        )
    return events


def baseline(flows: list[Flow]) -> Callable[[ChangeEvent], list[int]]:
    """Every flow, every event, rules parsed again each time."""

    def classify(event: ChangeEvent) -> list[int]:
        matched = []
        for flow in flows:
            schema, table = flow.table_ref
            if (schema, table) != (event.schema_name, event.table):
                continue
            if flow.trigger_event not in ("*", event.type):
                continue
            if compile_flow(flow).evaluate(event)[0]:
                matched.append(flow.flow_id)
        return matched

    return classify


def flowd(flows: list[Flow]) -> Callable[[ChangeEvent], list[int]]:
    index, problems = build_index(flows)
    assert not problems, problems

    def classify(event: ChangeEvent) -> list[int]:
        return [flow.flow_id for flow in index.classify(event).flows]

    return classify


def per_event_us(classify: Callable[[ChangeEvent], list[int]], events: list[ChangeEvent]) -> float:
    started = time.perf_counter()
    for event in events:
        classify(event)
    return (time.perf_counter() - started) / len(events) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--flows", type=int, default=400)
    parser.add_argument("--tables", type=int, default=20)
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(42)
    flows = make_flows(args.flows, args.tables, rng)
    events = make_events(args.events, args.tables, rng)
    contenders = {"baseline": baseline(flows), "flowd": flowd(flows)}
    assert all(contenders["baseline"](e) == contenders["flowd"](e) for e in events)
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(args.repeat):  # interleaved, so drift hits both alike
        for name, classify in contenders.items():
            samples[name].append(per_event_us(classify, events))
    medians = {name: statistics.median(values) for name, values in samples.items()}
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.processor() or '?'}")
    print(f"python {platform.python_version()}, {platform.system()} {platform.release()}")
    print(f"{args.flows} flows on {args.tables} tables, {args.events} events, {args.repeat} runs")
    for name, median in medians.items():
        print(f"{name:>9}: median {median:8.1f} µs/event")
    print(f"    ratio: flowd is {medians['baseline'] / medians['flowd']:.1f}x faster")


if __name__ == "__main__":
    main()
