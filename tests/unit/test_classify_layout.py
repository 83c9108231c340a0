"""The layout of flowd.rules, read from its source: pure, no import cycle, small parts.

Every import counts, at module level, under TYPE_CHECKING or inside a function: a cycle
in any of them is a cycle a reader has to follow.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import flowd.rules

RULES = Path(flowd.rules.__file__).parent
MODULES = {f"flowd.rules.{path.stem}": path for path in sorted(RULES.glob("*.py"))}
MODULES["flowd.rules"] = MODULES.pop("flowd.rules.__init__")
# what a pure classifier may import of flowd: no settings, database, actions or feeds
ALLOWED_OUTSIDE = {"flowd.durations", "flowd.errors", "flowd.models"}


def _imports(path: Path) -> Iterator[str]:
    """Every module `path` imports, wherever the import is."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            yield node.module
            # `from flowd.rules import limits` imports the module flowd.rules.limits
            submodules = (f"{node.module}.{alias.name}" for alias in node.names)
            yield from (name for name in submodules if name in MODULES)


def _rules_imports(module: str) -> set[str]:
    return {name for name in _imports(MODULES[module]) if name in MODULES and name != module}


def _cycle_from(start: str) -> list[str] | None:
    """A chain of imports from `start` back to itself, if there is one."""
    stack = [(start, [start])]
    seen: set[str] = set()
    while stack:
        module, chain = stack.pop()
        for imported in sorted(_rules_imports(module)):
            if imported == start:
                return [*chain, imported]
            if imported not in seen:
                seen.add(imported)
                stack.append((imported, [*chain, imported]))
    return None


def test_the_layout_reads_every_rules_module() -> None:
    assert {"flowd.rules.compile", "flowd.rules.operators", "flowd.rules.codegen"} <= set(MODULES)
    # the package re-exports from its modules: the walk sees those imports
    assert "flowd.rules.compile" in _rules_imports("flowd.rules")


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_rules_module_imports_itself_back(module: str) -> None:
    assert _cycle_from(module) is None


@pytest.mark.parametrize("module", sorted(MODULES))
def test_rules_import_nothing_of_flowd_but_pure_modules(module: str) -> None:
    outside = {
        name
        for name in _imports(MODULES[module])
        if name.split(".")[0] == "flowd" and not name.startswith("flowd.rules")
    }
    assert outside <= ALLOWED_OUTSIDE


@pytest.mark.parametrize("module", sorted(MODULES))
def test_rules_modules_and_functions_stay_small(module: str) -> None:
    source = MODULES[module].read_text()
    assert source.count("\n") <= 500
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > 60
    ]
    assert long == []
