"""Record: claim a (flow, event) pair in `flow_executions`, then write its outcome.

The claim is an INSERT of a RUNNING row that the unique `(flow_id, event_key)` lets
only one process win: a replay, a reconnect or a second replica finds the row and
skips the flow. `--force` takes the row over instead; `--failed` takes over rows that
ended FAILURE. The outcome is written with the human-readable `log` and the
per-action details in `actions`; every text is redacted first.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from flowd.catalog import quote_ident
from flowd.db import Connection
from flowd.models import ActionOutcome, ChangeEvent, Flow, Status


def _rerunnable(seconds: str) -> str:
    """SQL: the execution failed, or has been RUNNING longer than any run can take (the
    parameter `seconds`): its process died (kill -9, power loss) before recording an outcome."""
    return (
        "(status = 'FAILURE' OR (status = 'RUNNING'"
        f" AND triggered_at < now() - make_interval(secs => {seconds}::double precision)))"
    )


@dataclass(frozen=True, slots=True)
class Claim:
    """An execution this process may run; `done` holds the actions an earlier run finished."""

    execution_id: int
    done: tuple[ActionOutcome, ...] = ()


@dataclass(frozen=True, slots=True)
class FailedExecution:
    execution_id: int
    flow_id: int
    event: ChangeEvent


def execution_log(flow: Flow, event: ChangeEvent, outcomes: Sequence[ActionOutcome]) -> str:
    """The `log` column: what happened, one line per step, for a person."""
    lines = [
        f"flow {flow.flow_id} ({flow.name}) matched {event.type} on "
        f"{event.schema_name}.{event.table} at {event.commit_timestamp}"
    ]
    lines += [outcome.describe() for outcome in outcomes]
    if not flow.actions:
        lines.append("no actions")
    elif len(outcomes) < len(flow.actions):
        lines.append(f"skipped {len(flow.actions) - len(outcomes)} later action(s)")
    return "\n".join(lines)


class Recorder:
    """Reads and writes `flow_executions` in the flows schema."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        schema: str,
        redact: Callable[[str], str],
        *,
        abandoned_after_s: float = 900.0,
    ) -> None:
        self._pool = pool
        self._abandoned_after_s = abandoned_after_s
        self._table = f"{quote_ident(schema)}.flow_executions"
        self._redact = redact
        self.in_flight: set[int] = set()  # claimed here, outcome not written yet

    async def claim(self, flow: Flow, event: ChangeEvent, *, force: bool = False) -> int | None:
        """Start an execution; None when this flow already ran (or runs) for this event."""
        takeover = (
            "DO UPDATE SET status = 'RUNNING', triggered_at = now(), finished_at = NULL,"
            f" runs = {self._table}.runs + 1, log = '', actions = '[]'"
            if force
            else "DO NOTHING"
        )
        execution_id: int | None = await asyncio.shield(
            self._pool.fetchval(
                f"INSERT INTO {self._table} (flow_id, event_key, status, event)"
                f" VALUES ($1, $2, 'RUNNING', $3::jsonb)"
                f" ON CONFLICT (flow_id, event_key) {takeover} RETURNING execution_id",
                flow.flow_id,
                event.key,
                json.dumps(event.to_wire(), default=str),
            )
        )
        if execution_id is not None:
            self.in_flight.add(execution_id)
        return execution_id

    async def claim_durable(self, flow: Flow, event: ChangeEvent) -> Claim | None:
        """Start an execution, or resume one a dead process left RUNNING; None once it ended.

        Only for events claimed from the durable event log: the event's lease makes this
        process the only one working on it, so a RUNNING execution is an interrupted one.
        """
        row = await asyncio.shield(
            self._pool.fetchrow(
                f"INSERT INTO {self._table} AS e (flow_id, event_key, status, event)"
                " VALUES ($1, $2, 'RUNNING', $3::jsonb) ON CONFLICT (flow_id, event_key)"
                " DO UPDATE SET runs = e.runs + 1, triggered_at = now() WHERE e.status = 'RUNNING'"
                " RETURNING execution_id, actions::text",
                flow.flow_id,
                event.key,
                json.dumps(event.to_wire(), default=str),
            )
        )
        if row is None:
            return None
        self.in_flight.add(row["execution_id"])
        done = tuple(ActionOutcome.model_validate(item) for item in json.loads(row["actions"]))
        return Claim(row["execution_id"], done)

    async def progress(
        self,
        execution_id: int,
        index: int,
        outcome: ActionOutcome,
        connection: asyncpg.Pool | Connection | None = None,
    ) -> bool:
        """Record that action number `index` (from 0) finished; False if another run got there.

        On `connection`, inside its transaction, the record commits with what the action did.
        """
        recorded = await (connection or self._pool).fetchval(
            f"UPDATE {self._table} SET actions = actions || jsonb_build_array($2::jsonb)"
            " WHERE execution_id = $1 AND status = 'RUNNING' AND jsonb_array_length(actions) = $3"
            " RETURNING true",
            execution_id,
            self._redact(outcome.model_dump_json()),
            index,
        )
        return bool(recorded)

    async def claim_failed(self, execution_id: int) -> bool:
        """Take over a failed (or abandoned) execution to run it again; False if gone or taken."""
        claimed = await self._pool.fetchval(
            f"UPDATE {self._table} SET status = 'RUNNING', triggered_at = now(),"
            f" finished_at = NULL, runs = runs + 1 WHERE execution_id = $1 AND {_rerunnable('$2')}"
            " RETURNING true",
            execution_id,
            self._abandoned_after_s,
        )
        if claimed:
            self.in_flight.add(execution_id)
        return bool(claimed)

    async def finish(
        self, execution_id: int, status: Status, log: str, outcomes: Sequence[ActionOutcome]
    ) -> None:
        self.in_flight.discard(execution_id)
        details = json.dumps([outcome.model_dump() for outcome in outcomes])
        await self._pool.execute(
            f"UPDATE {self._table} SET status = $2, finished_at = now(), log = $3,"
            " actions = $4::jsonb WHERE execution_id = $1",
            execution_id,
            status,
            self._redact(log),
            self._redact(details),
        )

    async def abandon(self, reason: str) -> list[int]:
        """Mark every execution claimed here and still RUNNING as FAILURE (shutdown)."""
        ids = sorted(self.in_flight)
        self.in_flight.clear()
        if ids:
            await self._pool.execute(
                f"UPDATE {self._table} SET status = 'FAILURE', finished_at = now(), log = $2"
                " WHERE execution_id = ANY($1::bigint[]) AND status = 'RUNNING'",
                ids,
                reason,
            )
        return ids

    async def failed(self, *, since: datetime | None, flow_id: int | None) -> list[FailedExecution]:
        """Executions that ended FAILURE, or were abandoned RUNNING, oldest first."""
        rows = await self._pool.fetch(
            f"SELECT execution_id, flow_id, event FROM {self._table} WHERE {_rerunnable('$1')}"
            " AND ($2::timestamptz IS NULL OR triggered_at >= $2)"
            " AND ($3::bigint IS NULL OR flow_id = $3) ORDER BY triggered_at, execution_id",
            self._abandoned_after_s,
            since,
            flow_id,
        )
        return [
            FailedExecution(
                row["execution_id"], row["flow_id"], ChangeEvent.model_validate_json(row["event"])
            )
            for row in rows
        ]
