"""Measurements and how they are printed: medians with their spread, ratios, targets."""

from __future__ import annotations

import os
import platform
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Row", "Samples", "machine", "render"]


@dataclass(frozen=True, slots=True)
class Samples:
    """Repeated measurements of one figure, in `unit`; higher is better unless `lower`."""

    values: tuple[float, ...]
    unit: str
    lower_is_better: bool = False

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def describe(self) -> str:
        low, high = min(self.values), max(self.values)
        return f"{_number(self.median)} ({_number(low)}–{_number(high)}) {self.unit}"

    def ratio_to(self, baseline: Samples) -> float:
        """How many times better than `baseline`, by the medians."""
        if self.lower_is_better:
            return baseline.median / self.median
        return self.median / baseline.median


@dataclass(frozen=True, slots=True)
class Row:
    """One line of a section's table."""

    figure: str
    measured: Samples
    baseline: Samples | None = None
    baseline_name: str = ""
    target: str = ""
    met: bool | None = None

    def cells(self) -> list[str]:
        ratio = "" if self.baseline is None else _ratio(self.measured.ratio_to(self.baseline))
        versus = "" if self.baseline is None else f"{self.baseline_name}: "
        versus += "" if self.baseline is None else self.baseline.describe()
        verdict = {None: "", True: "met", False: "**missed**"}[self.met]
        return [self.figure, self.measured.describe(), versus, ratio, self.target, verdict]


def _ratio(value: float) -> str:
    return f"{value:.1f}×" if value >= 1 else f"{value:.2f}×"


def _number(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.4f}"


def machine() -> str:
    """The CPU model, cores and Python this run had."""
    model = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"{model}, {os.cpu_count()} cores, {platform.machine()}, "
        f"{platform.system()} {platform.release()}, "
        f"Python {platform.python_version()} ({platform.python_implementation()})"
    )


def render(title: str, rows: Sequence[Row], notes: Sequence[str] = ()) -> str:
    """A section as Markdown: heading, table, notes."""
    header = ["figure", "flowd: median (min–max)", "baseline: median (min–max)", "ratio"]
    header += ["target", ""]
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |"]
    lines.append("|" + " --- |" * len(header))
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    lines += ["", *notes] if notes else []
    return "\n".join(lines) + "\n"
