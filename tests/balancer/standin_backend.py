"""A stand-in wsd backend for the balancer tests: `/healthz`, a `/ws` that says which backend it is
and echoes, and a drain switch (SIGUSR1) that answers 503 and closes its clients over a window.

Usage: python standin_backend.py NAME HOST PORT DRAIN_WINDOW_S
"""

from __future__ import annotations

import asyncio
import http
import json
import signal
import sys

from websockets.asyncio.server import serve
from websockets.datastructures import Headers
from websockets.http11 import Response


async def main(name: str, host: str, port: int, drain_window_s: float) -> None:
    draining = asyncio.Event()
    clients: set = set()

    def respond(status: http.HTTPStatus, body: bytes) -> Response:
        headers = Headers([("Content-Type", "text/plain"), ("Content-Length", str(len(body))),
                           ("X-Wsd-Clients", str(len(clients)))])
        return Response(status.value, status.phrase, headers, body)

    def process_request(connection, request):
        if request.path == "/healthz":
            return respond(http.HTTPStatus.SERVICE_UNAVAILABLE, b"draining\n") if draining.is_set() else respond(
                http.HTTPStatus.OK, b"ok\n")
        if draining.is_set():
            return respond(http.HTTPStatus.SERVICE_UNAVAILABLE, b"draining\n")
        return None

    async def handler(connection):
        clients.add(connection)
        try:
            await connection.send(json.dumps({"op": "hello", "backend": name}))
            async for message in connection:
                await connection.send(message)
        except Exception:
            pass
        finally:
            clients.discard(connection)

    async def drain() -> None:
        draining.set()
        remaining = list(clients)
        pause = drain_window_s / max(len(remaining), 1)
        for connection in remaining:
            await connection.close(1001, "draining")
            await asyncio.sleep(pause)

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, lambda: loop.create_task(drain()))
    async with serve(handler, host, port, process_request=process_request, ping_interval=None,
                     reuse_address=True, backlog=4096):
        print("ready", flush=True)
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])))
