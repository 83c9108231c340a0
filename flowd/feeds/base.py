"""What a feed is to the daemon: the `Feed` protocol, the `Work` it hands over, its `Delivery`.

A feed takes events from somewhere (Supabase Realtime, the event log) and puts each into
the daemon's pipeline as `Work`. The daemon runs the work through the engine and tells the
feed how it went (`handled`, `failed`); the feed accounts for it in its own terms (a mark
in the event log, a FAILURE recorded for what was cut short). The `Delivery` says what the
engine promises for the work: the feed knows, the engine obeys.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable, Coroutine, Hashable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from flowd.chain import Cause
from flowd.models import ChangeEvent

if TYPE_CHECKING:
    from flowd.flows import FlowSet
    from flowd.ops.health import Health

Handle = TypeVar("Handle")
Handle_co = TypeVar("Handle_co", covariant=True)
Handle_contra = TypeVar("Handle_contra", contravariant=True)


class Delivery(enum.Enum):
    """What the engine promises for one event."""

    AT_MOST_ONCE = "at most once"  # claimed once; a run cut short is recorded FAILURE
    RESUMABLE = "resumable"  # the feed's lease makes this worker the only one: a run left
    # RUNNING is resumed where it stopped, and every action is journalled as it finishes
    FORCED = "forced"  # run again even if it ran before (`--once --force`)

    @property
    def resumable(self) -> bool:
        return self is Delivery.RESUMABLE

    @property
    def forced(self) -> bool:
        return self is Delivery.FORCED


@dataclass(frozen=True, slots=True)
class Work(Generic[Handle_co]):
    """One event to handle: the change, who caused it (None: recognise by its values),
    the delivery it gets, and the feed's own handle on it (say, the event log's row)."""

    event: ChangeEvent
    cause: Cause | None
    delivery: Delivery
    handle: Handle_co


SideTasks = Mapping[str, Coroutine[Any, Any, None]]  # by task name


class Intake(Protocol[Handle_contra]):
    """What a feed sees of the daemon: where work goes, and when to stop."""

    stopping: asyncio.Event

    @property
    def held(self) -> int:
        """Work accepted and not yet finished."""

    async def room(self) -> None:
        """Wait until the pipeline has room for more work."""

    async def idle(self) -> None:
        """Wait until every piece of work accepted has finished."""

    def put(self, work: Work[Handle_contra]) -> None:
        """Accept work (never blocks: call `room()` first)."""

    def reload(self) -> None:
        """The flows may have changed: read them again soon."""


class Feed(Protocol[Handle]):
    """An event source, as the daemon drives it (see `flowd.daemon.Daemon`)."""

    name: str  # of its task, as `daemon.task_died` names it

    async def start(self, flow_set: FlowSet, intake: Intake[Handle]) -> None:
        """Prepare for these flows (before any task runs)."""

    async def run(self) -> None:
        """Put work into the intake (respecting its room) until it says stop."""

    def row_key(self, work: Work[Handle]) -> Hashable:
        """Work on one row shares a key, so it runs in order."""

    async def handled(self, work: Work[Handle], done: bool) -> None:
        """The engine finished the work (`done`), or it is no longer this worker's."""

    async def failed(self, work: Work[Handle], error: Exception) -> None:
        """The engine raised: account for it, or raise to count the work crashed."""

    async def still_ours(self, work: Work[Handle]) -> bool:
        """After an outage: may this process still work on it?"""

    async def flows_changed(self, flow_set: FlowSet) -> None:
        """The flows were reloaded: follow their tables."""

    def reload_signalled(self) -> None:
        """SIGHUP: the operator asks for a reload (and a retry of what was refused)."""

    def watch_health(self, health: Health) -> None:
        """Add the feed's readiness checks and gauges."""

    def side_tasks(self) -> SideTasks:
        """Tasks of the feed's own that live as long as the daemon."""

    def channels(self) -> Mapping[str, Callable[[], None]]:
        """Database notices the feed wants to hear of: channel → what a notice does
        (a wake-up only; the daemon's listener calls it on the event loop)."""

    async def finish(self, unfinished: list[Work[Handle]]) -> None:
        """After the drain: account for what was cut short or never started."""
