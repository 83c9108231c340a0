"""Cron: when a scheduled flow is due. Parsing, next and missed instants.

Pure: the clock the scheduler reads and sleeps on is `flowd.feeds.schedule.Clock`.
Instants are aware datetimes; a schedule's expression is read in its time zone
(`schedule_tz`, UTC by default) and its instants are handed out in UTC.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from flowd.errors import FlowDefinitionError
from flowd.models import Flow

if TYPE_CHECKING:
    from croniter import croniter

MAX_COUNTED = 10_000  # missed ticks are counted up to this many (a log line, not a loop)


@dataclass(frozen=True, slots=True)
class Schedule:
    """A checked five-field cron expression in its time zone."""

    expression: str
    zone: ZoneInfo

    def next_after(self, instant: datetime) -> datetime:
        """The first due instant strictly after `instant`."""
        due: datetime = _croniter(self.expression, instant.astimezone(self.zone)).get_next(datetime)
        return due.astimezone(UTC)

    def last_due(self, after: datetime, now: datetime) -> tuple[datetime | None, int]:
        """The latest due instant in (after, now], and how many fell in that span.

        The count stops at MAX_COUNTED; the latest instant is exact all the same.
        """
        first = self.next_after(after)
        if first > now:
            return None, 0
        latest: datetime = _croniter(self.expression, now.astimezone(self.zone)).get_prev(datetime)
        latest = latest.astimezone(UTC)
        if self.next_after(latest) <= now:  # `now` is itself due (get_prev is strictly before)
            latest = self.next_after(latest)
        count, due = 1, first
        while due < latest and count < MAX_COUNTED:
            due = self.next_after(due)
            count += 1
        return latest, count


def parse_schedule(expression: str | None, zone: str | None) -> Schedule:
    """The schedule, or ValueError with the sentence users read."""
    if expression is None or not expression.strip():
        raise ValueError("a SCHEDULE flow needs a cron expression in `schedule`")
    fields = expression.split()
    if len(fields) != 5:
        raise ValueError(
            f"{expression!r} is not a cron expression of five fields"
            " (minute hour day-of-month month day-of-week), such as '0 8 * * *'"
        )
    from croniter import CroniterError

    try:
        _croniter(" ".join(fields))
    except (CroniterError, ValueError) as exc:
        raise ValueError(f"{expression!r} is not a valid cron expression: {exc}") from None
    try:
        time_zone = ZoneInfo(zone or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"schedule_tz {zone!r} is not a time zone (write an IANA name such as Europe/Paris)"
        ) from None
    return Schedule(" ".join(fields), time_zone)


def _croniter(expression: str, start: datetime | None = None) -> croniter:
    # Imported here: croniter and dateutil take a megabyte that only scheduled flows need.
    from croniter import croniter

    return croniter(expression, start)


def schedule_of(flow: Flow) -> Schedule:
    """The flow's schedule; FlowDefinitionError when it cannot work."""
    try:
        return parse_schedule(flow.schedule, flow.schedule_tz)
    except ValueError as exc:
        raise FlowDefinitionError(flow.flow_id, "schedule", str(exc)) from None
