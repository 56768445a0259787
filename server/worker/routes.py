"""What the WebSocket port answers, by path: `/ws` (a client session, or 503 while draining or full),
`/healthz` (liveness), `/readyz` (readiness of the whole server, wsd.server.readiness), the echo
endpoint for conformance tests, and the static pages (the demo and wsd.js). Anything else: 404
(picows answers it).

A `/ws` handshake is decided here, before the upgrade: a browser `Origin` not on
`--allowed-origins` gets 403, a `?token=` that is empty or invalid gets 401 (docs/auth.md). Every
handshake is counted by its result (wsd_handshakes_total{result}, `counters.handshake`):
`accepted`, `draining`, `limit` (the worker is full), `origin`, `unauthorized`; and connections
closed before their upgrade request was complete, `incomplete`.

permessage-deflate (RFC 7692) is negotiated here too, for `/ws` and the echo endpoint, unless
`--compression off` (wsd.server.permessage_deflate): the agreement goes to the listener before the
101 response that answers it."""

from __future__ import annotations

import time
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

import orjson
from picows.common import WSUpgradeRequest, WSUpgradeResponse, WSUpgradeResponseWithListener

from wsd.server.auth import FORBIDDEN
from wsd.server.auth.gate import NEEDS_AUTH_MESSAGE, AuthGate, http_refusal_body
from wsd.server.auth.origin import OriginPolicy
from wsd.server.auth.tokens import AuthError
from wsd.server.permessage_deflate import HEADER as EXTENSIONS_HEADER
from wsd.server.permessage_deflate import Deflate, negotiate
from wsd.server.stats import WorkerCounters
from wsd.server.worker.address_limits import AddressLimiter
from wsd.server.worker.pages import static_response
from wsd.server.worker.ws_conformance import EchoListener


class WebSocketRoutes:
    def __init__(
        self,
        slot: int,
        counters: WorkerCounters,
        new_session: Callable[[Any], Any],
        refusing_sessions: Callable[[], bool],
        full: Callable[[], bool],
        draining: Callable[[], bool],
        server_clients: Callable[[], int],
        echo_path: str | None,
        max_message_size: int,
        gate: AuthGate | None = None,
        origins: OriginPolicy | None = None,
        readiness: Callable[[], tuple[int, bytes]] = lambda: (200, b'{"ready":true}'),
        address_limiter: AddressLimiter | None = None,
        compression: bool = True,
        compression_threshold: int = 0,
    ):
        self.slot = slot
        self.counters = counters
        self.new_session = new_session
        self.refusing_sessions = refusing_sessions
        self.full = full
        self.draining = draining
        self.server_clients = server_clients
        self.echo_path = echo_path.encode() if echo_path is not None else None
        self.max_message_size = max_message_size
        self.gate = gate or AuthGate(None)
        self.origins = origins or OriginPolicy(None)
        self.readiness = readiness  # () -> (HTTP status, JSON body) of /readyz
        self.address_limiter = address_limiter
        self.compression = compression
        self.compression_threshold = compression_threshold  # of the echo endpoint (the hub has its own)
        # The peer's address is asked of each connection only for the per-address limit.
        self.needs_peer = address_limiter is not None
        # The worker's slot in a response header: tests and operators see where a client landed.
        self._slot_header = {"X-Wsd-Worker": str(slot)}
        # The 101 response, made once, and one for each deflate agreement (there are a handful:
        # negotiate is cached).
        self._switching = SwitchingProtocols(self._slot_header)
        self._deflate_switching: dict[Deflate, SwitchingProtocols] = {}

    def __call__(self, request: WSUpgradeRequest, peer: Any = None) -> Any:
        path = request.path.split(b"?", 1)[0]
        if path == b"/ws":
            if self.refusing_sessions():
                self.counters.handshake("draining")
                return _error(503, b"draining: reconnect to another server\n", {"Retry-After": "1"})
            if self.full():
                self.counters.handshake("limit")
                return _error(503, b"server full: retry shortly\n", {"Retry-After": "1"})
            # The address is counted first: it is the cheapest check, and a flood of bad tokens
            # from one address is refused before any signature is verified.
            counted = None
            limiter = self.address_limiter
            if limiter is not None and peer:
                counted = limiter.admit(peer[0])
                if counted is None:
                    self.counters.handshake("limit")
                    body = b"too many connections from your address (--max-connections-per-ip)\n"
                    return _error(503, body, {"Retry-After": "5"})
            refusal_or_identity = self._authorize(request)
            if isinstance(refusal_or_identity, WSUpgradeResponseWithListener):
                if counted is not None:
                    limiter.forget(counted)
                return refusal_or_identity
            self.counters.handshake("accepted")
            session = self.new_session(refusal_or_identity)
            if counted is not None:
                limiter.hold(session, counted)
            return self._upgrade(request, session, True)
        if path == b"/healthz":
            if self.draining():
                headers = {"Retry-After": "1", "X-Wsd-Clients": str(self.server_clients())}
                return _error(503, b"draining\n", headers)
            return WSUpgradeResponseWithListener(WSUpgradeResponse.create_ok_response(b"ok"), None)
        if path == b"/readyz":
            status, body = self.readiness()
            headers = {"Content-Type": "application/json", "Cache-Control": "no-store"}
            if status == 200:
                return WSUpgradeResponseWithListener(WSUpgradeResponse.create_ok_response(body, headers), None)
            return _error(status, body, headers)
        if self.echo_path is not None and path == self.echo_path:
            # The echo endpoint lets the client keep its compression context (the full RFC 7692, for
            # Autobahn); /ws asks it not to, so that no connection holds an inflate window.
            echo = EchoListener(self.max_message_size, self.compression_threshold)
            return self._upgrade(request, echo, False)
        response = static_response(path, self.slot)
        if response is not None:
            return WSUpgradeResponseWithListener(response, None)
        return None  # picows answers 404

    def incomplete(self) -> None:
        """A connection closed before its upgrade request was complete (wsd.server.worker.accept)."""
        self.counters.handshake("incomplete")

    def _upgrade(self, request: WSUpgradeRequest, listener: Any, client_resets: bool) -> WSUpgradeResponseWithListener:
        """The 101 response for `listener`, with permessage-deflate if offered and on."""
        response = self._switching
        if self.compression:
            offers = request.headers.getall(EXTENSIONS_HEADER, ())
            agreement = negotiate(tuple(offers), client_resets) if offers else None
            if agreement is not None:
                listener.use_deflate(agreement)
                response = self._deflate_switching.get(agreement)
                if response is None:
                    response = SwitchingProtocols({**self._slot_header, EXTENSIONS_HEADER: agreement.response})
                    self._deflate_switching[agreement] = response
        return WSUpgradeResponseWithListener(response, listener)

    def _authorize(self, request: WSUpgradeRequest) -> Any:
        """The identity the handshake presents (None: it will send an auth message), or the refusal."""
        if self.origins.allowed is not None:
            refusal = self._origin_refusal(request)
            if refusal is not None:
                self.counters.handshake("origin")
                return _error(403, refusal, _JSON_HEADERS)
        identity = self.gate.authenticate_target(request.path, time.time())
        if isinstance(identity, AuthError):
            self.counters.handshake("unauthorized")
            return _error(401, http_refusal_body(identity), _JSON_HEADERS)
        if identity is NEEDS_AUTH_MESSAGE:
            return None  # the session waits for its auth message
        return identity

    def _origin_refusal(self, request: WSUpgradeRequest) -> bytes | None:
        """The 403 body for a browser origin that is not allowed, or None (no Origin: not a browser)."""
        values = request.headers.getall("Origin", ())
        if len(values) > 1:
            reason = "more than one Origin header"
        elif self.origins.allows(values[0] if values else None):
            return None
        else:
            reason = self.origins.refusal(values[0])
        return orjson.dumps({"error": f"{FORBIDDEN}: {reason}"})


