"""One `/ws` client: JSON requests in (wsd.server.protocol), replies out; its subscriptions.

Deliveries do not pass through here: the hub writes pre-encoded frames to the raw transport. This
class handles the client's own requests and its life cycle, and talks to a `SessionHost` (the node),
never to the worker.
"""

from __future__ import annotations

from typing import Any, Protocol

from picows import WSCloseCode, WSMsgType

from wsd.server.counters import WorkerCounters
from wsd.server.protocol import (
    TOO_MANY_SUBSCRIPTIONS,
    ErrorReply,
    Ping,
    Publish,
    Subscribe,
    Unsubscribe,
    err_reply,
    ok_reply,
    parse_request,
)
from wsd.server.worker.ws_conformance import ConformingListener


class SessionHost(Protocol):
    """What a session needs from the rest of the worker (wsd.server.node.node.Node provides it)."""

    counters: WorkerCounters
    max_subscriptions: int

    def session_opened(self, session: ClientSession) -> None: ...

    def session_closing(self, session: ClientSession) -> None: ...

    def session_closed(self, session: ClientSession) -> None: ...

    def subscribe(self, session: ClientSession, request: Subscribe) -> None: ...

    def subscribe_again(self, session: ClientSession, request: Subscribe) -> None: ...

    def unsubscribe(self, session: ClientSession, channel: str) -> None: ...

    def publish_for_client(self, session: ClientSession, request: Publish) -> None: ...


class ClientSession(ConformingListener):
    # Per-connection state is kept tiny: 200k of these live in one box.
    __slots__ = ("host", "raw", "channels")

    def __init__(self, host: SessionHost, max_message_size: int):
        super().__init__(max_message_size)
        self.host = host
        self.raw: Any = None
        self.channels: set[str] | None = None

    def on_ws_connected(self, transport) -> None:
        super().on_ws_connected(transport)
        self.raw = transport.underlying_transport
        self.host.session_opened(self)

    def on_ws_disconnected(self, transport) -> None:
        self.host.session_closed(self)
        super().on_ws_disconnected(transport)

    def send_text(self, payload: bytes) -> None:
        if not self.transport.is_disconnected:
            self.transport.send(WSMsgType.TEXT, payload)

    def on_message(self, is_text: bool, payload: bytes) -> None:
        if not is_text:
            self.close(WSCloseCode.UNSUPPORTED_DATA, "binary messages are not supported; send JSON text")
            return
        host = self.host
        host.counters.msgs_in += 1
        request = parse_request(payload, self.max_message_size)
        if isinstance(request, ErrorReply):
            self.send_text(request.encode())
        elif isinstance(request, Subscribe):
            self._subscribe(request)
        elif isinstance(request, Unsubscribe):
            if self.forget_channel(request.channel):
                host.unsubscribe(self, request.channel)
            self.send_text(ok_reply(request.id))
        elif isinstance(request, Publish):
            host.publish_for_client(self, request)
        elif isinstance(request, Ping):
            self.send_text(ok_reply(request.id))

    def on_closing(self) -> None:
        self.host.session_closing(self)

    def _subscribe(self, request: Subscribe) -> None:
        if self.channels is None:
            self.channels = set()
        if request.channel in self.channels:
            self.host.subscribe_again(self, request)
            return
        limit = self.host.max_subscriptions
        if len(self.channels) >= limit:
            message = f"at most {limit} subscriptions per connection"
            self.send_text(err_reply(request.id, TOO_MANY_SUBSCRIPTIONS, message))
            return
        self.channels.add(request.channel)
        self.host.subscribe(self, request)

    # -- the session's channels, for the host --

    def has_channel(self, channel: str) -> bool:
        return self.channels is not None and channel in self.channels

    def forget_channel(self, channel: str) -> bool:
        """Remove one channel; whether the session had it."""
        if self.channels is None or channel not in self.channels:
            return False
        self.channels.discard(channel)
        return True

    def take_channels(self) -> set[str]:
        """Every channel of the session, which then has none."""
        channels, self.channels = self.channels or set(), None
        return channels
