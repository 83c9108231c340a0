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
from dataclasses import dataclass, field
from datetime import datetime
from operator import attrgetter

import asyncpg
from pydantic import TypeAdapter

from flowd.catalog import quote_ident
from flowd.chain import Cause
from flowd.db import Connection
from flowd.group_commit import GroupWriter
from flowd.models import ActionOutcome, ChangeEvent, Flow, Status
from flowd.outage import Availability

# The statements, named; `{table}` is the schema-qualified `flow_executions`, filled in
# once per Recorder (the schema is a setting). Kept here, not in a .sql file: the code
# that binds their `$n` parameters is in this module, and no file needs reading or shipping.

# The execution failed, or has been RUNNING longer than any run can take (the parameter
# `{seconds}`): its process died (kill -9, power loss) before recording an outcome.
_RERUNNABLE = (
    "(status = 'FAILURE' OR (status = 'RUNNING'"
    " AND triggered_at < now() - make_interval(secs => {seconds}::double precision)))"
)

_PROBE = "SELECT 1"

# --force: take the (flow, event) row over whatever it holds, or insert it.
_FORCE_CLAIM = (
    "INSERT INTO {table} (flow_id, event_key, status, event)"
    " VALUES ($1, $2, 'RUNNING', $3::jsonb) ON CONFLICT (flow_id, event_key)"
    " DO UPDATE SET status = 'RUNNING', triggered_at = now(), finished_at = NULL,"
    " runs = {table}.runs + 1, log = '', actions = '[]'"
    " RETURNING execution_id"
)

# Many claims in one INSERT: RUNNING rows, or SUCCESS ones for flows without actions
# (those come with their `log`); a row already there is left to `{on_conflict}`.
_INSERT_CLAIMS = (
    "INSERT INTO {table} AS e (flow_id, event_key, status, event, finished_at, log)"
    " SELECT flow_id, event_key, CASE WHEN log IS NULL THEN 'RUNNING' ELSE 'SUCCESS' END,"
    " event::jsonb, CASE WHEN log IS NOT NULL THEN now() END, coalesce(log, '')"
    " FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[])"
    " AS v(flow_id, event_key, event, log)"
    " ON CONFLICT (flow_id, event_key) {on_conflict}"
    " RETURNING execution_id, flow_id, event_key, runs, status, actions::text"
)
_SKIP_CLAIMED = "DO NOTHING"
# Durable: a RUNNING row is an interrupted run of an event leased to us; resume it.
_RESUME_RUNNING = (
    "DO UPDATE SET runs = e.runs + 1, triggered_at = now(), status = excluded.status,"
    " finished_at = excluded.finished_at, log = excluded.log WHERE e.status = 'RUNNING'"
)

# Append each step's outcome where the execution holds exactly `index` outcomes so far.
_APPEND_STEPS = (
    "UPDATE {table} AS e SET actions = e.actions || jsonb_build_array(v.outcome)"
    " FROM unnest($1::bigint[], $2::int[], $3::jsonb[]) AS v(execution_id, index, outcome)"
    " WHERE e.execution_id = v.execution_id AND e.status = 'RUNNING'"
    " AND jsonb_array_length(e.actions) = v.index RETURNING e.execution_id"
)

# --failed: take over one failed (or abandoned) execution to run it again.
_CLAIM_FAILED = (
    "UPDATE {table} SET status = 'RUNNING', triggered_at = now(),"
    " finished_at = NULL, runs = runs + 1 WHERE execution_id = $1 AND "
    + _RERUNNABLE.format(seconds="$2")
    + " RETURNING true"
)

# Many outcomes in one UPDATE; one with a `run` only while no other run took it over.
_WRITE_OUTCOMES = (
    "UPDATE {table} AS e SET status = v.status, finished_at = now(),"
    " log = v.log, actions = v.actions::jsonb"
    " FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::int[])"
    " AS v(execution_id, status, log, actions, run) WHERE e.execution_id = v.execution_id"
    " AND (v.run IS NULL OR (e.runs = v.run AND e.status = 'RUNNING'))"
    " RETURNING e.execution_id"
)

