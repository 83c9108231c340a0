"""Act: run a matched flow's actions, in order, each with its retries.

`prepare` turns an `Action` row into a checked, parsed `PreparedAction` when flows
are loaded (an unknown type or a broken config refuses the flow there, not at run
time). `ActionRunner.run_flow` then renders and runs them for one event; the first
action that still fails after its retries stops the rest.

Every HTTP request carries an `Idempotency-Key` derived from (event, flow, action), the
same in every run of that execution. With a `Journal` (durable delivery) each finished
action is recorded as it finishes, a DB_UPDATE in the same transaction as its write, so
a resumed execution skips what is done and a DB_UPDATE takes effect once.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import asyncpg
import pydantic

from flowd.act import db_update, http
from flowd.act.rendering import render_config
from flowd.act.retry import RetryPolicy, call_with_retries
from flowd.act.sandbox import TemplateSandbox
from flowd.act.templates import check_syntax, origin_refusal, strings_in, template_context
from flowd.catalog import Catalog, Table
from flowd.config import Settings
from flowd.db import Connection, is_outage
from flowd.errors import (
    ActionError,
    ConfigurationError,
    ExecutionTakenOver,
    FlowDefinitionError,
    PermanentActionError,
    describe,
    first_problem,
)
from flowd.logs import get_logger
from flowd.models import Action, ActionOutcome, ChangeEvent, Flow
from flowd.outage import Availability
from flowd.policy import TablePolicy
from flowd.secrets import Secrets

ActionConfig = http.ApiCallConfig | http.FunctionCallConfig | db_update.DbUpdateConfig
CONFIG_MODELS: dict[str, type[ActionConfig]] = {
    "API_CALL": http.ApiCallConfig,
    "FUNCTION_CALL": http.FunctionCallConfig,
    "DB_UPDATE": db_update.DbUpdateConfig,
}

RowsWritten = Callable[[Table, Sequence[str], list[dict[str, Any]]], None]

log = get_logger()


@dataclass(frozen=True, slots=True)
class PreparedAction:
    action: Action
    config: ActionConfig
    table: Table | None = None  # the DB_UPDATE target, from the catalog


def _where(action: Action, index: int) -> str:
    return f"action {action.action_id}" if action.action_id is not None else f"action #{index + 1}"


async def prepare(
    flow: Flow, catalog: Catalog | None, policy: TablePolicy | None = None
) -> tuple[PreparedAction, ...]:
    """Parse and check the flow's actions; raise FlowDefinitionError for the first that cannot work.

    Without a catalog (flows from a file, no database) DB_UPDATE targets are checked against
    the `policy` only.
    """
    prepared = []
    for index, action in enumerate(flow.ordered_actions):
        where = f"{_where(action, index)} ({action.type})"
        model = CONFIG_MODELS.get(action.type.upper())
        if model is None:
            known = ", ".join(CONFIG_MODELS)
            raise FlowDefinitionError(flow.flow_id, where, f"unknown action type (known: {known})")
        try:
            config = model.model_validate(action.config)
        except pydantic.ValidationError as exc:
            location, reason = first_problem(exc, "config")
            raise FlowDefinitionError(flow.flow_id, where, f"{location}: {reason}") from None
        for source in strings_in(action.config):
            if (problem := check_syntax(source)) is not None:
                raise FlowDefinitionError(flow.flow_id, where, problem)
        if isinstance(config, http.ApiCallConfig) and (refusal := origin_refusal(config.url)):
            raise FlowDefinitionError(flow.flow_id, where, f"url: {refusal}")
        table = None
        if isinstance(config, db_update.DbUpdateConfig):
            table, problem = await db_update.target(config, flow, catalog, policy)
            if problem is not None:
                raise FlowDefinitionError(flow.flow_id, where, problem)
        prepared.append(PreparedAction(action, config, table))
    return tuple(prepared)


# record(index, outcome, connection): False when another run recorded that action first.
RecordProgress = Callable[[int, ActionOutcome, Connection | None], Awaitable[bool]]


@dataclass(frozen=True, slots=True)
class Journal:
    """A durable execution: what an earlier run finished, and how to record each action."""

    done: tuple[ActionOutcome, ...]
    record: RecordProgress
    cause: str  # JSON; set as `flowd.cause` where a DB_UPDATE writes, for the capture trigger


def idempotency_key(event: ChangeEvent, flow: Flow, action: Action, index: int) -> str:
    """The same for every run of this action for this event (receivers drop repeats)."""
    action_ref = action.action_id if action.action_id is not None else f"#{index}"
    identity = f"{event.key}:{flow.flow_id}:{action_ref}"
    return hashlib.sha256(identity.encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class _FlowRun:
    """What every action of one flow run shares."""

    flow: Flow
    event: ChangeEvent
    context: dict[str, Any]  # the templates' names
    on_written: RowsWritten | None
    journal: Journal | None


@dataclass(frozen=True, slots=True)
class _Done:
    http_status: int | None = None
    rows_written: int | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)  # what a DB_UPDATE wrote
    outcome: ActionOutcome | None = None  # already recorded (durable DB_UPDATE)


class ActionRunner:
    """Runs prepared actions with the shared HTTP client and database pool.

    `slots` holds FLOWD_CONCURRENCY places: an execution holds one from its first action
    until its outcome is recorded (`Engine`), so at most that many actions can be repeated
    after a crash. Classifying events and writing claims and executions without actions
    take none: they are group-committed across every event held. No attempt starts while
    the database is away (`available`), and a DB_UPDATE that meets an outage waits it out
    and runs again (its write rolled back with its journal record), without using up an
    attempt.
    """

    def __init__(
        self,
        *,
        settings: Settings,
        secrets: Secrets,
        http_client: aiohttp.ClientSession,
        pool: asyncpg.Pool | None,
        templates: TemplateSandbox,
        available: Availability,
    ) -> None:
        self._settings = settings
        self._templates = templates
        self._available = available
        self._secrets = secrets
        self._http = http_client
        self._pool = pool
        self._policy = RetryPolicy(
            settings.max_attempts, settings.retry_backoff_s, settings.retry_max_delay_s
        )
        self.slots = asyncio.Semaphore(settings.concurrency)

    async def run_flow(
        self,
        flow: Flow,
        actions: tuple[PreparedAction, ...],
        event: ChangeEvent,
        on_written: RowsWritten | None = None,
        journal: Journal | None = None,
    ) -> list[ActionOutcome]:
        """Run the actions in order; stop after the first that fails.

        `on_written(table, columns, rows)` hears of every row a DB_UPDATE wrote. With a
        `journal`, the actions it lists as done are skipped (their outcomes kept) and each
        one that finishes now is recorded; ExecutionTakenOver if another run recorded first.
        """
        context = template_context(event, flow, self._secrets.named)
        run = _FlowRun(flow, event, context, on_written, journal)
        outcomes: list[ActionOutcome] = list(journal.done) if journal else []
        for index, prepared in enumerate(actions[len(outcomes) :], start=len(outcomes)):
            outcome = await self._run_action(prepared, run, index)
            outcomes.append(outcome)
            if not outcome.ok:
                break
            # A DB_UPDATE is journalled with its write; the last action by the outcome itself.
            journalled = isinstance(prepared.config, db_update.DbUpdateConfig) or (
                index == len(actions) - 1
            )
            if journal and not journalled and not await journal.record(index, outcome, None):
                raise ExecutionTakenOver()
        return outcomes

    async def _run_action(
        self, prepared: PreparedAction, run: _FlowRun, index: int
    ) -> ActionOutcome:
        action = prepared.action
        started = time.monotonic()
        attempts = 0
        bound = log.bind(action_id=action.action_id, action_type=action.type)

        async def attempt(number: int) -> _Done:
            nonlocal attempts
            attempts = number
            await self._available.wait_available()  # no action starts while it is away
            return await self._attempt(prepared, run, index, number, started)

        def on_retry(number: int, error: BaseException, pause_s: float) -> None:
            bound.warning(
                "action.retry",
                attempt=number,
                error=self._secrets.redact(str(error)),
                retry_in_s=round(pause_s, 3),
            )

        policy = self._policy.with_max_attempts(getattr(prepared.config, "max_attempts", None))
        error: ActionError | None = None
        done = _Done()
        try:
            done = await call_with_retries(policy, attempt, on_retry)
        except ActionError as exc:
            error = exc
        except ExecutionTakenOver:
            raise
        except Exception as exc:  # a bug must fail this action, not the daemon
            if is_outage(exc):
                raise  # only once flowd gave up waiting (shutdown): left RUNNING, to resume
            bound.exception("action.crashed")
            error = PermanentActionError(f"internal error: {describe(exc)}")
        outcome = (
            done.outcome
            if done.outcome is not None
            else self._outcome(action, attempts, started, done, error)
        )
        bound.log(
            20 if outcome.ok else 40,
            "action.finished" if outcome.ok else "action.failed",
            attempt=outcome.attempts,
            duration_ms=outcome.duration_ms,
            http_status=outcome.http_status,
            rows_written=outcome.rows_written,
            error=outcome.error,
        )
        return outcome

    def _outcome(
        self,
        action: Action,
        attempts: int,
        started: float,
        done: _Done,
        error: ActionError | None = None,
    ) -> ActionOutcome:
        return ActionOutcome(
            action_id=action.action_id,
            type=action.type,
            ok=error is None,
            attempts=max(attempts, 1),
            duration_ms=round((time.monotonic() - started) * 1000),
            http_status=error.http_status if error else done.http_status,
            rows_written=done.rows_written,
            error=self._secrets.redact(str(error)) if error else None,
        )

    async def _attempt(
        self, prepared: PreparedAction, run: _FlowRun, index: int, number: int, started: float
    ) -> _Done:
        flow, event = run.flow, run.event
        config = await render_config(self._templates, prepared.config, run.context)
        if isinstance(config, db_update.DbUpdateConfig):
            pool, journal = self._pool, run.journal
            if pool is None or prepared.table is None:
                raise PermanentActionError("DB_UPDATE needs a database (DATABASE_URL)")
            update = db_update.build_update(config, prepared.table, event)
            if journal is None:
                rows = await self._available.until_done(lambda: db_update.execute(pool, update))
                done = _Done(rows_written=len(rows), rows=rows)
            else:
                done = await self._available.until_done(
                    lambda: self._update_and_record(
                        update, journal, prepared, index, number, started
                    )
                )
            if run.on_written is not None and done.rows_written:
                run.on_written(prepared.table, update.columns, done.rows)
            return done
        if isinstance(config, http.FunctionCallConfig):
            try:
                supabase_url, key = self._settings.require_supabase()
            except ConfigurationError as exc:
                raise PermanentActionError(str(exc)) from None
            request = http.function_call_request(
                config, event, flow, supabase_url=supabase_url, service_role_key=key
            )
        else:
            request = http.api_call_request(config, event, flow)
        if not any(name.lower() == "idempotency-key" for name in request.headers):
            key = idempotency_key(event, flow, prepared.action, index)
            request.headers["Idempotency-Key"] = key
        timeout = config.timeout_s or self._settings.action_timeout_s
        return _Done(http_status=await http.send(self._http, request, timeout))

    async def _update_and_record(
        self,
        update: db_update.Update,
        journal: Journal,
        prepared: PreparedAction,
        index: int,
        number: int,
        started: float,
    ) -> _Done:
        """The write and the record that it ran, in one transaction: it happens once."""
        assert self._pool is not None
        async with db_update.transaction(self._pool) as connection:
            await db_update.set_cause(connection, self._settings.schema_name, journal.cause)
            rows = await db_update.execute(connection, update)
            done = _Done(rows_written=len(rows), rows=rows)
            outcome = self._outcome(prepared.action, number, started, done)
            if not await journal.record(index, outcome, connection):
                raise ExecutionTakenOver()
        return _Done(rows_written=len(rows), rows=rows, outcome=outcome)
