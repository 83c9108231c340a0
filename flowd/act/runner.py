"""ActionRunner: a flow's prepared actions for one event, in order, each with its retries.

What a kind does in one attempt is the kind's (`flowd.act.base.ActionKind`); the runner
renders its templates, retries, journals, logs and turns the result into an outcome.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
from structlog.typing import FilteringBoundLogger

from flowd.act.base import Done, Journal, PreparedAction, RowsWritten, Step, Tools
from flowd.act.rendering import render_config
from flowd.act.retry import RetryPolicy, call_with_retries
from flowd.act.sandbox import TemplateSandbox
from flowd.act.templates import template_context
from flowd.config import Settings
from flowd.db import is_outage
from flowd.errors import ActionError, ExecutionTakenOver, PermanentActionError, describe
from flowd.logs import get_logger
from flowd.models import Action, ActionOutcome, ChangeEvent, Flow
from flowd.outage import Availability
from flowd.secrets import Secrets

log = get_logger()


@dataclass(frozen=True, slots=True)
class _FlowRun:
    """What every action of one flow run shares."""

    flow: Flow
    event: ChangeEvent
    context: dict[str, Any]  # the templates' names
    on_written: RowsWritten | None
    journal: Journal | None

    def step(
        self,
        prepared: PreparedAction[Any],
        index: int,
        tools: Tools,
        outcome: Callable[[Done], ActionOutcome],
    ) -> Step:
        return Step(
            self.flow, self.event, prepared, index, self.journal, self.on_written, tools, outcome
        )


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
        self._templates = templates
        self._available = available
        self._secrets = secrets
        self._tools = Tools(settings, http_client, pool, available)
        self._policy = RetryPolicy(
            settings.max_attempts, settings.retry_backoff_s, settings.retry_max_delay_s
        )
        self.slots = asyncio.Semaphore(settings.concurrency)

    async def run_flow(
        self,
        flow: Flow,
        actions: tuple[PreparedAction[Any], ...],
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
            # Some kinds journal with their write; the last action by the outcome itself.
            journalled = prepared.kind.journalled_with_write or index == len(actions) - 1
            if journal and not journalled and not await journal.record(index, outcome, None):
                raise ExecutionTakenOver()
        return outcomes

    async def _run_action(
        self, prepared: PreparedAction[Any], run: _FlowRun, index: int
    ) -> ActionOutcome:
        action = prepared.action
        started = time.monotonic()
        attempts = 0
        bound = log.bind(action_id=action.action_id, action_type=action.type)

        def outcome_of(done: Done) -> ActionOutcome:
            return self._outcome(action, attempts, started, done)

        step = run.step(prepared, index, self._tools, outcome_of)

        async def attempt(number: int) -> Done:
            nonlocal attempts
            attempts = number
            await self._available.wait_available()  # no action starts while it is away
            config = await render_config(self._templates, prepared.config, run.context)
            return await prepared.kind.attempt(config, step)

        def on_retry(number: int, error: BaseException, pause_s: float) -> None:
            bound.warning(
                "action.retry",
                attempt=number,
                error=self._secrets.redact(str(error)),
                retry_in_s=round(pause_s, 3),
            )

        policy = self._policy.with_max_attempts(getattr(prepared.config, "max_attempts", None))
        error: ActionError | None = None
        done = Done()
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
        _log_outcome(bound, outcome)
        return outcome

    def _outcome(
        self,
        action: Action,
        attempts: int,
        started: float,
        done: Done,
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


def _log_outcome(bound: FilteringBoundLogger, outcome: ActionOutcome) -> None:
    bound.log(
        20 if outcome.ok else 40,
        "action.finished" if outcome.ok else "action.failed",
        attempt=outcome.attempts,
        duration_ms=outcome.duration_ms,
        http_status=outcome.http_status,
        rows_written=outcome.rows_written,
        error=outcome.error,
    )
