"""What the WebSocket port answers, by path: `/ws` (a client session, or 503 while draining or full),
`/healthz`, the echo endpoint for conformance tests, and the static pages (the demo and wsd.js).
Anything else: 404 (picows answers it)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from picows import WSUpgradeRequest, WSUpgradeResponse, WSUpgradeResponseWithListener

from wsd.server.counters import WorkerCounters
from wsd.server.worker.pages import static_response
from wsd.server.worker.ws_conformance import EchoListener


class WebSocketRoutes:
    def __init__(
        self,
        slot: int,
        counters: WorkerCounters,
        new_session: Callable[[], Any],
        refusing_sessions: Callable[[], bool],
        full: Callable[[], bool],
        draining: Callable[[], bool],
        server_clients: Callable[[], int],
        echo_path: str | None,
        max_message_size: int,
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
        # The worker's slot in a response header: tests and operators see where a client landed.
        self._slot_header = {"X-Wsd-Worker": str(slot)}

    def __call__(self, request: WSUpgradeRequest) -> Any:
        path = request.path.split(b"?", 1)[0]
        if path == b"/ws":
            if self.refusing_sessions():
                self.counters.handshakes_refused += 1
                return _error(503, b"draining: reconnect to another server\n", {"Retry-After": "1"})
            if self.full():
                self.counters.handshakes_refused += 1
                return _error(503, b"server full: retry shortly\n", {"Retry-After": "1"})
            return WSUpgradeResponseWithListener(
                WSUpgradeResponse.create_101_response(self._slot_header), self.new_session()
            )
        if path == b"/healthz":
            if self.draining():
                headers = {"Retry-After": "1", "X-Wsd-Clients": str(self.server_clients())}
                return _error(503, b"draining\n", headers)
            return WSUpgradeResponseWithListener(WSUpgradeResponse.create_ok_response(b"ok"), None)
        if self.echo_path is not None and path == self.echo_path:
            return EchoListener(self.max_message_size)
        response = static_response(path, self.slot)
        if response is not None:
            return WSUpgradeResponseWithListener(response, None)
        return None  # picows answers 404


def _error(status: int, body: bytes, headers: dict[str, str]) -> WSUpgradeResponseWithListener:
    return WSUpgradeResponseWithListener(WSUpgradeResponse.create_error_response(status, body, headers), None)
