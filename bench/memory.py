"""Section: resident memory of the classifier and of the daemon, each figure in a fresh process.

Classifier: a child process (`python -m bench.memory MODE FLOWS EVENTS`) imports flowd,
builds what MODE says and prints its resident set (VmRSS) and peak (VmHWM) in kB from
/proc/self/status. Daemon: the real `flowd run` on a TemporaryCluster (`bench.daemon_memory`).
The baselines are the same processes with no flows loaded.
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
    from flowd.rules import build_index

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


def _daemon_rows(quick: bool, runs: int) -> list[Row]:
    # Imported here: the classifier's child processes must not load the daemon's imports.
    from bench import daemon_memory

    return daemon_memory.rows(quick, runs)


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
        *_daemon_rows(quick, runs),
    ]
    notes = [
        "Classifier rows: each figure from a fresh process that imported flowd and the"
        " generator; the burst's events are made one at a time, never held together. The"
        " difference to the no-flows baseline is what the flows and the burst cost.",
        "`flowd run` rows: durable mode, default settings (FLOWD_QUEUE_SIZE 1000,"
        " FLOWD_CONCURRENCY 16), pool and LISTEN connections open; each flow has three"
        " rules and an API_CALL. The burst (500 INSERTs to a transaction) is committed"
        " while the daemon runs and matches none of the flows, so it measures the feed,"
        " the queue and the classifier, not execution records; the peak includes start-up.",
    ]
    return render("Memory", rows, notes)


if __name__ == "__main__":
    _child(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
