"""Act: run a matched flow's actions, in order, each with its retries.

`prepare` (`flowd.act.registry`) turns an `Action` row into a checked, parsed
`PreparedAction` when flows are loaded (an unknown type or a broken config refuses the
flow there, not at run time). `ActionRunner.run_flow` then renders and runs them for one
event; the first action that still fails after its retries stops the rest. Each action
type is an `ActionKind` (`flowd.act.base`) in `KINDS`, one module per kind.

Every HTTP request carries an `Idempotency-Key` derived from (event, flow, action), the
same in every run of that execution. With a `Journal` (durable delivery) each finished
action is recorded as it finishes, a DB_UPDATE in the same transaction as its write, so
a resumed execution skips what is done and a DB_UPDATE takes effect once.
"""

from flowd.act.base import ActionKind, Done, Journal, PreparedAction, RowsWritten
from flowd.act.http import idempotency_key
from flowd.act.registry import KINDS, kind_of, prepare
from flowd.act.runner import ActionRunner

__all__ = [
    "KINDS",
    "ActionKind",
    "ActionRunner",
    "Done",
    "Journal",
    "PreparedAction",
    "RowsWritten",
    "idempotency_key",
    "kind_of",
    "prepare",
]
