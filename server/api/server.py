"""The API port's asyncio adapter: carries bytes between a transport and the sans-I/O HTTP connection
(`wsd.server.api.http11`), hands each request to the router, and does what the connection decides
(write, pause or resume reading, half-close, close, abort, set a timer).

Requests on one connection are served strictly one after another, so responses come back in request
order and a connection's publishes reach the publisher in order. A Task is only created when a handler
has to wait; while handlers answer at once, a pipelined burst is served inside one `data_received` and
its responses leave in one write.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl as ssl_module
from collections.abc import Awaitable, Callable
from typing import cast

from wsd.server.api.endpoints import DEFAULT_MAX_BATCH, Publisher, add_publish_api
from wsd.server.api.http11 import CloseState, HttpConnection, HttpLimits, Response
from wsd.server.api.routes import Router

logger = logging.getLogger(__name__)

DEFAULT_MAX_BODY_SIZE = 1 << 20
DEFAULT_IDLE_TIMEOUT = 60.0
DEFAULT_REQUEST_TIMEOUT = 10.0


class ApiProtocolFactory:
    """Makes one `ApiProtocol` per accepted connection, and keeps what the connections share: the
    router (add endpoints with ``factory.router.add``), the limits, and the count of open connections."""

    def __init__(
        self,
        router: Router,
        limits: HttpLimits,
        *,
        keep_alive: Callable[[], bool] = lambda: True,
        max_connections: int | None = None,
    ) -> None:
        if max_connections is not None and max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {max_connections}")
        self.router = router
        self.limits = limits
        self.keep_alive = keep_alive
        self.max_connections = max_connections
        # Connections accepted and not yet closed, including those being refused or lingering: each
        # holds a file descriptor.
        self.open_connections = 0

    def __call__(self) -> ApiProtocol:
        return ApiProtocol(self)


class ApiProtocol(asyncio.Protocol):
    """One connection to the API port."""

    def __init__(self, factory: ApiProtocolFactory) -> None:
        self._factory = factory
        self._router = factory.router
        self._loop = asyncio.get_running_loop()
        self._connection = HttpConnection(factory.limits, self._loop.time, factory.router.kept_headers)
        self._transport: asyncio.Transport | None = None
        # The Task serving requests while a handler awaits; see _serve_awaiting.
        self._serving_task: asyncio.Task[None] | None = None
        self._flush_scheduled = False
        self._reading = True
        self._carried_out = CloseState.OPEN
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._lost = False

    # asyncio.Protocol ----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport has the asyncio.Transport interface without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        factory = self._factory
        factory.open_connections += 1
        if factory.max_connections is not None and factory.open_connections > factory.max_connections:
            self._connection.refuse(
                503, f"too many connections to this API (the limit is {factory.max_connections}); retry later"
            )
        self._serve()

    def data_received(self, data: bytes) -> None:
        self._connection.receive_data(data)
        self._serve()

    def eof_received(self) -> bool:
        self._connection.receive_eof()
        self._serve()
        # Keep the write side open: requests sent before the EOF still get their responses. _sync
        # closes the transport when the connection says so.
        return True

    def pause_writing(self) -> None:
        self._connection.pause_writing()
        self._sync()

    def resume_writing(self) -> None:
        self._connection.resume_writing()
        self._sync()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._factory.open_connections -= 1
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        # An in-flight publish is left to finish: the message may already be on the bus, and cancelling
        # half way through a batch would only make the outcome less predictable. Its response is dropped.

    # Serving ---------------------------------------------------------------------------------------

    def _serve(self) -> None:
        """Answer queued requests in order; at the first that must wait, hand over to a Task."""
        connection = self._connection
        next_request, send_response = connection.next_request, connection.send_response
        handle, keep_alive = self._router.handle, self._factory.keep_alive
        while self._serving_task is None:
            request = next_request()
            if request is None:
                break
            outcome = handle(request)
            if isinstance(outcome, Response):
                send_response(outcome, not keep_alive())
            else:
                self._serving_task = self._loop.create_task(self._serve_awaiting(outcome))
        self._sync()

    async def _serve_awaiting(self, outcome: Awaitable[Response]) -> None:
        """Await `outcome`, then serve whatever is queued behind it, awaiting where needed."""
        # One Task for a whole run of pipelined requests rather than one per request: when the awaited
        # results are already there, the run costs no extra loop iterations, and its responses leave in
        # one write (see _schedule_flush).
        connection = self._connection
        try:
            while True:
                response = outcome if isinstance(outcome, Response) else await outcome
                if self._lost:
                    return  # the client is gone; the publish happened but nobody is there to hear of it
                connection.send_response(response, close=not self._factory.keep_alive())
                self._schedule_flush()
                request = connection.next_request()
                if request is None:
                    return
                outcome = self._router.handle(request)
        except Exception:
            # The router answers every error itself, so this is a bug here: never leave the peer hanging.
            logger.exception("publish API: serving a connection failed; aborting it")
            self._lost = True
            if self._transport is not None:
                self._transport.abort()
        finally:
            self._serving_task = None
            if not self._lost:
                self._serve()

    # Carrying out the connection's decisions -------------------------------------------------------

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        self._sync()

    def _sync(self) -> None:
        if self._lost:
            return
        connection = self._connection
        transport = self._transport
        assert transport is not None
        data = connection.data_to_send()
        if data:
            transport.write(data)
        state = connection.close_state
        if state is not self._carried_out:
            self._carried_out = state
            if state is CloseState.HALF_CLOSE:
                if transport.can_write_eof():
                    transport.write_eof()
                # Reading goes on: what the peer still sends is discarded until it closes or the linger
                # time ends (TLS cannot half-close, so there the EOF is the close after lingering).
            elif state is CloseState.CLOSE:
                transport.close()
            else:
                transport.abort()
                return
        if connection.wants_reading != self._reading and state < CloseState.CLOSE:
            self._reading = not self._reading
            if self._reading:
                transport.resume_reading()
            else:
                transport.pause_reading()
        deadline = connection.get_timer()
        # Deadlines mostly move later (each request pushes them on), so a timer set for an earlier one is
        # kept and, when it fires early, set again: no timer churn per request.
        if deadline is not None and (self._timer_at is None or deadline < self._timer_at):
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = deadline
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = self._timer_at = None
        self._connection.handle_timer(self._loop.time())
        self._serve()


def make_api_protocol_factory(
    publisher: Publisher,
    *,
    health: Callable[[], bool] = lambda: True,
    max_body_size: int = DEFAULT_MAX_BODY_SIZE,
    max_batch: int = DEFAULT_MAX_BATCH,
    max_data_size: int | None = None,
    api_key: str | bytes | None = None,
    idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT,
    request_timeout: float | None = DEFAULT_REQUEST_TIMEOUT,
    max_connections: int | None = None,
) -> ApiProtocolFactory:
    """A protocol factory for `loop.create_server` serving the publish API with `publisher`.

    - `health`: false while the worker drains: /healthz answers 503, and kept-alive connections are
      ended after their current request (so the backend's pool reconnects to a worker that stays);
    - `max_body_size`: bytes of a request body (413 and the connection ends); `max_batch`: messages
      of a batch (413); `max_data_size`: bytes of one message's data as re-serialized, which is what is
      stored and sent (413; default: `max_body_size`);
    - `api_key`: when set, ``Authorization: Bearer <key>`` is required on every /api/* request (401);
    - `idle_timeout`: seconds a kept-alive connection may wait for its next request (then it is closed),
      and a peer may leave our responses unread; `request_timeout`: seconds for a request's line and
      headers, and again for its body (408 and the connection ends);
    - `max_connections`: open connections this factory serves; more are answered 503 and closed
      (`factory.open_connections` counts them, for the descriptor budget).

    More endpoints: ``factory.router.add(methods, path, handler)``.
    """
    if max_body_size < 1:
        raise ValueError(f"max_body_size must be at least 1 byte, got {max_body_size}")
    limits = HttpLimits(max_body_size=max_body_size, idle_timeout=idle_timeout, request_timeout=request_timeout)
    router = Router(api_key=api_key)
    add_publish_api(
        router,
        publisher,
        health=health,
        max_batch=max_batch,
        max_data_size=max_body_size if max_data_size is None else max_data_size,
    )
    return ApiProtocolFactory(router, limits, keep_alive=health, max_connections=max_connections)


async def start_api_server(
    loop: asyncio.AbstractEventLoop,
    sock: socket.socket,
    factory: Callable[[], asyncio.Protocol],
    *,
    backlog: int = 1024,
    ssl: ssl_module.SSLContext | None = None,
) -> asyncio.Server:
    """Serve the API on an already bound listening socket (the supervisor's SO_REUSEPORT socket),
    over TLS when `ssl` is given."""
    extra = {}
    if ssl is not None and isinstance(factory, ApiProtocolFactory) and factory.limits.request_timeout is not None:
        # A TLS handshake is part of sending a request: it gets the same time as the request's head.
        extra["ssl_handshake_timeout"] = factory.limits.request_timeout
    # create_server calls listen() on the socket again; pass a real backlog so the default of 100 does
    # not shrink the one the supervisor chose.
    return await loop.create_server(factory, sock=sock, backlog=backlog, ssl=ssl, **extra)
