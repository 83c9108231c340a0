"""The execution history in `flow_executions`: what ran, how it went, and what finishes now.

`queries` lists and reads executions (plain dataclasses out, bound parameters only),
`changes` works out an UPDATE's per-column diff (pure), `follow` yields executions as they
finish (LISTEN where the connection allows it, a poll otherwise). `flowd executions` prints
them; the console reuses them.
"""

from flowd.history.changes import ColumnChange, column_changes, column_order
from flowd.history.follow import ExecutionFollower
from flowd.history.queries import (
    Execution,
    ExecutionDetail,
    ExecutionFilter,
    FlowRef,
    list_executions,
    resolve_flow,
    show_execution,
)

__all__ = [
    "ColumnChange",
    "Execution",
    "ExecutionDetail",
    "ExecutionFilter",
    "ExecutionFollower",
    "FlowRef",
    "column_changes",
    "column_order",
    "list_executions",
    "resolve_flow",
    "show_execution",
]
