"""Engine: the pipeline for one change event: classify → claim → act → record.

Used alike by `flowd --once` (events from a file) and `flowd run` (events from
Realtime or the durable event log). The flow set can be swapped at any time (hot
reload); an event uses the set it started with.

Each event comes as `Work` whose `Delivery` says what is promised: with a resumable one
an execution left RUNNING by a dead process is resumed where it stopped (the event's
lease makes this process its only worker), and every action is journalled as it
finishes (see `act.Journal`); a forced one runs again what already ran.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import structlog

from flowd.act import ActionRunner, Journal, RowsWritten
from flowd.catalog import Table, quote_ident
from flowd.chain import EXTERNAL, Cause, OwnWrites
from flowd.errors import ExecutionTakenOver
from flowd.feeds.base import Delivery, Work
from flowd.flows import FlowSet
from flowd.logs import get_logger
from flowd.models import ChangeEvent, Flow
from flowd.record import Claim, Recorder, execution_log
from flowd.rules.reltime import evaluated_at

log = get_logger()

RunStatus = Literal["SUCCESS", "FAILURE", "SKIPPED"]


@dataclass(frozen=True, slots=True)
class FlowRun:
    flow_id: int
    execution_id: int | None
    status: RunStatus


class Engine:
    """Handles events against the current flow set."""

    def __init__(
        self,
        flows: FlowSet,
        runner: ActionRunner,
        recorder: Recorder,
        *,
        own_writes: OwnWrites | None = None,
        max_chain_depth: int = 3,
    ) -> None:
        self.flows = flows
        self._runner = runner
        self._recorder = recorder
        self._own_writes = own_writes
        self._max_chain_depth = max_chain_depth
        self._identity_warned: set[tuple[str, str]] = set()

    def matching(self, event: ChangeEvent) -> tuple[Flow, ...]:
        """The flows this event matches, ascending id; warns once per table about identity.

        `now` in rules is read once for the event: the wall clock for a change, the
        tick's time for a SCHEDULE event (run again by `--failed`).
        """
        if event.type == "SCHEDULE":
            return self._matching_scheduled(event)
        with evaluated_at(datetime.now(UTC)):
            classification = self.flows.index.classify(event)
        table = (event.schema_name, event.table)
        if classification.needs_full_identity and table not in self._identity_warned:
            self._identity_warned.add(table)
            log.warning(
                "table.needs_replica_identity_full",
                table=f"{event.schema_name}.{event.table}",
                flow_ids=[flow.flow_id for flow in classification.needs_full_identity],
                fix=f"ALTER TABLE {quote_ident(event.schema_name)}.{quote_ident(event.table)}"
                " REPLICA IDENTITY FULL;",
            )
        return classification.flows

    def _matching_scheduled(self, event: ChangeEvent) -> tuple[Flow, ...]:
        stamp = event.commit_timestamp
        instant = datetime.fromisoformat(stamp) if stamp else datetime.now(UTC)
        with evaluated_at(instant):
            return tuple(
                scheduled.flow
                for _, scheduled in sorted(self.flows.schedules.items())
                if scheduled.flow.table_ref == (event.schema_name, event.table)
                and scheduled.compiled.evaluate(event)[0]
            )

    async def run_scheduled(self, flow: Flow, event: ChangeEvent) -> FlowRun:
        """Run `flow` for one row of its tick (the tick has already matched the row).

        Resumable: the tick's lease makes this worker the only one on its rows."""
        with _event_context(event):
            work = Work(event, EXTERNAL, Delivery.RESUMABLE, None)
            return await self._claim_and_run(self.flows, flow, work, EXTERNAL)

    async def handle(self, work: Work[object]) -> list[FlowRun]:
        """Run every matching flow for this event, once each, as its delivery says.

        Its `cause` says whether flowd's own write made the change (the durable log
        knows); without one, recent own writes are recognised by their values.
        """
        event, cause = work.event, work.cause
        with _event_context(event):
            flows = self.flows
            if cause is None:
                cause = self._own_writes.recognise(event) if self._own_writes else EXTERNAL
            matched = self.matching(event)
            log.debug(
                "event.classified",
                type=event.type,
                flow_ids=[f.flow_id for f in matched],
                chain_depth=cause.depth,
            )
            if matched and cause.depth > self._max_chain_depth:
                log.warning(
                    "flow.loop_detected",
                    chain_flow_ids=list(cause.flows),
                    flow_ids=[flow.flow_id for flow in matched],
                    depth=cause.depth,
                    max_chain_depth=self._max_chain_depth,
                )
                return []
            return [await self._claim_and_run(flows, flow, work, cause) for flow in matched]

    async def record_not_started(self, event: ChangeEvent, reason: str) -> None:
        """Record FAILURE for each flow this event matches, so `--failed` can run it later."""
        with _event_context(event):
            for flow in self.matching(event):
                execution_id = await self._recorder.claim(flow, event)
                if execution_id is not None:
                    await self._recorder.finish(execution_id, "FAILURE", reason, [])
                    log.warning("flow.not_started", flow_id=flow.flow_id, reason=reason)

    async def rerun(self, flow: Flow, event: ChangeEvent, execution_id: int) -> FlowRun:
        """Run a flow again under an execution already claimed (`--failed`)."""
        with _event_context(event):
            claim = Claim(execution_id)
            return await self._run(self.flows, flow, event, claim, EXTERNAL, Delivery.AT_MOST_ONCE)

    async def _claim_and_run(
        self, flows: FlowSet, flow: Flow, work: Work[object], cause: Cause
    ) -> FlowRun:
        event, delivery = work.event, work.delivery
        if not flows.actions[flow.flow_id] and not delivery.forced:
            return await self._record_without_actions(flow, event, delivery)
        claim: Claim | None
        if delivery.resumable:
            claim = await self._recorder.claim_durable(flow, event)
        else:
            execution_id = await self._recorder.claim(flow, event, force=delivery.forced)
            claim = Claim(execution_id) if execution_id is not None else None
        if claim is None:
            log.info("flow.already_ran", flow_id=flow.flow_id)
            return FlowRun(flow.flow_id, None, "SKIPPED")
        return await self._run(flows, flow, event, claim, cause, delivery)

    async def _record_without_actions(
        self, flow: Flow, event: ChangeEvent, delivery: Delivery
    ) -> FlowRun:
        """Nothing to run: the execution is written finished, in one write."""
        log_text = execution_log(flow, event, [])
        execution_id = await self._recorder.record_without_actions(
            flow, event, log_text, durable=delivery.resumable
        )
        if execution_id is None:
            log.info("flow.already_ran", flow_id=flow.flow_id)
            return FlowRun(flow.flow_id, None, "SKIPPED")
        log.info(
            "flow.executed",
            flow_id=flow.flow_id,
            execution_id=execution_id,
            status="SUCCESS",
            duration_ms=0,
        )
        return FlowRun(flow.flow_id, execution_id, "SUCCESS")

    async def _run(
        self,
        flows: FlowSet,
        flow: Flow,
        event: ChangeEvent,
        claim: Claim,
        cause: Cause,
        delivery: Delivery,
    ) -> FlowRun:
        execution_id = claim.execution_id
        with structlog.contextvars.bound_contextvars(
            flow_id=flow.flow_id, execution_id=execution_id
        ):
            async with self._runner.slots:  # held until the outcome is recorded
                self._recorder.acting.add(execution_id)
                started = time.monotonic()
                if claim.done:
                    log.info("flow.resumed", actions_done=len(claim.done))
                outcomes = await self._runner.run_flow(
                    flow,
                    flows.actions[flow.flow_id],
                    event,
                    self._remembering(cause, flow),
                    self._journal(claim, cause, flow, delivery),
                )
                status: Literal["SUCCESS", "FAILURE"] = (
                    "SUCCESS" if all(o.ok for o in outcomes) else "FAILURE"
                )
                # Shielded: a cancelled run (shutdown) must still leave its outcome behind.
                recorded = await asyncio.shield(
                    self._recorder.finish(
                        execution_id,
                        status,
                        execution_log(flow, event, outcomes),
                        outcomes,
                        run=claim.run if delivery.resumable else None,
                    )
                )
            if not recorded:
                raise ExecutionTakenOver()
            log.log(
                20 if status == "SUCCESS" else 40,
                "flow.executed",
                status=status,
                duration_ms=round((time.monotonic() - started) * 1000),
            )
            return FlowRun(flow.flow_id, execution_id, status)

    def _journal(
        self, claim: Claim, cause: Cause, flow: Flow, delivery: Delivery
    ) -> Journal | None:
        if not delivery.resumable:
            return None
        return self._recorder.journal(claim, cause.then(flow.flow_id))

    def _remembering(self, cause: Cause, flow: Flow) -> RowsWritten | None:
        own_writes = self._own_writes
        if own_writes is None:
            return None

        def remember(table: Table, columns: Sequence[str], rows: list[dict[str, Any]]) -> None:
            own_writes.remember(
                table.schema, table.name, table.primary_key, columns, rows, cause.then(flow.flow_id)
            )

        return remember


def _event_context(event: ChangeEvent) -> AbstractContextManager[None]:
    return structlog.contextvars.bound_contextvars(
        table=f"{event.schema_name}.{event.table}", event_key=event.key
    )
