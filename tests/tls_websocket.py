"""A blocking `wss://` client for tests, without the thread race of websockets' sync client over TLS.

websockets' sync client reads in a thread of its own while the caller's thread writes, both on one
`ssl.SSLSocket`, and CPython's ssl module does not serialize the two OpenSSL calls (CPython 3.11:
python/cpython#143756; python-engineio#461 shows the same race). About one connect in 600 loses its
upgrade request, and the server, which never received it, closes the connection at its handshake
timeout. Measured here: 13 of 8,000 sync connects failed so, against wsd and against a plain
websockets asyncio server alike, and 0 of 4,000 with this client (`python -m tests.tls_client_race`).

This runs websockets' asyncio client on an event loop of its own, in the caller's thread: each call
runs the loop until it is done, so the socket is only ever used by one thread.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

from websockets.asyncio.client import connect


class TlsWebSocket:
    """`with TlsWebSocket(url, context) as ws: ws.send(text); ws.recv(timeout=10)`."""

    def __init__(self, url: str, ssl_context: ssl.SSLContext, open_timeout: float = 10, **kwargs: Any):
        self.loop = asyncio.new_event_loop()
        try:
            self.ws = self.loop.run_until_complete(connect(url, ssl=ssl_context, open_timeout=open_timeout, **kwargs))
        except BaseException:
            self.loop.close()
            raise

    def send(self, message: str | bytes) -> None:
        self.loop.run_until_complete(self.ws.send(message))

    def recv(self, timeout: float = 10) -> str | bytes:
        return self.loop.run_until_complete(asyncio.wait_for(self.ws.recv(), timeout))

    def close(self) -> None:
        try:
            self.loop.run_until_complete(self.ws.close())
        finally:
            self.loop.close()

    def __enter__(self) -> TlsWebSocket:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
