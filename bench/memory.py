"""Section: resident memory of the classifier, each figure in a fresh process.

A child process (`python -m bench.memory MODE FLOWS EVENTS`) imports flowd, builds what
MODE says and prints its resident set (VmRSS) and peak (VmHWM) in kB from
/proc/self/status. The baseline is the same process with no flows loaded. Idle RSS with
open connections belongs to the pipeline benchmarks, which run the daemon.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from pathlib import Path

from bench.report import Row, Samples, render

__all__ = ["run"]

ROOT = Path(__file__).resolve().parents[1]


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(field)


def _child(mode: str, flow_count: int, event_count: int) -> None:
    from bench.generate import Workload
    from flowd.classify import build_index

    workload = Workload.make(max(flow_count, 1))
    flows = workload.flows if mode != "empty" else ()
    index, _ = build_index(flows)
    del workload
    gc.collect()
    idle = _status_kb("VmRSS")
    if mode == "burst":
        events = Workload.make(max(flow_count, 1)).events(event_count)
        for event in events:
            index.classify(event)
    print(json.dumps({"rss": idle, "peak": _status_kb("VmHWM")}))


def _measure(mode: str, flow_count: int, event_count: int) -> dict[str, int]:
    command = [sys.executable, "-m", "bench.memory", mode, str(flow_count), str(event_count)]
    output = subprocess.run(command, cwd=ROOT, check=True, capture_output=True, text=True)
    result: dict[str, int] = json.loads(output.stdout)
    return result


def run(quick: bool, runs: int) -> str:
    flow_count, event_count = (40, 500) if quick else (1000, 100_000)
    empty = [_measure("empty", flow_count, 0) for _ in range(runs)]
    idle = [_measure("idle", flow_count, 0) for _ in range(runs)]
    burst = [_measure("burst", flow_count, event_count) for _ in range(runs)]

    def mib(values: list[int]) -> Samples:
        return Samples(tuple(v / 1024 for v in values), "MiB", lower_is_better=True)

    baseline = mib([m["rss"] for m in empty])
    rows = [
        Row(
            f"idle RSS, {flow_count:,} flows loaded",
            mib([m["rss"] for m in idle]),
            baseline,
            "no flows",
        ),
        Row(
            f"peak RSS through {event_count:,} events",
            mib([m["peak"] for m in burst]),
            baseline,
            "no flows",
        ),
    ]
    notes = [
        "Each figure from a fresh process that imported flowd and the generator; the"
        " burst's events are made one at a time, never held together. The difference to"
        " the no-flows baseline is what the flows and the burst cost.",
    ]
    return render("Memory", rows, notes)


if __name__ == "__main__":
    _child(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
