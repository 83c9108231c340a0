"""The webhook receiver of the daemon benchmarks, run as its own process.

Answers every HTTP/1.1 request with 200 (keep-alive) and notes the wall-clock time the
request was complete, under the `id` of its JSON body. Prints its port first; on each
`dump` line read from stdin it prints the arrivals since the last dump as one JSON
object; exits when stdin closes.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

_REPLY = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
arrivals: dict[int, float] = {}


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            body = await reader.readexactly(length)
            arrivals[int(json.loads(body)["id"])] = time.time()
            writer.write(_REPLY)
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()
    except asyncio.CancelledError:
        pass  # the connection's own task, cancelled at exit: nothing to report


async def _main() -> None:
    server = await asyncio.start_server(_serve, "127.0.0.1", 0, backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)
    loop = asyncio.get_running_loop()
    while await loop.run_in_executor(None, sys.stdin.readline):
        print(json.dumps(arrivals), flush=True)
        arrivals.clear()
    server.close()


if __name__ == "__main__":
    asyncio.run(_main())
