"""One `/ws` client: JSON requests in (wsd.server.protocol), replies out; its subscriptions.

Deliveries do not pass through here: the hub writes pre-encoded frames to the raw transport. This
class handles the client's own requests and its life cycle, and talks to a `SessionHost` (the node),
never to the worker.

Auth (docs/auth.md): every request costs one token of the connection's rate limit, then goes
through the host's `AuthGate` (an `auth` message, or the check of a `sub`, `pub` or other op) before
it is served. With auth off the gate lets everything through and `identity` is `ANONYMOUS`. What a
connection carries for this is two slots: its `identity` (shared, immutable) and its rate state.

Each session also has a small id (unique within its worker process): log lines about the connection
carry it, its peer address and its user (`log_fields`); the server API finds a user's connections
by the node's index of them (`SessionHost.set_user`).
"""

from __future__ import annotations

import itertools
import logging
import sys
import time
from typing import Any, Protocol

from picows.picows import WSCloseCode

from wsd.ext.frames import text_frame
from wsd.server.auth import POLICY_VIOLATION
from wsd.server.auth.gate import AuthGate
from wsd.server.auth.ratelimit import FLOOD_CLOSE_REASON, RateLimiter, Verdict
from wsd.server.auth.tokens import Identity
from wsd.server.logs import connection_fields, format_peer
from wsd.server.protocol import (
    TOO_MANY_SUBSCRIPTIONS,
    Auth,
    ErrorReply,
    Ping,
    Publish,
    Subscribe,
    Unsubscribe,
    err_reply,
    ok_reply,
    parse_request,
)
from wsd.server.stats import FLOOD_CLOSES, RATE_LIMITED, REQUESTS, SENT_BYTES, WorkerCounters
from wsd.server.worker.ws_conformance import ConformingListener

log = logging.getLogger("wsd.session")

_connection_ids = itertools.count(1)

# A session's channels are a list up to this many (a scan of a few is as fast as a hash), then a set.
SMALL_CHANNELS = 8


class SessionHost(Protocol):
    """What a session needs from the rest of the worker (wsd.server.node.node.Node provides it)."""

    counters: WorkerCounters
    max_subscriptions: int
    auth: AuthGate
    rate_limiter: RateLimiter

    def set_deadline(self, session: ClientSession, deadline: float) -> None:
        """Check the session's auth at `deadline` (wall clock): its auth timeout, or its token's exp."""
        ...

    def set_user(self, session: ClientSession, user: str) -> None:
        """Auth identified the session's user (`session.user`), once per connection."""
        ...

    def session_opened(self, session: ClientSession) -> None: ...

    def session_closing(self, session: ClientSession) -> None: ...

    def session_closed(self, session: ClientSession) -> None: ...

    def subscribe(self, session: ClientSession, request: Subscribe) -> None: ...

    def subscribe_again(self, session: ClientSession, request: Subscribe) -> None: ...

    def unsubscribe(self, session: ClientSession, channel: str) -> None: ...

    def publish_for_client(self, session: ClientSession, request: Publish) -> None: ...


