"""`flowd migrate`: apply flowd's migrations to DATABASE_URL."""

from __future__ import annotations

from flowd.app import open_app
from flowd.config import Settings
from flowd.migrate import migrate
from flowd.secrets import Secrets


async def main(settings: Settings, secrets: Secrets) -> int:
    async with open_app(settings, secrets, database=True) as app, app.database.acquire() as conn:
        applied = await migrate(conn, settings.schema_name)
    print(
        f"flowd: {len(applied)} migration(s) applied"
        + (": " + ", ".join(applied) if applied else "")
    )
    return 0
