"""The benchmarks still run (CI's quick mode); their figures are not asserted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_quick_mode_runs_and_prints_tables() -> None:
    """`python -m bench --quick` exits 0 and prints each section's table and the machine;
    the daemon sections run the real `flowd run` on a throwaway PostgreSQL."""
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "### Classifier" in result.stdout
    assert "### Memory" in result.stdout
    assert "### Pipeline, end to end on loopback" in result.stdout
    assert "### Execution log" in result.stdout
    assert "### HTTP client" in result.stdout
    assert "### Masking secrets" in result.stdout
    assert "### Templates under a budget" in result.stdout
    assert "`flowd run` idle RSS" in result.stdout
    assert "| figure |" in result.stdout
    assert "Machine:" in result.stdout
