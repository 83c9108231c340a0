"""Rules: which flows a change matches. Pure — no I/O, no clock but the one passed in.

`compile` checks a flow and compiles its rules (`plans`), reading values as `values`
says and fields as `fields` says, each operator as `operators` builds it; `index` files
the compiled flows by (schema, table, type) and by their rules, and `codegen` generates
one matching function per (table, type). `pattern` is MATCHES on RE2; `limits` the
bounds on rule values; `reltime` `now`/`now-7d` in rules; `cron` schedule expressions.
"""

from flowd.rules.compile import (
    build_index,
    check_rule_against_columns,
    compile_flow,
    forget_compiled,
    needs_old_row,
)
from flowd.rules.fields import EventView
from flowd.rules.index import FlowIndex
from flowd.rules.plans import Classification, CompiledFlow

__all__ = [
    "Classification",
    "CompiledFlow",
    "EventView",
    "FlowIndex",
    "build_index",
    "check_rule_against_columns",
    "compile_flow",
    "forget_compiled",
    "needs_old_row",
]
