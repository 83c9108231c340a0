"""What a `flowd --once` run did, and the one line and exit code that say so."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from flowd.engine import FlowRun


@dataclass
class Summary:
    events: int = 0
    bad_lines: int = 0
    runs: Counter[str] = field(default_factory=Counter)
    matched: int | None = None  # set by a dry run: events that matched some flow
    set_aside: int = 0  # durable: poison events set aside (or, with --failed, listed)
    task_died: bool = False  # durable: a task of the daemon died (`daemon.task_died`)

    @property
    def exit_code(self) -> int:
        failed = self.bad_lines or self.set_aside or self.runs["FAILURE"] or self.task_died
        return 1 if failed else 0

    def add(self, runs: list[FlowRun]) -> None:
        self.runs.update(run.status for run in runs)

    def line(self) -> str:
        text = f"flowd: {self.events} event(s)"
        if self.bad_lines:
            text += f", {self.bad_lines} bad line(s)"
        executions = self.runs["SUCCESS"] + self.runs["FAILURE"]
        if self.matched is not None:
            return text + f"; {self.matched} matched a flow (dry run: nothing ran)"
        text += f"; {executions} execution(s): {self.runs['SUCCESS']} SUCCESS"
        text += f", {self.runs['FAILURE']} FAILURE; {self.runs['SKIPPED']} already ran"
        if self.set_aside:
            text += f"; {self.set_aside} event(s) set aside"
        return text