# Shutdown: what this process still has RUNNING ends FAILURE, with one of two logs.
_ABANDON = (
    "UPDATE {table} SET status = 'FAILURE', finished_at = now(),"
    " log = CASE WHEN execution_id = ANY($2::bigint[]) THEN $3 ELSE $4 END"
    " WHERE execution_id = ANY($1::bigint[]) AND status = 'RUNNING'"
)

# --failed: the executions to run again, oldest first, since a time and of one flow if asked.
_SELECT_FAILED = (
    "SELECT execution_id, flow_id, event FROM {table} WHERE "
    + _RERUNNABLE.format(seconds="$1")
    + " AND ($2::timestamptz IS NULL OR triggered_at >= $2)"
    " AND ($3::bigint IS NULL OR flow_id = $3) ORDER BY triggered_at, execution_id"
)


@dataclass(frozen=True, slots=True)
class _Statements:
    """The statements above, on one schema's `flow_executions`."""

    force_claim: str
    insert_claims: str
    resume_claims: str
    append_steps: str
    claim_failed: str
    write_outcomes: str
    abandon: str
    select_failed: str

    @classmethod
    def on(cls, table: str) -> _Statements:
        return cls(
            force_claim=_FORCE_CLAIM.format(table=table),
            insert_claims=_INSERT_CLAIMS.format(table=table, on_conflict=_SKIP_CLAIMED),
            resume_claims=_INSERT_CLAIMS.format(table=table, on_conflict=_RESUME_RUNNING),
            append_steps=_APPEND_STEPS.format(table=table),
            claim_failed=_CLAIM_FAILED.format(table=table),
            write_outcomes=_WRITE_OUTCOMES.format(table=table),
            abandon=_ABANDON.format(table=table),
            select_failed=_SELECT_FAILED.format(table=table),
        )


@dataclass(frozen=True, slots=True)
class Claim:
    """An execution this process may run; `done` holds the actions an earlier run finished.

    `run` is the execution's `runs` as of this claim: its outcome is written only if no
    other run has taken the execution over since (durable delivery).
    """

    execution_id: int
    done: tuple[ActionOutcome, ...] = ()
    run: int | None = None


@dataclass(frozen=True, slots=True)
class ExecutionJournal:
    """What an earlier run of an execution finished, and each action recorded as it finishes."""

    recorder: Recorder
    execution_id: int
    done: tuple[ActionOutcome, ...]
    cause: str  # JSON (`flowd.chain.Cause`), for the capture trigger where a DB_UPDATE writes

    async def record(
        self, index: int, outcome: ActionOutcome, connection: Connection | None
    ) -> bool:
        return await self.recorder.progress(self.execution_id, index, outcome, connection)


@dataclass(frozen=True, slots=True)
class _ClaimRequest:
    flow_id: int
    event: ChangeEvent
    resume: bool  # durable: take over a RUNNING execution (its event's lease is ours)
    log: str | None = None  # a flow without actions: the row is written finished, with this log
    # Serialised as the request is made, by its caller: an event that cannot be fails its
    # own claim, not the whole group written with it.
    event_json: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "event_json", _event_json(self.event))

    @property
    def identity(self) -> tuple[int, str]:
        return (self.flow_id, self.event.key)


@dataclass(frozen=True, slots=True)
class _Step:
    execution_id: int
    index: int
    outcome: str  # JSON


@dataclass(frozen=True, slots=True)
class _Outcome:
    execution_id: int
    status: Status
    log: str
    actions: str  # JSON
    run: int | None  # written only while the execution's `runs` is still this


_OUTCOMES = TypeAdapter(list[ActionOutcome])


