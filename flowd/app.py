"""The services a command needs, opened together and closed together.

`open_app` builds the secrets (and the log redaction that hides them), the database
pool and catalog when the command needs a database, the shared HTTP client, and the
action runner and recorder on top of them.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import asyncpg

from flowd import flows as flow_store
from flowd import logs
from flowd.act import ActionRunner, http
from flowd.act.addresses import policy_of
from flowd.act.sandbox import TemplateSandbox
from flowd.catalog import Catalog
from flowd.chain import OwnWrites
from flowd.config import Settings
from flowd.db import create_pool
from flowd.engine import Engine
from flowd.outage import Availability
from flowd.policy import TablePolicy
from flowd.record import Recorder
from flowd.secrets import Secrets

_PROBE_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class App:
    settings: Settings
    secrets: Secrets
    http: aiohttp.ClientSession
    pool: asyncpg.Pool | None
    runner: ActionRunner
    execution_log: Recorder | None  # None without a database
    available: Availability  # whether the database is there right now
    database_flows: flow_store.DatabaseFlows = field(default_factory=flow_store.DatabaseFlows)

    @property
    def database(self) -> asyncpg.Pool:
        assert self.pool is not None, "this command was opened without a database"
        return self.pool

    @property
    def catalog(self) -> Catalog | None:
        return Catalog(self.pool) if self.pool is not None else None

    async def flow_definitions(self, flows_file: str | None = None) -> list[flow_store.Loaded]:
        """Every flow as written: from a flows file, else from the database."""
        if flows_file is not None:
            loaded = flow_store.load_from_file(Path(flows_file))
            if self.pool is None:
                return loaded
            return await flow_store.with_stored_ids(loaded, self.pool, self.settings.schema_name)
        return await self.database_flows.load(self.database, self.settings.schema_name)

    async def load_flows(
        self, flows_file: str | None = None, previous: flow_store.FlowSet | None = None
    ) -> flow_store.FlowSet:
        """The flows that run, prepared (see `flows.prepare`)."""
        return await flow_store.prepare(
            await self.flow_definitions(flows_file),
            self.catalog,
            previous,
            TablePolicy.from_settings(self.settings),
        )

    def engine(
        self,
        flows: flow_store.FlowSet,
        *,
        own_writes: OwnWrites | None = None,
    ) -> Engine:
        """An engine on these flows with this app's actions, execution log and settings."""
        return Engine(
            flows,
            self.runner,
            self.recorder,
            own_writes=own_writes,
            max_chain_depth=self.settings.max_chain_depth,
        )

    @property
    def recorder(self) -> Recorder:
        assert self.execution_log is not None, "this command was opened without a database"
        return self.execution_log


def load_secrets(settings: Settings) -> Secrets:
    """Template secrets plus flowd's own credentials, all of them redacted from logs."""
    own = []
    if settings.supabase_service_role_key is not None:
        own.append(settings.supabase_service_role_key.get_secret_value())
    if settings.database_url is not None:
        password = urlsplit(settings.database_url.get_secret_value()).password
        own += [password] if password else []
    return Secrets.from_environment(extra=own)


def configure_logging(settings: Settings, secrets: Secrets, *, to_stderr: bool = False) -> None:
    logs.configure(
        level=settings.log_level,
        log_format=settings.log_format,
        redact=secrets.redact,
        stream=sys.stderr if to_stderr else sys.stdout,
    )


@asynccontextmanager
async def open_app(settings: Settings, secrets: Secrets, *, database: bool) -> AsyncIterator[App]:
    pool = await create_pool(settings) if database else None
    templates = TemplateSandbox.from_settings(settings)
    available = Availability(lambda: _answers(pool))
    try:
        async with http.open_session(policy_of(settings)) as client:
            runner = ActionRunner(
                settings=settings,
                secrets=secrets,
                http_client=client,
                pool=pool,
                templates=templates,
                available=available,
            )
            recorder = (
                Recorder(
                    pool,
                    settings.schema_name,
                    secrets.redact,
                    available,
                    abandoned_after_s=settings.abandoned_after_s,
                )
                if pool is not None
                else None
            )
            yield App(settings, secrets, client, pool, runner, recorder, available)
    finally:
        await templates.close()
        if pool is not None:
            await pool.close()


async def _answers(pool: asyncpg.Pool | None) -> None:
    """The outage probe: the database answers a query within a few seconds."""
    if pool is not None:
        await asyncio.wait_for(pool.fetchval("SELECT 1"), _PROBE_TIMEOUT_S)
