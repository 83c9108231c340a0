"""The pipeline benchmark's baseline, run as its own process: a plain durable forwarder.

What a hand-written relay from the same event log to a webhook does, and nothing more:
LISTEN `flowd_events`, take the pending rows of `flow_events` (a claim, as flowd's),
POST each new record's `id` with aiohttp (flowd's HTTP client), all of a batch at once,
and mark them handled.
No flows, no classification, no execution records, no leases.
Usage: `python -m bench.forwarder DATABASE_URL RECEIVER_URL`; runs until killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys

import aiohttp
import asyncpg

_CLAIM = """
UPDATE flow_events SET claims = claims + 1, worker = 'forwarder'
WHERE event_id IN (SELECT event_id FROM flow_events WHERE handled_at IS NULL AND worker IS NULL
                   ORDER BY event_id LIMIT 100 FOR UPDATE SKIP LOCKED)
RETURNING event_id, record ->> 'id' AS id
"""


async def _post(client: aiohttp.ClientSession, target: str, row_id: str) -> None:
    async with client.post(target, json={"id": row_id}) as response:
        await response.read()


async def _main(database_url: str, target: str) -> None:
    wake = asyncio.Event()
    listener = await asyncpg.connect(database_url)
    await listener.add_listener("flowd_events", lambda *_: wake.set())
    connection = await asyncpg.connect(database_url)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=16)) as client:
        while True:
            wake.clear()
            rows = await connection.fetch(_CLAIM)
            if not rows:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), 1.0)
                continue
            await asyncio.gather(*(_post(client, target, row["id"]) for row in rows))
            await connection.execute(
                "UPDATE flow_events SET handled_at = now() WHERE event_id = ANY($1::bigint[])",
                [row["event_id"] for row in rows],
            )


if __name__ == "__main__":
    asyncio.run(_main(sys.argv[1], sys.argv[2]))
