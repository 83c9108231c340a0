"""Scheduled flows, the pure parts: cron instants, missed-tick collapse, relative time,
the SCHEDULE event key, refusals, and that a SCHEDULE flow is never a Realtime binding."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from structlog.testing import capture_logs

from flowd.cli import parse_args
from flowd.errors import ConfigurationError, FlowDefinitionError
from flowd.flows import prepare
from flowd.models import ChangeEvent, Flow, Rule, parse_flow
from flowd.rules import check_rule_against_columns, compile_flow
from flowd.rules.cron import parse_schedule, schedule_of
from flowd.rules.reltime import evaluated_at, parse_relative


def at(hour: int, minute: int, second: int = 0, day: int = 1) -> datetime:
    return datetime(2026, 1, day, hour, minute, second, tzinfo=UTC)


def scheduled_flow(**fields: Any) -> Flow:
    base: dict[str, Any] = {
        "flow_id": 7,
        "name": "overdue",
        "trigger_table": "tasks",
        "trigger_event": "SCHEDULE",
        "schedule": "*/5 * * * *",
    }
    return parse_flow(base | fields)


def test_every_five_minutes_is_due_at_the_right_instants() -> None:
    """`*/5 * * * *` from 09:02 falls due at 09:05, 09:10, 09:15; never in between."""
    schedule = parse_schedule("*/5 * * * *", None)
    instants, instant = [], at(9, 2)
    for _ in range(3):
        instant = schedule.next_after(instant)
        instants.append(instant)
    assert instants == [at(9, 5), at(9, 10), at(9, 15)]
    assert schedule.last_due(at(9, 0), at(9, 4, 59)) == (None, 0)
    assert schedule.last_due(at(9, 0), at(9, 5)) == (at(9, 5), 1)  # due at the very instant


def test_missed_ticks_collapse_to_the_latest_one() -> None:
    """Down from 09:00 to 09:31: six ticks fell due; the latest (09:30) is the one to run."""
    schedule = parse_schedule("*/5 * * * *", None)
    assert schedule.last_due(at(9, 0), at(9, 31)) == (at(9, 30), 6)


def test_a_schedule_is_read_in_its_time_zone() -> None:
    """08:00 in Paris is 07:00 UTC in winter and 06:00 UTC in summer."""
    schedule = parse_schedule("0 8 * * *", "Europe/Paris")
    assert schedule.next_after(at(0, 0)) == at(7, 0)
    summer = datetime(2026, 7, 1, tzinfo=UTC)
    assert schedule.next_after(summer) == datetime(2026, 7, 1, 6, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("expression", "zone", "reason"),
    [
        ("61 * * * *", None, "is not a valid cron expression"),
        ("* * * *", None, "is not a cron expression of five fields"),
        ("0 0 * * * *", None, "is not a cron expression of five fields"),
        ("@daily", None, "is not a cron expression of five fields"),
        (None, None, "needs a cron expression"),
        ("0 8 * * *", "Mars/Olympus", "is not a time zone"),
    ],
)
def test_a_bad_schedule_is_refused_with_a_clear_error(
    expression: str | None, zone: str | None, reason: str
) -> None:
    with pytest.raises(FlowDefinitionError) as raised:
        schedule_of(scheduled_flow(schedule=expression, schedule_tz=zone))
    assert (raised.value.flow_id, raised.value.where) == (7, "schedule")
    assert reason in raised.value.reason


async def test_loading_refuses_a_bad_schedule_and_keeps_the_others() -> None:
    """flow.refused names the flow and `schedule`; a good SCHEDULE flow runs, but is no
    Realtime binding (nor capture table): only change flows are."""
    change = Flow(flow_id=1, name="change", trigger_table="tasks", trigger_event="INSERT")
    good = scheduled_flow(flow_id=2, trigger_table="projects")
    bad = scheduled_flow(flow_id=3, schedule="every morning")
    with capture_logs() as logs:
        flow_set = await prepare([change, good, bad], None)
    [refused] = [log for log in logs if log["event"] == "flow.refused"]
    assert (refused["flow_id"], refused["where"]) == (3, "schedule")
    assert set(flow_set.schedules) == {2}
    assert flow_set.index.bindings() == {("public", "tasks", "INSERT")}
    assert set(flow_set.by_id) == {1, 2}


@pytest.mark.parametrize(
    ("text", "offset"),
    [
        ("now", timedelta(0)),
        (" NOW ", timedelta(0)),
        ("now-7d", timedelta(days=-7)),
        ("now - 1d", timedelta(days=-1)),
        ("now+2h", timedelta(hours=2)),
        ("now-30m", timedelta(minutes=-30)),
        ("now-45s", timedelta(seconds=-45)),
        ("now-7w", None),
        ("nowhere", None),
        ("2026-01-01", None),
    ],
)
def test_relative_time_values(text: str, offset: timedelta | None) -> None:
    assert parse_relative(text) == offset


def _task(due_at: str) -> ChangeEvent:
    return ChangeEvent.model_validate(
        {
            "schema": "public",
            "table": "tasks",
            "type": "SCHEDULE",
            "commit_timestamp": "2026-01-10T09:00:00.000Z",
            "columns": [{"name": "id", "type": "int8"}, {"name": "due_at", "type": "timestamptz"}],
            "record": {"id": 1, "due_at": due_at},
            "primary_key": ["id"],
        }
    )


def test_now_minus_one_day_is_read_when_the_event_is_classified() -> None:
    """`due_at > now-1d` and `due_at < now` hold for a row due 12 h before `now`, whatever
    the wall clock: `now` is the evaluation time, not the time the rule was compiled."""
    flow = scheduled_flow(
        rules=[
            Rule(field="due_at", operator=">", value="now-1d"),
            Rule(field="due_at", operator="<", value="now"),
        ]
    )
    compiled = compile_flow(flow)
    tick = datetime(2026, 1, 10, 9, 0, tzinfo=UTC)
    with evaluated_at(tick):
        assert compiled.evaluate(_task("2026-01-09T21:00:00+00:00"))[0]
        assert not compiled.evaluate(_task("2026-01-08T09:00:00+00:00"))[0]  # two days before
        assert not compiled.evaluate(_task("2026-01-10T10:00:00+00:00"))[0]  # not due yet
    with evaluated_at(tick + timedelta(days=2)):
        assert not compiled.evaluate(_task("2026-01-09T21:00:00+00:00"))[0]


def test_validate_accepts_relative_time_only_for_ordering() -> None:
    columns = {"due_at": "timestamptz", "title": "text"}
    assert (
        check_rule_against_columns(Rule(field="due_at", operator="<", value="now-7d"), columns)
        is None
    )
    problem = check_rule_against_columns(Rule(field="due_at", operator="=", value="now"), columns)
    assert problem is not None
    assert "only works with <, >, <= and >=" in problem


def test_a_schedule_event_key_is_its_tick_and_its_row_key() -> None:
    """The same row in the same tick keeps its key even when its other columns changed;
    another tick, or another row, has another key."""
    event = _task("2026-01-09T21:00:00+00:00")

    def variant(**fields: Any) -> ChangeEvent:
        return ChangeEvent.model_validate(event.to_wire() | fields)

    assert variant(record={"id": 1, "due_at": None}).key == event.key
    later = variant(commit_timestamp="2026-01-10T09:05:00.000Z")
    other_row = variant(record={"id": 2, "due_at": "2026-01-09T21:00:00+00:00"})
    assert len({event.key, later.key, other_row.key}) == 3


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--schedule", "3"], "--schedule needs --once"),
        (["--once", "--schedule", "3", "--events", "f"], "does not go with --events or --failed"),
        (["--once", "--schedule", "3", "--failed"], "does not go with --events or --failed"),
        (["--once", "--schedule", "3", "--dry-run"], "go with --events FILE"),
    ],
)
def test_schedule_flag_goes_with_once_only(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        parse_args(argv)
    assert message in str(raised.value)
