"""flowd's tables as the migrations leave them: row-level security, cascades."""

from __future__ import annotations

import asyncpg

from tests.support.flows import add_flow


async def test_rls_hides_flows_from_api_roles(db: asyncpg.Connection) -> None:
    """With RLS on and no policy, a role like Supabase's `anon` sees no flow even when granted."""
    await add_flow(db, actions=[("API_CALL", {"url": "https://hooks.example/secret-token"})])
    await db.execute("CREATE ROLE anon_test NOLOGIN")
    await db.execute("GRANT SELECT ON flows, actions TO anon_test")
    async with db.transaction():
        await db.execute("SET LOCAL ROLE anon_test")
        assert await db.fetchval("SELECT count(*) FROM actions") == 0
        assert await db.fetchval("SELECT count(*) FROM flows") == 0
    await db.execute("DROP OWNED BY anon_test")
    await db.execute("DROP ROLE anon_test")


async def test_deleting_a_flow_cascades(db: asyncpg.Connection) -> None:
    """Deleting a flow removes its rules, actions and executions."""
    flow_id = await add_flow(
        db, rules=[("priority", "=", "high")], actions=[("API_CALL", {"url": "http://x"})]
    )
    await db.execute(
        "INSERT INTO flow_executions (flow_id, event_key, event) VALUES ($1, 'k', '{}')", flow_id
    )
    await db.execute("DELETE FROM flows WHERE flow_id = $1", flow_id)
    for table in ("rules", "actions", "flow_executions"):
        assert await db.fetchval(f"SELECT count(*) FROM {table}") == 0
