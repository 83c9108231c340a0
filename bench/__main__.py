"""Run flowd's benchmarks: `python -m bench [--quick] [--runs N] [--only SECTION] [--write]`.

Each section measures flowd side by side with a baseline in the same run and returns a
Markdown table. `--write` puts the tables, the machine and the command into
BENCHMARKS.md between its `bench:begin`/`bench:end` markers, keeping the text around
them. `--quick` (CI) uses tiny sizes and one run: it checks that the benchmarks still run.

A new section is a module with `run(quick: bool, runs: int) -> str`, listed in SECTIONS.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench import classifier, execlog, http_client, memory, pipeline, redact, templates
from bench.report import machine

SECTIONS: dict[str, Callable[[bool, int], str]] = {
    "classifier": classifier.run,
    "memory": memory.run,
    "http": http_client.run,
    "pipeline": pipeline.run,
    "execlog": execlog.run,
    "redact": redact.run,
    "templates": templates.run,
}
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
REPORT = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one run (CI)")
    parser.add_argument("--runs", type=int, default=None, help="runs per figure (default 5)")
    parser.add_argument("--only", choices=sorted(SECTIONS), action="append", help="a section")
    parser.add_argument("--write", action="store_true", help=f"update {REPORT.name}")
    args = parser.parse_args(argv)
    runs = args.runs or (1 if args.quick else 5)
    started = time.monotonic()
    parts = [f"Machine: {machine()}", ""]
    for name in args.only or SECTIONS:
        table = SECTIONS[name](args.quick, runs)
        print(table, flush=True)
        parts.append(table)
    command = shlex.join(["python", "-m", "bench", *(argv if argv is not None else sys.argv[1:])])
    parts.append(f"Command: `{command}` ({time.monotonic() - started:.0f} s, {runs} runs each).")
    print(parts[0])
    print(parts[-1])
    if args.write:
        _write("\n".join(parts))
    return 0


def _write(generated: str) -> None:
    text = REPORT.read_text() if REPORT.exists() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    before, _, rest = text.partition(BEGIN)
    _, _, after = rest.partition(END)
    REPORT.write_text(f"{before}{BEGIN}\n{generated}\n{END}{after}")


if __name__ == "__main__":
    sys.exit(main())
