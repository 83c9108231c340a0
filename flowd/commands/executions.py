"""`flowd executions list|show|tail`: the execution history, for a person or as JSON lines.

The queries are `flowd.history`'s; this module picks the flow a `--flow` names and
formats. Every text printed passes through the secrets' redaction once more (the recorder
stored outcomes redacted already; the event is the row as it was).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from flowd.app import App, open_app
from flowd.config import Settings
from flowd.db import DATABASE_ERRORS
from flowd.errors import DatabaseUnavailable, NotFound, describe
from flowd.history import (
    ColumnChange,
    Execution,
    ExecutionDetail,
    ExecutionFilter,
    ExecutionFollower,
    column_order,
    list_executions,
    resolve_flow,
    show_execution,
)
from flowd.models import ActionOutcome
from flowd.secrets import Secrets
from flowd.waits import first_of

_COLUMNS = ("EXECUTION", "STATUS", "TRIGGERED (UTC)", "DURATION", "FLOW", "EVENT")
_TAIL_WIDTHS = (9, 7, 23, 8, 20, 0)
_VALUE_CHARS = 200  # a longer value is cut in the human form (--json has it whole)
Print = Callable[[str], None]


async def main(args: argparse.Namespace, settings: Settings, secrets: Secrets) -> int:
    def emit(text: str) -> None:
        print(secrets.redact(text), flush=True)

    async with open_app(settings, secrets, database=True) as app:
        try:
            await _run(app, args, emit)
        except BrokenPipeError:  # `| head`: the reader has what it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except DATABASE_ERRORS as exc:  # a query cut short (tail rides out its own)
            raise DatabaseUnavailable(f"the database failed: {describe(exc)}") from None
    return 0


async def _run(app: App, args: argparse.Namespace, emit: Print) -> None:
    schema = app.settings.schema_name
    flow_id = await _flow_id(app, args.flow) if getattr(args, "flow", None) else None
    if args.action == "list":
        wanted = ExecutionFilter(flow_id, args.status, args.since, args.limit)
        _print_list(await list_executions(app.database, schema, wanted), emit, as_json=args.json)
    elif args.action == "show":
        detail = await show_execution(app.database, schema, _id(args.id))
        emit(json.dumps(_detail_json(detail)) if args.json else "\n".join(_detail(detail)))
    else:
        await _tail(app, flow_id, emit, as_json=args.json)


async def _flow_id(app: App, reference: str) -> int:
    return (await resolve_flow(app.database, app.settings.schema_name, reference)).flow_id


def _id(text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise NotFound(f"no execution {text!r}: an execution id is a number")
    return int(text)


async def _tail(app: App, flow_id: int | None, emit: Print, *, as_json: bool) -> None:
    """Print each execution as it finishes, until SIGINT or SIGTERM."""
    follower = ExecutionFollower(
        app.database,
        app.settings.schema_name,
        flow_id,
        listen_url=app.settings.require_database_url(),
    )

    async def print_all() -> None:
        async for execution in follower.follow():
            emit(json.dumps(_summary_json(execution)) if as_json else _line(execution))

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    stops = (signal.SIGINT, signal.SIGTERM)
    for signum in stops:
        loop.add_signal_handler(signum, stop.set)
    printing = asyncio.ensure_future(print_all())
    try:
        await first_of(printing, stop.wait())
    finally:
        for signum in stops:
            loop.remove_signal_handler(signum)
    if printing.done() and not printing.cancelled():
        printing.result()  # what ended it, raised


# ---------------------------------------------------------------------- list and tail


def _print_list(found: list[Execution], emit: Print, *, as_json: bool) -> None:
    if as_json:
        for execution in found:
            emit(json.dumps(_summary_json(execution)))
        return
    if not found:
        emit("no executions")
        return
    cells = [_COLUMNS, *(_cells(execution) for execution in found)]
    widths = [max(len(row[index]) for row in cells) for index in range(len(_COLUMNS))]
    widths[-1] = 0
    for row in cells:
        emit(_aligned(row, widths))


def _line(execution: Execution) -> str:
    return _aligned(_cells(execution), _TAIL_WIDTHS)


def _aligned(cells: Iterable[str], widths: Iterable[int]) -> str:
    parts = [
        cell.rjust(width) if index in (0, 3) else cell.ljust(width)
        for index, (cell, width) in enumerate(zip(cells, widths, strict=True))
    ]
    return "  ".join(parts).rstrip()


def _cells(execution: Execution) -> tuple[str, ...]:
    duration = execution.duration_ms
    return (
        str(execution.execution_id),
        execution.status,
        _instant(execution.triggered_at),
        "running" if duration is None else f"{duration} ms",
        _flow_label(execution),
        f"{execution.event_type or '?'} {execution.event_table or '?'}",
    )


def _flow_label(execution: Execution) -> str:
    return execution.flow_key or f"flow {execution.flow_id}"


def _instant(instant: datetime) -> str:
    return instant.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _iso(instant: datetime | None) -> str | None:
    return instant.astimezone(UTC).isoformat() if instant is not None else None


def _summary_json(execution: Execution) -> dict[str, Any]:
    return {
        "execution_id": execution.execution_id,
        "flow_id": execution.flow_id,
        "flow_key": execution.flow_key,
        "flow_name": execution.flow_name,
        "status": execution.status,
        "triggered_at": _iso(execution.triggered_at),
        "finished_at": _iso(execution.finished_at),
        "duration_ms": execution.duration_ms,
        "event_key": execution.event_key,
        "event_type": execution.event_type,
        "table": execution.event_table,
        "runs": execution.runs,
    }


# ---------------------------------------------------------------------- show


def _detail_json(detail: ExecutionDetail) -> dict[str, Any]:
    return _summary_json(detail.execution) | {
        "event": detail.event,
        "changes": [
            {"column": change.column, "old": change.old, "new": change.new}
            | ({} if change.in_old else {"not_in_old_row": True})
            for change in detail.changes
        ],
        "actions": [outcome.model_dump() for outcome in detail.actions],
        "log": detail.log,
    }


def _detail(detail: ExecutionDetail) -> list[str]:
    execution = detail.execution
    name = f" ({execution.flow_name})" if execution.flow_name is not None else " (removed)"
    finished = "not yet (RUNNING)"
    if execution.finished_at is not None:
        finished = f"{_instant(execution.finished_at)} UTC ({execution.duration_ms} ms)"
    return [
        f"execution {execution.execution_id}: {execution.status}"
        + (f" (run {execution.runs})" if execution.runs > 1 else ""),
        f"flow:      {' '.join(filter(None, [str(execution.flow_id), execution.flow_key]))}{name}",
        f"triggered: {_instant(execution.triggered_at)} UTC",
        f"finished:  {finished}",
        *_event_lines(detail),
        "actions:" if detail.actions else "actions:   none",
        *(_action_lines(index, outcome) for index, outcome in enumerate(detail.actions, 1)),
        "log:",
        *(f"  {line}" for line in detail.log.splitlines()),
    ]


def _event_lines(detail: ExecutionDetail) -> list[str]:
    event = detail.event
    committed = f", committed {event['commit_timestamp']}" if event.get("commit_timestamp") else ""
    where = detail.execution.event_table or "?"
    lines = [f"event:     {event.get('type', '?')} {where}{committed}"]
    lines.append(f"event key: {detail.execution.event_key}")
    if event.get("type") == "UPDATE":
        lines.append("changes:" if detail.changes else "changes:   none")
        lines += [f"  {_change(change)}" for change in detail.changes]
        return lines
    row = event.get("old_record") if event.get("type") == "DELETE" else event.get("record")
    if isinstance(row, dict):
        lines.append("old row:" if event.get("type") == "DELETE" else "row:")
        lines += [
            f"  {column}: {_value(row[column])}" for column in column_order(event) if column in row
        ]
    return lines


def _change(change: ColumnChange) -> str:
    old = _value(change.old) if change.in_old else "(not in the old row)"
    new = _value(change.new) if change.in_new else "(not in the new row)"
    return f"{change.column}: {old} → {new}"


def _value(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= _VALUE_CHARS else text[:_VALUE_CHARS] + "…"


def _action_lines(index: int, outcome: ActionOutcome) -> str:
    label = f"action {outcome.action_id}" if outcome.action_id is not None else "action"
    parts = ["ok" if outcome.ok else "FAILED"]
    if outcome.http_status is not None:
        parts.append(f"HTTP {outcome.http_status}")
    if outcome.rows_written is not None:
        parts.append(f"{outcome.rows_written} row(s) written")
    parts.append(f"{outcome.attempts} attempt{'' if outcome.attempts == 1 else 's'}")
    parts.append(f"{outcome.duration_ms} ms")
    line = f"  {index}. {outcome.type} ({label}): {', '.join(parts)}"
    return line + (f"\n     error: {outcome.error}" if outcome.error else "")