class ClientSession(ConformingListener):
    # Per-connection state is kept tiny: 200k of these live in one box.
    __slots__ = ("host", "raw", "channels", "identity", "rate", "connection_id")

    def __init__(self, host: SessionHost, max_message_size: int, identity: Identity | None = None):
        super().__init__(max_message_size)
        self.host = host
        self.raw: Any = None
        # A list while it is short (2 entries: 88 bytes, a set: 216), a set past SMALL_CHANNELS.
        self.channels: list[str] | set[str] | None = None
        # Who the connection is (from ?token= or its auth message; ANONYMOUS with auth off), None
        # until it has authenticated.
        self.identity = identity
        self.connection_id = next(_connection_ids)
        limiter = host.rate_limiter
        self.rate = limiter.new_state(time.monotonic()) if limiter.enabled else None

    @property
    def user(self) -> str | None:
        """The token's `sub`; None before auth, and with auth off."""
        identity = self.identity
        return identity.sub or None if identity is not None else None

    def on_ws_connected(self, transport) -> None:
        super().on_ws_connected(transport)
        self.raw = transport.underlying_transport
        host = self.host
        host.session_opened(self)
        identity = self.identity
        if identity is None:
            host.set_deadline(self, host.auth.auth_deadline(time.time()))
        elif host.auth.enabled:
            host.set_user(self, identity.sub)
            host.set_deadline(self, identity.exp)
        if log.isEnabledFor(logging.DEBUG):  # the fields cost a dict: only when they are written
            log.debug("connection opened", extra=self.log_fields())

    def on_ws_disconnected(self, transport) -> None:
        code = close_code(transport)
        self.host.counters.disconnect(code)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("connection closed", extra={**self.log_fields(), "code": 1005 if code is None else code})
        self.host.session_closed(self)
        super().on_ws_disconnected(transport)

    def send_text(self, payload: bytes) -> None:
        transport = self.transport
        if not transport.is_disconnected and not transport.is_close_frame_sent:
            # The finished frame straight to the socket's transport, as the hub writes deliveries:
            # picows's send() would grow the connection's trimmed write buffer back (wsd.ext.connmem).
            frame = text_frame(payload)
            self.raw.write(frame)
            self.host.counters.counts[SENT_BYTES] += len(frame)

    def log_fields(self) -> dict[str, Any]:
        """The fields of a log line about this connection: its id, peer address and user."""
        peer = self.raw.get_extra_info("peername") if self.raw is not None else None
        return connection_fields(self.connection_id, format_peer(peer), self.user)

    def on_message(self, is_text: bool, payload: bytes) -> None:
        if not is_text:
            self.close(WSCloseCode.UNSUPPORTED_DATA, "binary messages are not supported; send JSON text")
            return
        host = self.host
        host.counters.counts[REQUESTS] += 1
        request = parse_request(payload, self.max_message_size)
        if self.rate is not None:
            verdict = host.rate_limiter.check(self.rate, time.monotonic())
            if verdict is not Verdict.ALLOW:
                self._over_rate(verdict, request)
                return
        if isinstance(request, ErrorReply):
            self.send_text(request.encode())
        elif isinstance(request, Subscribe):
            refusal = host.auth.check_subscribe(self.identity, request.channel)
            if refusal is not None:
                self.send_text(refusal.encode(request.id))
                return
            self._subscribe(request)
        elif isinstance(request, Publish):
            refusal = host.auth.check_publish(self.identity, request.channel)
            if refusal is not None:
                self.send_text(refusal.encode(request.id))
                return
            host.publish_for_client(self, request)
        elif isinstance(request, Auth):
            self._authenticate(request)
        else:
            refusal = host.auth.check_other(self.identity)
            if refusal is not None:
                self.send_text(refusal.encode(request.id))
            elif isinstance(request, Unsubscribe):
                if self.forget_channel(request.channel):
                    host.unsubscribe(self, request.channel)
                self.send_text(ok_reply(request.id))
            elif isinstance(request, Ping):
                self.send_text(ok_reply(request.id))

    def _over_rate(self, verdict: Verdict, request: Any) -> None:
        host = self.host
        if verdict is Verdict.CLOSE:
            host.counters.counts[FLOOD_CLOSES] += 1
            # The flooder is still sending: linger, so that it reads the 1008 rather than a reset.
            self.close(POLICY_VIOLATION, FLOOD_CLOSE_REASON, linger=True)
            return
        host.counters.counts[RATE_LIMITED] += 1
        self.send_text(host.rate_limiter.refusal.encode(request.id))

    def _authenticate(self, request: Auth) -> None:
        host = self.host
        before = self.identity
        outcome = host.auth.authenticate_message(before, request.token, request.id, time.time())
        self.send_text(outcome.reply)
        if outcome.close is not None:
            self.close(*outcome.close, linger=True)
            return
        self.identity = outcome.identity
        if outcome.deadline is not None:
            host.set_deadline(self, outcome.deadline)
        if before is None and outcome.identity is not None and host.auth.enabled:
            host.set_user(self, outcome.identity.sub)

    def on_closing(self) -> None:
        self.host.session_closing(self)

    def _subscribe(self, request: Subscribe) -> None:
        channels = self.channels
        if channels is None:
            channels = self.channels = []
        if request.channel in channels:
            self.host.subscribe_again(self, request)
            return
        limit = self.host.max_subscriptions
        if len(channels) >= limit:
            message = f"at most {limit} subscriptions per connection"
            self.send_text(err_reply(request.id, TOO_MANY_SUBSCRIPTIONS, message))
            return
        # Interned: the channels most connections share ("news") are then one string, not one each.
        channel = sys.intern(request.channel)
        if type(channels) is list:
            if len(channels) < SMALL_CHANNELS:
                channels.append(channel)
            else:
                self.channels = {*channels, channel}
        else:
            channels.add(channel)
        self.host.subscribe(self, request)

    # -- the session's channels, for the host --

    def has_channel(self, channel: str) -> bool:
        return self.channels is not None and channel in self.channels

    def forget_channel(self, channel: str) -> bool:
        """Remove one channel; whether the session had it."""
        channels = self.channels
        if channels is None or channel not in channels:
            return False
        channels.remove(channel)
        return True

    def take_channels(self) -> set[str]:
        """Every channel of the session, which then has none."""
        channels, self.channels = self.channels, None
        return set(channels) if channels else set()


def close_code(transport: Any) -> int | None:
    """The close code a connection ended with: the one of the side that closed first (None: a
    close frame without a code), 1006 when it ended without a close frame."""
    handshake = getattr(transport, "close_handshake", None)
    if handshake is None:
        return 1006
    first = handshake.recv if handshake.recv_then_sent else (handshake.sent or handshake.recv)
    if first is None:
        return 1006
    code = int(first.code)
    return None if code == 1005 else code
