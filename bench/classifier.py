"""Section: the classifier against naive evaluators and rule-engine, side by side.

For each flow count, one seeded workload (`bench.generate.Workload`); every contender
classifies the same events, run after run in turn so that drift hits all alike, and
all must name the same flows for every event they classify, or the run stops.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bench.generate import Workload
from bench.naive import BucketedNaive, naive_classify
from bench.peer import PeerEngine
from bench.report import Row, Samples, render
from flowd.models import ChangeEvent, Flow
from flowd.rules import build_index, forget_compiled

__all__ = ["Disagreement", "run"]

Classifier = Callable[[ChangeEvent], list[int]]

# Issue 6's targets on a 2-core machine: events/s by flow count; ratios at 1,000 flows.
TARGET_SPEED = {1000: 40_000, 10_000: 20_000}
TARGET_RATIOS = {"naive, bucketed": 7.0, "rule-engine": 40.0}


class Disagreement(AssertionError):
    """Two contenders named different flows for one event."""


@dataclass(frozen=True, slots=True)
class Contender:
    name: str
    classify: Classifier
    share: int  # classifies events[: len(events) // share]: the slow ones see fewer


def _flowd(flows: Sequence[Flow]) -> Classifier:
    index, refused = build_index(flows)
    if refused:
        raise Disagreement(f"flowd refused generated flows: {refused[:3]}")
    return lambda event: [flow.flow_id for flow in index.classify(event).flows]


def _contenders(flows: Sequence[Flow], quick: bool) -> list[Contender]:
    naive_share = 1 if quick else 50 if len(flows) <= 1000 else 200
    return [
        Contender("flowd", _flowd(flows), 1),
        Contender("naive, bucketed", BucketedNaive(flows).classify, 1 if quick else 8),
        Contender("naive", lambda event: naive_classify(flows, event), naive_share),
        Contender("rule-engine", PeerEngine(flows).classify, 1 if quick else 20),
    ]


def check_agreement(contenders: Sequence[Contender], events: Sequence[ChangeEvent]) -> int:
    """Every contender on its share of `events`; raises Disagreement; returns matches."""
    matches = 0
    for number, event in enumerate(events):
        names = [c for c in contenders if number < len(events) // c.share]
        answers = {c.name: c.classify(event) for c in names}
        first = answers[contenders[0].name]
        matches += len(first)
        for name, answer in answers.items():
            if answer != first:
                raise Disagreement(
                    f"event #{number} ({event.schema_name}.{event.table} {event.type}): "
                    f"flowd matched {first}, {name} matched {answer}"
                )
    return matches


def _events_per_second(classify: Classifier, events: Sequence[ChangeEvent]) -> float:
    started = time.perf_counter()
    for event in events:
        classify(event)
    return len(events) / (time.perf_counter() - started)


def _load_seconds(flows: Sequence[Flow]) -> float:
    forget_compiled()  # as at start-up: no rule compiled yet
    started = time.perf_counter()
    build_index(flows)
    return time.perf_counter() - started


def _peer_load_seconds(flows: Sequence[Flow]) -> float:
    started = time.perf_counter()
    PeerEngine(flows)
    return time.perf_counter() - started


def _measure(flow_count: int, event_count: int, runs: int, quick: bool) -> list[Row]:
    workload = Workload.make(flow_count)
    events = list(workload.events(event_count))
    contenders = _contenders(workload.flows, quick)
    matches = check_agreement(contenders, events)
    samples: dict[str, list[float]] = {c.name: [] for c in contenders}
    gc.collect()
    for _ in range(runs):
        for contender in contenders:
            share = events[: max(1, len(events) // contender.share)]
            samples[contender.name].append(_events_per_second(contender.classify, share))
    speed = {name: Samples(tuple(values), "events/s") for name, values in samples.items()}
    flowd = speed["flowd"]
    target = TARGET_SPEED.get(flow_count)
    rows = [
        Row(
            f"{flow_count:,} flows: events/s",
            flowd,
            target="" if target is None else f"≥ {target:,} events/s",
            met=None if target is None else flowd.median >= target,
        )
    ]
    wanted = TARGET_RATIOS if flow_count == 1000 else {}
    for name in ("naive, bucketed", "naive", "rule-engine"):
        ratio = flowd.ratio_to(speed[name])
        rows.append(
            Row(
                f"{flow_count:,} flows: vs {name}",
                flowd,
                speed[name],
                name,
                f"≥ {wanted[name]:.0f}×" if name in wanted else "",
                ratio >= wanted[name] if name in wanted else None,
            )
        )
    per_event = matches / len(events)
    rows.append(Row(f"{flow_count:,} flows: matches per event", Samples((per_event,), "flows")))
    return rows


def _loading(flow_count: int, runs: int) -> list[Row]:
    flows = Workload.make(flow_count).flows
    load = Samples(tuple(_load_seconds(flows) for _ in range(runs)), "s", lower_is_better=True)
    peer = Samples(tuple(_peer_load_seconds(flows) for _ in range(runs)), "s", lower_is_better=True)
    return [
        Row(
            f"loading {flow_count:,} flows",
            load,
            peer,
            "rule-engine",
            "< 0.1 s",
            load.median < 0.1 if flow_count == 1000 else None,
        )
    ]


def run(quick: bool, runs: int) -> str:
    """The section's Markdown."""
    sizes = [(40, 200)] if quick else [(1000, 20_000), (10_000, 10_000)]
    rows: list[Row] = []
    for flow_count, event_count in sizes:
        rows += _measure(flow_count, event_count, runs, quick)
    rows += _loading(sizes[0][0], runs)
    notes = [
        "Events/s: pre-built `ChangeEvent`s classified one after another on one core;"
        " the slower contenders classify a prefix of the same events. All four named the"
        " same flows for every event of the prefix each classified (checked before timing).",
    ]
    return render("Classifier", rows, notes)
