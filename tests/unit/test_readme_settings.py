"""README's settings table lists exactly the settings of flowd/config.py, with their defaults.

A row names one or more variables (`FLOWD_A`, `FLOWD_B`) and their defaults (one for all,
or one each, comma-separated). A default README shows as a value is read the way flowd
reads that variable and must give the setting's default; `—` stands for none.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from flowd.config import Settings, env_names

README = Path(__file__).resolve().parents[2] / "README.md"
# Defaults worked out at start (from the port, the flows, the terminal): README says them in
# words, and the setting's own default is None.
WORDED_DEFAULTS = {"FLOWD_DB_UPDATE_SCHEMAS", "FLOWD_DB_STATEMENT_CACHE_SIZE", "FLOWD_LOG_FORMAT"}
NONE = "—"
_NAME = re.compile(r"`([A-Z][A-Z0-9_]*)`")


def settings_table(readme: str) -> dict[str, str]:
    """Each variable of the table under `## Configuration` and the default README shows."""
    section = readme.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    table: dict[str, str] = {}
    for row in rows:
        names_cell, defaults_cell = (cell.strip() for cell in row.strip("|").split("|")[:2])
        if "<" in names_cell:  # FLOWD_SECRET_<NAME>: a family of template secrets
            continue
        names = _NAME.findall(names_cell)
        defaults = defaults_cell.split(", ") if len(names) > 1 else [defaults_cell]
        if len(defaults) == 1:
            defaults *= len(names)
        assert len(defaults) == len(names), f"README.md settings row {row!r}: one default each"
        table.update(zip(names, defaults, strict=True))
    return table


def default_problem(name: str, shown: str) -> str | None:
    """What is wrong with the default README shows for the setting `name`, or None."""
    field = next(f for f in Settings.model_fields.values() if f.validation_alias == name)
    if name in WORDED_DEFAULTS:
        return None if field.default is None else f"default {field.default!r} is not worded"
    if shown == NONE:
        return None if field.default in (None, "") else f"default is {field.default!r}, not none"
    try:
        read = getattr(Settings.model_validate({name: shown.strip("`")}), _attribute(name))
    except ValidationError:
        return f"default {shown} is not a value of the setting"
    return None if read == field.default else f"shows {shown}, but the default is {field.default!r}"


def _attribute(name: str) -> str:
    return next(key for key, f in Settings.model_fields.items() if f.validation_alias == name)


def problems(readme: str) -> list[str]:
    table = settings_table(readme)
    settings = env_names()
    found = [
        f"README.md settings table: no row for {name}" for name in settings if name not in table
    ]
    found += [
        f"README.md settings table: {name} is not a setting"
        for name in sorted(table.keys() - settings.keys())
    ]
    for name, shown in table.items():
        if name in settings and (problem := default_problem(name, shown)):
            found.append(f"README.md settings table: {name}: {problem}")
    return found


def test_readme_lists_every_setting_with_its_default() -> None:
    assert problems(README.read_text()) == []


def test_a_setting_without_its_row_is_reported() -> None:
    readme = "\n".join(
        line for line in README.read_text().splitlines() if "`FLOWD_LEASE_S`" not in line
    )
    assert problems(readme) == ["README.md settings table: no row for FLOWD_LEASE_S"]


@pytest.mark.parametrize(
    ("row", "changed", "problem"),
    [
        ("| `FLOWD_CONCURRENCY` | 16 |", "| `FLOWD_CONCURRENCY` | 8 |", "shows 8"),
        ("| `FLOWD_EVENT_RETENTION` | `7d` |", "| `FLOWD_EVENT_RETENTION` | `1d` |", "shows `1d`"),
        ("| 25, 60 |", "| 25 |", "FLOWD_REALTIME_STALL_S: shows 25,"),
        ("| `FLOWD_LOG_FORMAT`, `FLOWD_LOG_LEVEL` |", "| `FLOWD_LOGS` |", "not a setting"),
    ],
)
def test_a_wrong_default_or_name_is_reported(row: str, changed: str, problem: str) -> None:
    readme = README.read_text()
    assert row in readme
    found = problems(readme.replace(row, changed, 1))
    assert found, f"{changed!r} went unnoticed"
    assert any(problem in line for line in found), found
