"""Accept gating: a worker takes new WebSocket sessions only while it is under its connection limit,
and stops accepting for good when it stops or hands its slot over.

At the limit it keeps accepting TCP connections and answers their handshake with 503 (`Retry-After`),
rather than leaving them waiting in the kernel's accept queue, where a client would hang: the limit
sits below the descriptor limit by a reserve (wsd.server.control.config.RESERVED_DESCRIPTORS) that
pays for these short-lived refusals.

It serves on a duplicate of the slot's listening socket: closing the asyncio server closes only the
duplicate, so the slot keeps its place in the kernel's reuseport group (connections already queued
on it are not reset, and a successor on the slot takes them).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import socket
from collections.abc import Callable
from typing import Any

from picows.picows import MemoryBuffer, WSAutoPingStrategy, WSProtocol

from wsd.ext.connmem import SharedReadBuffer

log = logging.getLogger("wsd.worker")

RESUME_ACCEPTING_AT = 0.95  # of the connection limit: one log line per episode, not per connection

# The read buffer every idle connection of the process shares (wsd.ext.connmem): one read takes
# up to this much; a connection left with an incomplete frame copies it into its own buffer.
SHARED_READ_BUFFER_BYTES = 65536
_shared_read_buffer: SharedReadBuffer | None = None


def shared_read_buffer() -> SharedReadBuffer:
    """The process's shared read buffer (made on first use)."""
    global _shared_read_buffer
    if _shared_read_buffer is None:
        _shared_read_buffer = SharedReadBuffer(SHARED_READ_BUFFER_BYTES)
    return _shared_read_buffer


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
        self.accepting = False  # new sessions are taken (below the limit, not closed)
        self.closed = False  # stopped for good (stopping, or handed over)

    async def start(self) -> None:
        listener = socket.socket(fileno=os.dup(self.listen_socket.fileno()))
        self.server = await create_peer_aware_server(
            self.loop, self.route, listener, needs_peer=getattr(self.route, "needs_peer", True),
            on_incomplete=getattr(self.route, "incomplete", None), **self.server_kwargs,
        )  # fmt: skip
        self.accepting = not self.closed
        if self.closed:  # closed while the server was starting
            self.close()

    def close(self) -> None:
        """Stop accepting for good."""
        self.closed = True
        self.accepting = False
        if self.server is not None:
            self.server.close()
            self.server = None

    def connections_changed(self, count: int) -> None:
        """Full at the limit; taking sessions again once below RESUME_ACCEPTING_AT of it."""
        if self.closed:
            return
        if self.accepting and count >= self.limit:
            self.accepting = False
            log.warning(
                "worker %d stopped accepting: %d connections reached the limit %d; new handshakes get 503",
                self.slot, count, self.limit,
            )  # fmt: skip
        elif not self.accepting and count < self.limit * RESUME_ACCEPTING_AT:
            self.accepting = True
            log.info("worker %d accepting again (%d connections)", self.slot, count)


class _PeerAwareRoute:
    """picows's listener factory sees only the upgrade request; this one, made per connection and
    dropped once its handshake is answered, passes the peer's address along too."""

    __slots__ = ("route", "protocol")

    def __init__(self, route: Callable[[Any, Any], Any]):
        self.route = route
        self.protocol: WSProtocol | None = None

    def __call__(self, request: Any) -> Any:
        peer = self.protocol.transport.underlying_transport.get_extra_info("peername")
        return self.route(request, peer)


class LeanWSProtocol(WSProtocol):
    """picows's protocol, reading into the process's shared read buffer while it has no
    incomplete frame (wsd.ext.connmem): ~2 KiB less per idle connection. uvloop calls
    `buffer_updated` after each read into what `get_buffer` gave it.

    It also tells `on_incomplete` of a connection that closes before its upgrade request is
    complete: picows closes those at its handshake timeout, silently."""

    __slots__ = ("_own_read_buffer", "_shared", "_on_incomplete")

    def __init__(self, *args: Any, shared: SharedReadBuffer, on_incomplete: Callable[[], None] | None = None):
        super().__init__(*args)
        # picows's read buffer, a private field; the protocol's GC traversal hands it out.
        self._own_read_buffer = next(r for r in gc.get_referents(self) if type(r) is MemoryBuffer)
        self._shared = shared
        self._on_incomplete = on_incomplete

    def connection_lost(self, exc: Exception | None) -> None:
        # picows sets `transport.request` once the request is parsed, before it is answered; an
        # accepted session's is dropped later (trim_transport), but it has a listener by then.
        transport = self.transport
        incomplete = transport is not None and transport.request is None and self.listener is None
        WSProtocol.connection_lost(self, exc)  # first: picows's own clean-up never waits on the count
        if incomplete and self._on_incomplete is not None:
            self._on_incomplete()

    def buffer_updated(self, nbytes: int) -> None:
        buffer, shared = self._own_read_buffer, self._shared
        shared.before_read(buffer, nbytes)
        try:
            WSProtocol.buffer_updated(self, nbytes)
        finally:
            # get_buffer() now starts where picows's unparsed bytes end.
            shared.after_read(buffer, WSProtocol.get_buffer(self, -1), self.listener is not None)

    def __del__(self) -> None:
        # Before picows frees its buffer: never the shared bytes. (Not set if __init__ failed.)
        buffer = getattr(self, "_own_read_buffer", None)
        if buffer is not None:
            self._shared.give_back(buffer)


class _SharedLogger(logging.LoggerAdapter):
    """picows makes a child `logging.Logger` per connection (~0.5 KiB, never freed from nothing
    but the connection) when it is given a Logger; any other logger-like object it uses as is."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return msg, kwargs


async def create_peer_aware_server(
    loop: asyncio.AbstractEventLoop,
    route: Callable[[Any, Any], Any],
    sock: socket.socket,
    *,
    backlog: int,
    enable_auto_pong: bool,
    max_frame_size: int,
    read_buffer_init_size: int,
    ssl: Any = None,
    websocket_handshake_timeout: float = 5.0,
    use_aiofastnet: bool = False,
    needs_peer: bool = True,
    on_incomplete: Callable[[], None] | None = None,
) -> asyncio.Server:
    """`picows.ws_create_server`, with `route(request, peer)` instead of `factory(request)`; with
    `needs_peer` false, `route(request)` (no peer address asked of the transport, no object per
    connection for it: a handshake costs less).

    It builds picows's WSProtocol as ws_create_server does (picows 2.3), on uvloop's own
    create_server (not aiofastnet, which wsd does not use)."""
    if use_aiofastnet:
        raise ValueError("wsd serves on uvloop's create_server, not aiofastnet")
    logger = _SharedLogger(logging.getLogger("picows.server"))  # as ws_create_server names it
    shared = shared_read_buffer()

    def make_protocol() -> WSProtocol:
        peer_route = _PeerAwareRoute(route) if needs_peer else None
        protocol = LeanWSProtocol(
            None, None, False, peer_route or route, logger, True, websocket_handshake_timeout,
            False, 20.0, 20.0, WSAutoPingStrategy.PING_WHEN_IDLE,
            enable_auto_pong, max_frame_size, None, read_buffer_init_size, shared=shared,
            on_incomplete=on_incomplete,
        )  # fmt: skip
        if peer_route is not None:
            peer_route.protocol = protocol
        return protocol

    return await loop.create_server(make_protocol, sock=sock, backlog=backlog, ssl=ssl)
