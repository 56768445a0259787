"""How often a `wss://` connect fails with each client: websockets' sync client (a reading thread
beside the caller's writes on one ssl.SSLSocket) and tests/tls_websocket.py (one thread), against
`wsd serve` with TLS and against a plain websockets asyncio server (no uvloop, no picows). This
measured the race behind tests/tls_websocket.py:

    python -m tests.tls_client_race --connects 4000

Each connect subscribes and waits for the `ok` (against wsd) or an echo; a failure prints its
index, the time and the exception. Bounded: at most --connects per client and server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import ssl
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from websockets.sync.client import connect as sync_connect

from harness.wsd_process import WsdProcess
from tests import auth_material
from tests.tls_websocket import TlsWebSocket


def count_failures(name: str, connects: int, attempt: Callable[[], None]) -> int:
    failures = 0
    started = time.monotonic()
    for index in range(connects):
        try:
            attempt()
        except Exception as exc:  # noqa: BLE001 - every failure is counted and shown
            failures += 1
            elapsed = time.monotonic() - started
            print(f"  {name}: connect {index} failed at {elapsed:.1f} s: {exc!r} ({exc.__cause__!r})")
    print(f"{name}: {failures} of {connects} connects failed ({time.monotonic() - started:.1f} s)")
    return failures


def _echo_server(cert: str, key: str, ports: multiprocessing.Queue) -> None:
    from websockets.asyncio.server import serve

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)

    async def echo(ws) -> None:
        async for message in ws:
            await ws.send(message)

    async def main() -> None:
        async with serve(echo, "127.0.0.1", 0, ssl=context) as server:
            ports.put(server.sockets[0].getsockname()[1])
            await asyncio.Future()

    asyncio.run(main())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connects", type=int, default=4000, help="per client and server (default 4000)")
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="wsd-tls-race-"))
    key = auth_material.ec_private_key()
    certificate = auth_material.self_signed_certificate(key, "localhost")
    cert = auth_material.write(directory / "cert.pem", auth_material.certificate_pem(certificate))
    private = auth_material.write(directory / "key.pem", auth_material.private_pem(key))
    context = ssl.create_default_context(cadata=auth_material.certificate_pem(certificate).decode())
    subscribe = json.dumps({"op": "sub", "ch": "news", "id": 1})

    server = WsdProcess(directory / "wsd", workers=2, flags=["--tls-cert", cert, "--tls-key", private])
    server.ws_ssl = context
    server.start()
    try:

        def wsd_sync() -> None:
            with sync_connect(server.url, ssl=context, open_timeout=10) as ws:
                ws.send(subscribe)
                ws.recv(timeout=10)

        def wsd_one_thread() -> None:
            with TlsWebSocket(server.url, context) as ws:
                ws.send(subscribe)
                ws.recv(timeout=10)

        count_failures("wsd, websockets sync client", args.connects, wsd_sync)
        count_failures("wsd, tests/tls_websocket.py", args.connects, wsd_one_thread)
    finally:
        server.kill()

    ports: multiprocessing.Queue = multiprocessing.Queue()
    echo = multiprocessing.Process(target=_echo_server, args=(cert, private, ports), daemon=True)
    echo.start()
    try:
        url = f"wss://127.0.0.1:{ports.get(timeout=30)}/"

        def plain_sync() -> None:
            with sync_connect(url, ssl=context, server_hostname="localhost", open_timeout=10) as ws:
                ws.send("x")
                ws.recv(timeout=10)

        count_failures("websockets asyncio server, websockets sync client", args.connects, plain_sync)
    finally:
        echo.kill()


if __name__ == "__main__":
    main()
