"""The layout's rules, read from flowd's own source with `ast`: who may import whom, and sizes.

- no import cycle (module-level imports, those under `if TYPE_CHECKING:` included; an
  import inside a function runs later and does not count);
- flowd/rules/ stays pure: no I/O library, no module that does I/O (at any depth);
- flowd/feeds/ imports neither flowd.commands nor flowd.app;
- flowd/daemon.py knows a Feed, not a feed: of flowd.feeds only flowd.feeds.base;
- only flowd/commands/* and flowd/cli.py import flowd.app (the composition root);
- no module over 500 lines; no function over 60 without `# long: <why>` on its def line.

KNOWN_VIOLATIONS lists what breaks these today (issue 13's refactor removes them): a new
violation fails, and so does a listed one that no longer occurs, so the list only shrinks.
"""

from __future__ import annotations

import ast
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60
LONG_REASON = "# long:"
# What flowd/rules/ may not import: libraries that talk to the world (the database, the
# network, processes, the event loop); of flowd, it may use only these pure modules.
IO_IMPORTS = (
    "asyncio", "asyncpg", "aiohttp", "httpx", "websockets", "realtime", "socket", "subprocess",
    "pebble",
)  # fmt: skip
RULES_MAY_IMPORT = ("flowd.rules", "flowd.models", "flowd.errors", "flowd.durations")

# (rule, where, what): exactly what breaks the rules on main today.
KNOWN_VIOLATIONS: set[tuple[str, str, str]] = set()

Violation = tuple[str, str, str]


@dataclass(frozen=True, slots=True)
class Import:
    source: str  # the importing module, flowd.x.y
    target: str  # the imported module (the most specific one known), or a library's name
    at_import: bool  # runs when the source is imported (not inside a function)


@dataclass(frozen=True, slots=True)
class Module:
    name: str
    path: str  # relative to the repository: flowd/x/y.py
    tree: ast.Module
    lines: list[str]


def load_modules(root: Path, package: str) -> list[Module]:
    modules = []
    for file in sorted((root / package).rglob("*.py")):
        parts = file.relative_to(root).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        text = file.read_text()
        path = file.relative_to(root).as_posix()
        modules.append(Module(name, path, ast.parse(text, path), text.splitlines()))
    return modules


def imports_of(module: Module, known: set[str]) -> Iterator[Import]:
    """Every import statement of `module`, resolved to modules of `known` where it names one."""
    for node, at_import in _walk(module.tree, at_import=True):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(module.name, _most_specific(alias.name, known), at_import)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(module, node)
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                target = candidate if candidate in known else _most_specific(base, known)
                yield Import(module.name, target, at_import)


def _walk(node: ast.AST, *, at_import: bool) -> Iterator[tuple[ast.AST, bool]]:
    for child in ast.iter_child_nodes(node):
        yield child, at_import
        later = isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        yield from _walk(child, at_import=at_import and not later)


