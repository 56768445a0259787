"""Accept gating: a worker accepts new WebSocket connections only while it is under its connection
limit, and stops for good when it stops or hands its slot over.

It serves on a duplicate of the slot's listening socket: closing the asyncio server to stop
accepting closes only the duplicate, so the slot keeps its place in the kernel's reuseport group
(connections already queued on it are not reset, and a successor on the slot takes them).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable
from typing import Any

import picows

log = logging.getLogger("wsd.worker")

RESUME_ACCEPTING_AT = 0.95  # of the connection limit: no flapping at the limit


class AcceptGate:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        slot: int,
        listen_socket: socket.socket,
        route: Callable[[Any], Any],
        server_kwargs: dict[str, Any],
        limit: int,
    ):
        self.loop = loop
        self.slot = slot
        self.listen_socket = listen_socket
        self.route = route
        self.server_kwargs = server_kwargs
        self.limit = limit
        self.server: asyncio.Server | None = None
        self.accepting = False
        self.closed = False  # stopped for good (stopping, or handed over)

    async def start(self) -> None:
        listener = socket.socket(fileno=os.dup(self.listen_socket.fileno()))
        self.server = await picows.ws_create_server(self.route, sock=listener, **self.server_kwargs)
        self.accepting = True

    def _stop_server(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        self.accepting = False

    def close(self) -> None:
        """Stop accepting for good."""
        self.closed = True
        self._stop_server()

    def connections_changed(self, count: int) -> None:
        """Stop at the limit; start again once below RESUME_ACCEPTING_AT of it."""
        if self.closed:
            return
        if self.accepting and count >= self.limit:
            self._stop_server()
            log.warning(
                "worker %d stopped accepting: %d connections reached the limit %d", self.slot, count, self.limit
            )
        elif not self.accepting and count < self.limit * RESUME_ACCEPTING_AT:
            self.accepting = True  # set now so only one restart is scheduled
            self.loop.create_task(self._resume(count))

    async def _resume(self, count: int) -> None:
        if self.closed:
            self.accepting = False
            return
        await self.start()
        if self.closed:  # stopped while the server was starting
            self._stop_server()
            return
        log.info("worker %d accepting again (%d connections)", self.slot, count)
