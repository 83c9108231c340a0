"""What a template's syntax tree says about its cost, without rendering it.

`is_plain`: the template only prints lookups of names, attributes and items, constants,
and linear-cost filters of them: rendering it costs about as much as reading its
inputs, so it renders in process (`flowd.act.sandbox`). Anything else (loops, calls,
`*`, `**`, `%`, ranges, other filters) renders in a worker process under a budget.

`warnings`: the constructs `flowd validate` points out because they can cost without
bound (nested loops, large ranges, repetition, padding to a large width, recursion).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import jinja2
from jinja2 import nodes

# Filters whose cost is linear in their input and whose output is no larger than a
# constant times it (so no padding, repetition or formatting).
LINEAR_FILTERS = frozenset(
    {
        "abs",
        "capitalize",
        "default",
        "d",
        "e",
        "escape",
        "first",
        "float",
        "int",
        "join",
        "last",
        "length",
        "count",
        "lower",
        "round",
        "string",
        "title",
        "tojson",
        "trim",
        "upper",
        "urlencode",
    }
)
_PLAIN_NODES = (
    nodes.Template,
    nodes.Output,
    nodes.TemplateData,
    nodes.Name,
    nodes.Getattr,
    nodes.Getitem,
    nodes.Const,
    nodes.Concat,
    nodes.CondExpr,
    nodes.Compare,
    nodes.Operand,
    nodes.And,
    nodes.Or,
    nodes.Not,
    nodes.Neg,
    nodes.Pos,
    nodes.Add,
    nodes.Sub,
    nodes.Div,
    nodes.FloorDiv,
    nodes.List,
    nodes.Tuple,
    nodes.Dict,
    nodes.Pair,
    nodes.Keyword,
)
# Padding and repetition: their output grows with an argument, not with their input.
_WIDTH_FILTERS = frozenset({"center", "indent", "wordwrap", "truncate", "format", "batch"})
_WIDTH_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs"})
_GROWING_METHODS = frozenset({"append", "extend", "insert", "update"})
LARGE = 10_000  # a constant above this, as a width, bound or count, is worth a warning

_parser = jinja2.Environment()  # parsing only: the syntax is the sandbox's


def _tree(source: str) -> nodes.Template | None:
    try:
        return _parser.parse(source)
    except jinja2.TemplateSyntaxError:
        return None


def _walk(node: nodes.Node) -> Iterator[nodes.Node]:
    yield node
    for child in node.iter_child_nodes():
        yield from _walk(child)


@functools.lru_cache(maxsize=4096)
def is_plain(source: str) -> bool:
    """True when rendering `source` costs no more than reading what it prints."""
    if "{" not in source:
        return True
    tree = _tree(source)
    if tree is None:
        return False
    for node in _walk(tree):
        if isinstance(node, nodes.Filter):
            # constant arguments only: `join(new.big)` of a long list would multiply sizes
            constant = all(isinstance(argument, nodes.Const) for argument in _arguments(node))
            if node.name not in LINEAR_FILTERS or node.dyn_args or node.dyn_kwargs or not constant:
                return False
        elif not isinstance(node, _PLAIN_NODES):
            return False
    return True


def _small_constant(node: nodes.Node | None) -> bool:
    return isinstance(node, nodes.Const) and (
        not isinstance(node.value, int | float) or abs(node.value) <= LARGE
    )


def _unbounded(arguments: list[nodes.Expr]) -> bool:
    """Some argument is not a constant, or is a large number."""
    return any(not _small_constant(argument) for argument in arguments)


def _arguments(node: nodes.Call | nodes.Filter) -> list[nodes.Expr]:
    return [*node.args, *(keyword.value for keyword in node.kwargs)]


def _repeats(node: nodes.Mul) -> bool:
    """`'x' * n` or `[…] * n` with n not a small constant; numbers times numbers are fine."""
    sequence = (nodes.List, nodes.Tuple)
    for seq, count in ((node.left, node.right), (node.right, node.left)):
        is_sequence = isinstance(seq, sequence) or (
            isinstance(seq, nodes.Const) and isinstance(seq.value, str)
        )
        if is_sequence and not _small_constant(count):
            return True
    return False


def _call_warning(node: nodes.Call, in_loop: bool) -> str | None:
    callee = node.node
    if isinstance(callee, nodes.Name) and callee.name == "range" and _unbounded(node.args):
        return "range() with a large or non-constant bound"
    if isinstance(callee, nodes.Getattr):
        if callee.attr in ("format", "format_map"):
            return f".{callee.attr}(): its format may pad to a large width"
        if callee.attr in _WIDTH_METHODS and _unbounded(_arguments(node)):
            return f".{callee.attr}() with a large or non-constant width"
        if callee.attr in _GROWING_METHODS and in_loop:
            return f".{callee.attr}() in a loop: the value may double each time"
    return None


def _node_warning(node: nodes.Node, loops: int) -> str | None:
    if isinstance(node, nodes.For):
        if node.recursive:
            return "a recursive loop"
        return "nested loops" if loops >= 1 else None
    if isinstance(node, nodes.Mul) and _repeats(node):
        return "`*` repeats a value a large or non-constant number of times"
    if isinstance(node, nodes.Pow) and not (
        _small_constant(node.left) and isinstance(node.right, nodes.Const)
    ):
        return "`**` with a large or non-constant operand"
    if isinstance(node, nodes.Mod) and isinstance(node.left, nodes.Const):
        return "`%` formatting: its width may be large"
    if (
        isinstance(node, nodes.Filter)
        and node.name in _WIDTH_FILTERS
        and (node.name == "format" or _unbounded(_arguments(node)))
    ):
        return f"filter {node.name} with a large or non-constant width"
    if isinstance(node, nodes.Call):
        return _call_warning(node, loops > 0)
    if isinstance(node, nodes.Macro | nodes.CallBlock):
        return "a macro: it may call itself"
    return None


def _warnings_in(node: nodes.Node, loops: int) -> Iterator[str]:
    if (warning := _node_warning(node, loops)) is not None:
        yield warning
    inner = loops + 1 if isinstance(node, nodes.For) else loops
    for child in node.iter_child_nodes():
        yield from _warnings_in(child, inner)


def warnings(source: str) -> list[str]:
    """What in `source` may cost without bound, each said once, in order of appearance."""
    if "{" not in source or (tree := _tree(source)) is None:
        return []
    return list(dict.fromkeys(_warnings_in(tree, 0)))