def _absolute(module: Module, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module.name.split(".")
    if not module.path.endswith("__init__.py"):
        package = package[:-1]
    base = package[: len(package) - node.level + 1]
    return ".".join([*base, node.module] if node.module else base)


def _most_specific(name: str, known: set[str]) -> str:
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in known:
            return ".".join(parts[:end])
    return name


def _within(name: str, prefixes: tuple[str, ...]) -> str | None:
    return next((p for p in prefixes if name == p or name.startswith(f"{p}.")), None)


# ---------------------------------------------------------------------------- the rules


def cycles(modules: list[Module], imports: list[Import]) -> set[Violation]:
    """Each set of modules that import one another, round a loop (Tarjan's components)."""
    graph: dict[str, set[str]] = {module.name: set() for module in modules}
    for found in imports:
        if found.at_import and found.target in graph and found.target != found.source:
            graph[found.source].add(found.target)
    return {("cycle", ", ".join(sorted(group)), "") for group in _components(graph)}


def _components(graph: dict[str, set[str]]) -> list[set[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def visit(name: str) -> None:
        index[name] = low[name] = len(index)
        stack.append(name)
        for target in sorted(graph[name]):
            if target not in index:
                visit(target)
                low[name] = min(low[name], low[target])
            elif target in stack:
                low[name] = min(low[name], index[target])
        if low[name] == index[name]:
            group = set(stack[stack.index(name) :])
            del stack[stack.index(name) :]
            if len(group) > 1:
                groups.append(group)

    for name in sorted(graph):
        if name not in index:
            visit(name)
    return groups


def forbidden_imports(modules: list[Module], imports: list[Import]) -> set[Violation]:
    """rules-io, feeds-up, daemon-feed and app-root, at any depth of the importing module."""
    paths = {module.name: module.path for module in modules}
    found: set[Violation] = set()
    for one in imports:
        path, target = paths[one.source], one.target
        if one.source.startswith("flowd.rules") and (io := _impure(target)):
            found.add(("rules-io", path, io))
        if one.source.startswith("flowd.feeds") and _within(
            target, ("flowd.commands", "flowd.app")
        ):
            found.add(("feeds-up", path, target))
        is_feed = _within(target, ("flowd.feeds",)) and target != "flowd.feeds.base"
        if one.source == "flowd.daemon" and is_feed:
            found.add(("daemon-feed", path, target))
        may_compose = one.source.startswith("flowd.commands") or one.source == "flowd.cli"
        if target == "flowd.app" and one.source != "flowd.app" and not may_compose:
            found.add(("app-root", path, target))
    return found


def _impure(target: str) -> str | None:
    if target.split(".")[0] == "flowd":
        return None if _within(target, RULES_MAY_IMPORT) else target
    return _within(target, IO_IMPORTS)


def sizes(modules: list[Module]) -> set[Violation]:
    found: set[Violation] = set()
    for module in modules:
        if len(module.lines) > MAX_MODULE_LINES:
            found.add(("module-size", module.path, ""))
        for qualname, node in _functions(module.tree, ""):
            span = (node.end_lineno or node.lineno) - node.lineno + 1
            if span > MAX_FUNCTION_LINES and LONG_REASON not in module.lines[node.lineno - 1]:
                found.add(("function-size", module.path, qualname))
    return found


FunctionNode = ast.FunctionDef | ast.AsyncFunctionDef


def _functions(node: ast.AST, prefix: str) -> Iterator[tuple[str, FunctionNode]]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            qualname = f"{prefix}{child.name}"
            if not isinstance(child, ast.ClassDef):
                yield qualname, child
            yield from _functions(child, f"{qualname}.")
        else:
            yield from _functions(child, prefix)


def violations(root: Path, package: str = "flowd") -> set[Violation]:
    modules = load_modules(root, package)
    known = {module.name for module in modules}
    imports = [one for module in modules for one in imports_of(module, known)]
    return cycles(modules, imports) | forbidden_imports(modules, imports) | sizes(modules)


# ---------------------------------------------------------------------------- the tests

RULES = {
    "cycle": "an import cycle (module-level or TYPE_CHECKING imports)",
    "rules-io": "flowd/rules/ must stay pure: it imports I/O",
    "feeds-up": "flowd/feeds/ imports flowd.commands or flowd.app",
    "daemon-feed": "flowd/daemon.py imports a concrete feed (only flowd.feeds.base)",
    "app-root": "only flowd/commands/* and flowd/cli.py may import flowd.app",
    "module-size": f"a module over {MAX_MODULE_LINES} lines",
    "function-size": f"a function over {MAX_FUNCTION_LINES} lines without `{LONG_REASON} why`",
}


@pytest.fixture(scope="module")
def found() -> set[Violation]:
    return violations(ROOT)


def _describe(violation: Violation) -> str:
    rule, where, what = violation
    return f"{where}: {rule} ({RULES[rule]}){f': {what}' if what else ''}"


@pytest.mark.parametrize("rule", sorted(RULES))
def test_the_layout_rule_holds(rule: str, found: set[Violation]) -> None:
    current = {v for v in found if v[0] == rule}
    known = {v for v in KNOWN_VIOLATIONS if v[0] == rule}
    new = [_describe(v) for v in sorted(current - known)]
    fixed = [_describe(v) for v in sorted(known - current)]
    assert not new, "\n".join(new)
    assert not fixed, "no longer occurs, remove from KNOWN_VIOLATIONS:\n" + "\n".join(fixed)


# ---------------------------------------------------------------- the checks themselves


def _package(tmp_path: Path, files: dict[str, str]) -> set[Violation]:
    for name, text in {"flowd/__init__.py": "", **files}.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return violations(tmp_path)


Case = tuple[dict[str, str], set[Violation]]
_BODY = "\n".join(["    x = 1"] * MAX_FUNCTION_LINES)
CASES: dict[str, Case] = {
    "a cycle through TYPE_CHECKING": (
        {
            "flowd/a.py": "import typing\nif typing.TYPE_CHECKING:\n    from flowd import b\n",
            "flowd/b.py": "from . import a\n",
        },
        {("cycle", "flowd.a, flowd.b", "")},
    ),
    "no cycle through an import inside a function": (
        {"flowd/a.py": "import flowd.b\n", "flowd/b.py": "def f() -> None:\n    import flowd.a\n"},
        set(),
    ),
    "rules importing I/O inside a function, or flowd's settings": (
        {
            "flowd/rules/__init__.py": "",
            "flowd/rules/x.py": "def f():\n    import asyncpg.pool\n",
            "flowd/config.py": "",
            "flowd/models.py": "",
            "flowd/rules/y.py": "from flowd import config, models\nfrom flowd.rules import x\n",
        },
        {
            ("rules-io", "flowd/rules/x.py", "asyncpg"),
            ("rules-io", "flowd/rules/y.py", "flowd.config"),
        },
    ),
    "feeds, daemon and app": (
        {
            "flowd/app.py": "",
            "flowd/feeds/__init__.py": "",
            "flowd/feeds/base.py": "",
            "flowd/feeds/durable.py": "from flowd.app import App\n",
            "flowd/daemon.py": "from flowd.feeds import base, durable\n",
            "flowd/commands/__init__.py": "",
            "flowd/commands/run.py": "from flowd import app\n",
        },
        {
            ("feeds-up", "flowd/feeds/durable.py", "flowd.app"),
            ("app-root", "flowd/feeds/durable.py", "flowd.app"),
            ("daemon-feed", "flowd/daemon.py", "flowd.feeds.durable"),
        },
    ),
    "sizes, and a long function with its reason": (
        {
            "flowd/big.py": "\n" * MAX_MODULE_LINES + "x = 1\n",
            "flowd/f.py": f"class C:\n    def g(self):\n{textwrap.indent(_BODY, '    ')}\n",
            "flowd/ok.py": f"def g():  # long: one table, read top to bottom\n{_BODY}\n",
        },
        {("module-size", "flowd/big.py", ""), ("function-size", "flowd/f.py", "C.g")},
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_check_finds_what_it_should(case: str, tmp_path: Path) -> None:
    files, expected = CASES[case]
    assert _package(tmp_path, files) == expected


def test_a_violation_names_its_file_and_rule() -> None:
    text = _describe(("rules-io", "flowd/rules/x.py", "asyncpg"))
    assert text.startswith("flowd/rules/x.py: rules-io (")
    assert text.endswith(": asyncpg")
