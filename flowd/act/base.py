"""What every action kind is, and what the runner hands it.

An `ActionKind` knows its config model, what it needs (a database, Supabase), how to
check an action when flows are loaded, and how to make one attempt of an action whose
config was rendered for the event. `ActionRunner` (`flowd.act.runner`) owns what every
kind shares: rendering, retries, the journal of a durable execution, outcomes and logs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import aiohttp
import asyncpg
from pydantic import BaseModel, ConfigDict

from flowd.catalog import Catalog, Table
from flowd.config import Settings
from flowd.db import Connection
from flowd.models import Action, ActionOutcome, ChangeEvent, Flow
from flowd.outage import Availability
from flowd.policy import TablePolicy

RowsWritten = Callable[[Table, Sequence[str], list[dict[str, Any]]], None]


class ActionConfig(BaseModel):
    """An action's `config`, parsed. `templated` names the fields rendered for each event."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    templated: ClassVar[tuple[str, ...]] = ()


ConfigT = TypeVar("ConfigT", bound=ActionConfig)

# What the load-time check found: the table a kind writes (from the catalog), and why
# the action cannot work (None if it can).
Checked = tuple[Table | None, str | None]


class Journal(Protocol):
    """A durable execution: what an earlier run finished, and how to record each action."""

    @property
    def done(self) -> tuple[ActionOutcome, ...]: ...

    @property
    def cause(self) -> str:
        """JSON; set as `flowd.cause` where a DB_UPDATE writes, for the capture trigger."""
        ...

    async def record(
        self, index: int, outcome: ActionOutcome, connection: Connection | None
    ) -> bool:
        """Record action number `index` (from 0) as finished, on `connection` (inside its
        transaction) when given; False when another run recorded that action first."""
        ...


@dataclass(frozen=True, slots=True)
class Done:
    """What one successful attempt did."""

    http_status: int | None = None
    rows_written: int | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)  # what a DB_UPDATE wrote
    outcome: ActionOutcome | None = None  # already recorded with the write (durable DB_UPDATE)


@dataclass(frozen=True, slots=True)
class Tools:
    """What the runner shares with every attempt: settings, HTTP client, database."""

    settings: Settings
    http: aiohttp.ClientSession
    pool: asyncpg.Pool | None
    available: Availability


@dataclass(frozen=True, slots=True)
class PreparedAction(Generic[ConfigT]):
    """An action checked when its flow was loaded, with its parsed config and its kind."""

    action: Action
    config: ConfigT
    kind: ActionKind[ConfigT]
    table: Table | None = None  # the table it writes, from the catalog (DB_UPDATE)


@dataclass(frozen=True, slots=True)
class Step:
    """One action of one flow run for one event, as an attempt of its kind sees it."""

    flow: Flow
    event: ChangeEvent
    prepared: PreparedAction[Any]
    index: int  # its place in the flow, from 0
    journal: Journal | None
    on_written: RowsWritten | None
    tools: Tools
    outcome: Callable[[Done], ActionOutcome]  # the outcome of the current attempt, had it done that


class ActionKind(Protocol[ConfigT]):
    """One action type (API_CALL, …); registered by name in `flowd.act.registry.KINDS`."""

    @property
    def config_model(self) -> type[ConfigT]: ...

    @property
    def needs_database(self) -> bool:
        """It writes the database: checked against the catalog and the write policy, and
        checked again at each reload (the table, or where it may write, may have changed)."""
        ...

    @property
    def needs_supabase(self) -> bool:
        """It calls Supabase: SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY must be set."""
        ...

    @property
    def journalled_with_write(self) -> bool:
        """Its attempt records its journal entry in the transaction of its own write."""
        ...

    async def check(
        self, config: ConfigT, flow: Flow, catalog: Catalog | None, policy: TablePolicy | None
    ) -> Checked:
        """The load-time check, after the config parsed and its templates compiled."""
        ...

    def settings_problem(self, written: Mapping[str, Any], settings: Settings) -> str | None:
        """Why the action as written (its raw config) cannot work with these settings
        (`flowd validate`), or None."""
        ...

    async def attempt(self, config: ConfigT, step: Step) -> Done:
        """One try with `config` rendered for the event; raise an ActionError on failure."""
        ...