def _event_json(event: ChangeEvent) -> str:
    """The event as stored in `flow_executions.event`, to be read back by `--failed`."""
    if event.type == "SCHEDULE":
        # Its row came from asyncpg (datetimes, decimals): stored as text the way the
        # event's key reads them, so a re-run has the same key.
        return json.dumps(event.to_wire(), default=str)
    return event.model_dump_json(by_alias=True, exclude_none=True)  # JSON values only


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
        available: Availability | None = None,
        *,
        abandoned_after_s: float = 900.0,
    ) -> None:
        self._pool = pool
        # A write that meets an outage waits in memory until the database is back: an
        # action that finished is recorded late rather than run again.
        available = available or Availability(lambda: pool.fetchval(_PROBE))
        self._until_written = available.until_done
        self._abandoned_after_s = abandoned_after_s
        self._sql = _Statements.on(f"{quote_ident(schema)}.flow_executions")
        self._redact = redact
        self.in_flight: set[int] = set()  # claimed here, outcome not written yet
        self.acting: set[int] = set()  # of those, the ones whose actions have begun
        # Group commit: what is asked while writes are under way goes in the next one.
        self._claims = GroupWriter(self._write_claims)
        self._resumes = GroupWriter(self._write_claims)
        self._finishes = GroupWriter(self._write_outcomes)
        self._steps = GroupWriter(self._write_steps)

    async def claim(self, flow: Flow, event: ChangeEvent, *, force: bool = False) -> int | None:
        """Start an execution; None when this flow already ran (or runs) for this event."""
        if force:
            execution_id: int | None = await asyncio.shield(
                self._pool.fetchval(
                    self._sql.force_claim,
                    flow.flow_id,
                    event.key,
                    _event_json(event),
                )
            )
            if execution_id is not None:
                self.in_flight.add(execution_id)
            return execution_id
        request = _ClaimRequest(flow.flow_id, event, resume=False)
        claim = await self._until_written(lambda: self._claims.submit(request))
        return claim.execution_id if claim is not None else None

    async def claim_durable(self, flow: Flow, event: ChangeEvent) -> Claim | None:
        """Start an execution, or resume one a dead process left RUNNING; None once it ended.

        Only for events claimed from the durable event log: the event's lease makes this
        process the only one working on it, so a RUNNING execution is an interrupted one.
        """
        request = _ClaimRequest(flow.flow_id, event, resume=True)
        return await self._until_written(lambda: self._resumes.submit(request))

    async def record_without_actions(
        self, flow: Flow, event: ChangeEvent, log: str, *, durable: bool
    ) -> int | None:
        """A flow without actions: its execution, written SUCCESS at once (one write, no claim).

        None when the flow already ran for this event. `durable` as for `claim_durable`: a
        RUNNING execution (its flow had actions then) is finished by this one.
        """
        request = _ClaimRequest(flow.flow_id, event, resume=durable, log=self._redact(log))
        writer = self._resumes if durable else self._claims
        claim = await self._until_written(lambda: writer.submit(request))
        return claim.execution_id if claim is not None else None

    async def _write_claims(self, requests: Sequence[_ClaimRequest]) -> list[Claim | None]:
        """One INSERT for many claims. Within a batch, the first of two requests for the same
        (flow, event) wins, as it would have one statement earlier."""
        first: dict[tuple[int, str], int] = {}
        for index, request in enumerate(requests):
            first.setdefault(request.identity, index)
        # In key order: two writes over the same keys (two writers, two replicas) lock them
        # in the same order, so they wait for each other rather than deadlock.
        unique = sorted((requests[index] for index in first.values()), key=attrgetter("identity"))
        rows = await self._pool.fetch(
            self._sql.resume_claims if requests[0].resume else self._sql.insert_claims,
            [request.flow_id for request in unique],
            [request.event.key for request in unique],
            [request.event_json for request in unique],
            [request.log for request in unique],
        )
        claimed = {
            (row["flow_id"], row["event_key"]): Claim(
                row["execution_id"],
                tuple(ActionOutcome.model_validate(item) for item in json.loads(row["actions"])),
                row["runs"],
            )
            for row in rows
        }
        self.in_flight.update(row["execution_id"] for row in rows if row["status"] == "RUNNING")
        return [
            claimed.get(request.identity) if first[request.identity] == index else None
            for index, request in enumerate(requests)
        ]

    def journal(self, claim: Claim, written_by: Cause) -> ExecutionJournal:
        """The journal (`flowd.act.Journal`) of a durable execution claimed here."""
        return ExecutionJournal(self, claim.execution_id, claim.done, written_by.to_json())

    async def progress(
        self,
        execution_id: int,
        index: int,
        outcome: ActionOutcome,
        connection: Connection | None = None,
    ) -> bool:
        """Record that action number `index` (from 0) finished; False if another run got there.

        On `connection`, inside its transaction, the record commits with what the action did;
        without one, it is group-committed with other executions' progress.
        """
        step = _Step(execution_id, index, self._redact(outcome.model_dump_json()))
        if connection is None:
            return await self._until_written(lambda: self._steps.submit(step))
        return bool(await self._write_steps([step], connection))

    async def _write_steps(
        self, steps: Sequence[_Step], database: asyncpg.Pool | Connection | None = None
    ) -> list[bool]:
        """Append each step's outcome where the execution has exactly `index` outcomes."""
        ordered = sorted(steps, key=lambda step: step.execution_id)
        rows = await (database or self._pool).fetch(
            self._sql.append_steps,
            [step.execution_id for step in ordered],
            [step.index for step in ordered],
            [step.outcome for step in ordered],
        )
        recorded = {row["execution_id"] for row in rows}
        return [step.execution_id in recorded for step in steps]

    async def claim_failed(self, execution_id: int) -> bool:
        """Take over a failed (or abandoned) execution to run it again; False if gone or taken."""
        claimed = await self._pool.fetchval(
            self._sql.claim_failed,
            execution_id,
            self._abandoned_after_s,
        )
        if claimed:
            self.in_flight.add(execution_id)
        return bool(claimed)

    async def finish(
        self,
        execution_id: int,
        status: Status,
        log: str,
        outcomes: Sequence[ActionOutcome],
        *,
        run: int | None = None,
    ) -> bool:
        """Write the outcome; with `run` (a durable claim's), only if no other run took the
        execution over since: False then, and nothing is written."""
        details = _OUTCOMES.dump_json(list(outcomes)).decode()
        outcome = _Outcome(execution_id, status, self._redact(log), self._redact(details), run)
        return await self._until_written(lambda: self._finishes.submit(outcome))

    async def _write_outcomes(self, outcomes: Sequence[_Outcome]) -> list[bool]:
        """One UPDATE for many outcomes, rows in id order (no deadlock with another writer)."""
        ordered = sorted(outcomes, key=lambda outcome: outcome.execution_id)
        rows = await self._pool.fetch(
            self._sql.write_outcomes,
            [outcome.execution_id for outcome in ordered],
            [outcome.status for outcome in ordered],
            [outcome.log for outcome in ordered],
            [outcome.actions for outcome in ordered],
            [outcome.run for outcome in ordered],
        )
        self.in_flight.difference_update(outcome.execution_id for outcome in outcomes)
        self.acting.difference_update(outcome.execution_id for outcome in outcomes)
        written = {row["execution_id"] for row in rows}
        return [outcome.execution_id in written for outcome in outcomes]

    async def abandon(self, cut_short: str, not_started: str) -> list[int]:
        """Mark every execution claimed here and still RUNNING as FAILURE (shutdown), with
        the log `cut_short` where its actions had begun, else `not_started`."""
        ids = sorted(self.in_flight)
        if ids:
            await self._pool.execute(
                self._sql.abandon,
                ids,
                sorted(self.acting),
                cut_short,
                not_started,
            )
        self.in_flight.clear()
        self.acting.clear()
        return ids

    async def failed(self, *, since: datetime | None, flow_id: int | None) -> list[FailedExecution]:
        """Executions that ended FAILURE, or were abandoned RUNNING, oldest first."""
        rows = await self._pool.fetch(
            self._sql.select_failed,
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