_JSON_HEADERS = {"Content-Type": "application/json"}


class _AcceptHeader:
    """The headers of a SwitchingProtocols: picows sets the one that differs per connection."""

    __slots__ = ("accept",)

    def __init__(self) -> None:
        self.accept = ""

    def __setitem__(self, name: str, value: str) -> None:
        if name != "Sec-WebSocket-Accept":
            raise KeyError(f"a 101 response takes no {name!r} header after it is made")
        self.accept = value


class SwitchingProtocols(WSUpgradeResponse):
    """The 101 response of every accepted `/ws` handshake of a worker, made once.

    picows (2.3, WSTransport._send_http_handshake_response) sets the response's
    `Sec-WebSocket-Accept` header and calls `to_bytes()` at once, in one synchronous step, then
    keeps the object as `transport.response`. So one object serves every connection: its fixed
    lines are encoded once, `to_bytes` appends the accept value just set, and no connection holds a
    header dictionary of its own (picows's `create_101_response` made and kept one each)."""

    __slots__ = ("head",)
    shared = True  # one object for every connection (wsd.server.worker.ws_conformance keeps its headers)

    def __init__(self, extra_headers: dict[str, str]):
        self.version = b"HTTP/1.1"
        self.status = HTTPStatus.SWITCHING_PROTOCOLS
        self.headers = _AcceptHeader()
        self.body = None
        lines = [b"HTTP/1.1 101 Switching Protocols"]
        lines += [f"{name}: {value}".encode() for name, value in extra_headers.items()]
        lines += [b"Connection: upgrade", b"Upgrade: websocket", b"Sec-WebSocket-Accept: "]
        self.head = b"\r\n".join(lines)

    def to_bytes(self) -> bytearray:
        return bytearray(b"%b%b\r\n\r\n" % (self.head, self.headers.accept.encode()))


def _error(status: int, body: bytes, headers: dict[str, str]) -> WSUpgradeResponseWithListener:
    return WSUpgradeResponseWithListener(WSUpgradeResponse.create_error_response(status, body, headers), None)
