"""Prometheus metrics: the metric objects, and how log events and received events feed them.

Outcomes (executions, action attempts, reloads, reconnects) are counted from the log
events that report them (`observe`, a structlog processor), so every event source is
counted alike without the engine knowing about metrics. Labels stay bounded: flow ids,
action types and outcomes, never row ids, URLs or event keys.
"""

from __future__ import annotations

import time
from datetime import datetime

import prometheus_client
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from structlog.typing import EventDict, WrappedLogger

# `_created` series double the output and no dashboard of ours reads them.
# prometheus_client leaves this function unannotated.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)

_SECONDS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

EVENTS_RECEIVED = Counter(
    "flowd_events_received", "Change events received from the event source", registry=REGISTRY
)
EVENT_LAG = Histogram(
    "flowd_event_lag_seconds",
    "Time from the change's commit to its arrival at flowd",
    buckets=_SECONDS,
    registry=REGISTRY,
)
EXECUTIONS = Counter(
    "flowd_executions",
    "Flow executions by flow and outcome (SUCCESS, FAILURE, already_ran, not_started)",
    ["flow_id", "outcome"],
    registry=REGISTRY,
)
ACTIONS = Counter(
    "flowd_actions",
    "Actions run, by type and outcome",
    ["action_type", "outcome"],
    registry=REGISTRY,
)
ACTION_ATTEMPTS = Counter(
    "flowd_action_attempts",
    "Tries of actions, retries included",
    ["action_type"],
    registry=REGISTRY,
)
ACTION_DURATION = Histogram(
    "flowd_action_duration_seconds",
    "Time an action took, all its tries and pauses included",
    ["action_type"],
    buckets=_SECONDS,
    registry=REGISTRY,
)
QUEUE_DEPTH = Gauge("flowd_queue_depth", "Events accepted and not yet finished", registry=REGISTRY)
REALTIME_CONNECTED = Gauge(
    "flowd_realtime_connected", "1 while the Realtime subscription is live", registry=REGISTRY
)
REALTIME_RECONNECTS = Counter(
    "flowd_realtime_reconnects", "Realtime connections rebuilt after a failure", registry=REGISTRY
)
CONFIG_RELOADS = Counter(
    "flowd_config_reloads",
    "Flow set reloads that changed the flows (applied) or failed",
    ["outcome"],
    registry=REGISTRY,
)


def event_received(commit_timestamp: str | None) -> None:
    """Count a received change; its lag is now minus its commit time, when it has one."""
    EVENTS_RECEIVED.inc()
    if not commit_timestamp:
        return
    try:
        committed = datetime.fromisoformat(commit_timestamp)
    except ValueError:
        return
    if committed.tzinfo is not None:
        EVENT_LAG.observe(max(0.0, time.time() - committed.timestamp()))


def observe(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """structlog processor: count the outcomes that log events report."""
    event = event_dict.get("event")
    if event == "flow.executed":
        _execution(event_dict, str(event_dict.get("status")))
    elif event == "flow.already_ran":
        _execution(event_dict, "already_ran")
    elif event == "flow.not_started":
        _execution(event_dict, "not_started")
    elif event in ("action.finished", "action.failed"):
        action_type = str(event_dict.get("action_type", "unknown"))
        outcome = "success" if event == "action.finished" else "failure"
        ACTIONS.labels(action_type, outcome).inc()
        ACTION_ATTEMPTS.labels(action_type).inc(_number(event_dict.get("attempt"), 1))
        ACTION_DURATION.labels(action_type).observe(_number(event_dict.get("duration_ms")) / 1000)
    elif event == "realtime.rebuilding":
        REALTIME_RECONNECTS.inc()
    elif event == "flows.reloaded":
        CONFIG_RELOADS.labels("applied").inc()
    elif event == "flows.reload_failed":
        CONFIG_RELOADS.labels("failed").inc()
    return event_dict


def _execution(event_dict: EventDict, outcome: str) -> None:
    EXECUTIONS.labels(str(event_dict.get("flow_id", "unknown")), outcome).inc()


def _number(value: object, default: float = 0.0) -> float:
    return float(value) if isinstance(value, int | float) else default


def exposition() -> tuple[bytes, str]:
    """The current metrics in Prometheus' text format, and its content type."""
    return prometheus_client.generate_latest(REGISTRY), prometheus_client.CONTENT_TYPE_LATEST
