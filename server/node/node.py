"""The node: wires client sessions and the publish API to the hub of local subscribers and the broker.

As in Centrifuge's `node.go`: a subscription goes to the hub, and only the first local subscriber of
a channel goes on to the broker (`broker.subscribe`); a publication the broker delivers goes to the
hub, which encodes it once for every local subscriber. Publishing has one path for WebSocket
clients and the HTTP API (`publish`). The node is the `SessionHost` that sessions talk to.

Brokers may answer `subscribe` and `history` later (a remote bus): while a subscriber waits for
its position and history, the hub holds the live messages meant for it, so the reply, the replayed
history and the live messages reach it in offset order, each once.

The node also answers the server API for its worker (`disconnect_user`, `unsubscribe_user`,
`channel_subscribers`), and counts what happens on its paths into the worker's counters
(wsd.server.stats): publishes by source, resumes by outcome, slow readers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from picows.picows import WSCloseCode

from wsd.ext.frames import msg_frame, text_frame
from wsd.server.auth.gate import AuthGate
from wsd.server.auth.ratelimit import RateLimiter
from wsd.server.node.broker import Broker, BrokerError, Pending, StreamPosition
from wsd.server.node.deadlines import ConnectionDeadlines
from wsd.server.node.hub import GAP_NOTICE, Hub
from wsd.server.node.slow_readers import SlowReaders
from wsd.server.node.users import UserIndex
from wsd.server.protocol import (
    PUBLISH_FAILED,
    TOO_MANY_SUBSCRIPTIONS,
    UNAVAILABLE,
    Publish,
    Subscribe,
    err_reply,
    gap_notice,
    ok_reply,
    unsub_notice,
)
from wsd.server.stats import SLOW_DISCONNECTS, WorkerCounters

log = logging.getLogger("wsd.node")

DISCONNECTED_BY_SERVER = 4000  # the server API's disconnect; wsd.js does not reconnect after it

class Node:
    def __init__(
        self,
        counters: WorkerCounters,
        worker_slot: int,
        max_subscriptions: int,
        write_buffer_limit: int,
        slow_reader_timeout_s: float,
        on_session_opened: Callable[[Any], None],
        on_session_closed: Callable[[Any], None],
        max_worker_subscriptions: int | None = None,
        on_session_closing: Callable[[Any], None] = lambda session: None,
        auth: AuthGate | None = None,
        rate_limiter: RateLimiter | None = None,
        compression_threshold: int = 0,
    ):
        self.slow_readers = SlowReaders(write_buffer_limit, slow_reader_timeout_s, self._cut_off_slow_reader)
        self.hub = Hub(write_buffer_limit, self.slow_readers.over_limit, counters.counts, compression_threshold)
        self.users = UserIndex()
        self.write_buffer_limit = write_buffer_limit
        self.max_worker_subscriptions = max_worker_subscriptions
        self.subscriptions = 0  # of every session of this worker
        self.broker: Broker | None = None  # set once the broker exists (it needs our callbacks)
        self.counters = counters
        self.worker_slot = worker_slot
        self.max_subscriptions = max_subscriptions
        self._on_session_opened = on_session_opened
        self._on_session_closed = on_session_closed
        self._on_session_closing = on_session_closing
        # channel name -> the first local subscriber's pending broker.subscribe(), while it is pending
        self._subscribing: dict[bytes, asyncio.Future] = {}
        # Who may do what (docs/auth.md); the sessions ask these before serving a request.
        self.auth = auth or AuthGate(None)
        self.rate_limiter = rate_limiter or RateLimiter(0)
        self.deadlines: ConnectionDeadlines | None = None  # set once the loop runs (the worker does)

    # -- deliveries from the broker --

    def deliver(
        self, chan_hash: int, channel: bytes, epoch: int, offset: int, data: bytes, ts_ns: int, sender: bytes = b""
    ) -> None:
        # By name: channels may share a hash.
        self.hub.fan_out(channel, channel, offset, data, from_json(sender) if sender else b"", ts_ns)

    def deliver_gap(self, channel: bytes, epoch: int, offset: int) -> None:
        """The broker lost the channel's messages up to (epoch, offset): tell its subscribers, in
        order with its messages (`{"op":"gap",...}`); deliveries continue after `offset`."""
        self.hub.fan_out_notice(channel, text_frame(gap_notice(channel.decode(), offset, epoch)))

    def deliveries_done(self) -> None:
        self.hub.flush()

    # -- SessionHost: what a client session calls --

    def session_opened(self, session: Any) -> None:
        self._on_session_opened(session)

    def session_closing(self, session: Any) -> None:
        """The closing handshake started: nothing more is delivered to it."""
        self.drop_subscriptions(session)
        self._on_session_closing(session)

    def session_closed(self, session: Any) -> None:
        if session.user is not None:
            self.users.remove(session.user, session)
        self.drop_subscriptions(session)
        self.slow_readers.forget(session)
        if self.deadlines is not None:
            self.deadlines.cancel(session)
        self._on_session_closed(session)

    def set_deadline(self, session: Any, deadline: float) -> None:
        self.deadlines.set(session, deadline)

    def set_user(self, session: Any, user: str) -> None:
        """Auth identified `session.user` (once per connection): the server API finds the user's
        connections by it (disconnect_user, unsubscribe_user)."""
        if session.raw is not None and not session.raw.is_closing():
            self.users.add(user, session)

    def subscribe(self, session: Any, request: Subscribe) -> None:
        """Subscribe the session (it has not subscribed `request.channel` yet) and answer it: `ok`
        with the channel's position, then, for a resume, the missed messages; or an `err`."""
        channel = request.channel
        if self.max_worker_subscriptions is not None and self.subscriptions >= self.max_worker_subscriptions:
            session.forget_channel(channel)
            message = f"this server holds its maximum of {self.max_worker_subscriptions} subscriptions per worker"
            session.send_text(err_reply(request.id, TOO_MANY_SUBSCRIPTIONS, message))
            return
        refusal = self.broker.unavailable(channel)
        if refusal is not None:  # the bus cannot take subscriptions now (a cluster's Redis is down)
            session.forget_channel(channel)
            session.send_text(err_reply(request.id, refusal.code, str(refusal)))
            return
        self.subscriptions += 1
        name = channel.encode()
        key = name  # the hub keys channels by name: a hash never decides identity
        transport = session.raw
        deflate = session.deflate  # permessage-deflate: the hub writes it compressed frames
        first = self.hub.add(key, transport, session, deflate.server_window_bits if deflate is not None else 0)
        if first:
            # The broker may deliver while it subscribes (the shared-memory bus catches up on its rings
            # before it answers): hold this subscriber's live frames, so none reaches it before its ok.
            self.hub.hold(key, transport)
            position: Pending[StreamPosition] = self._broker_subscribe(key, channel)
        elif key in self._subscribing:
            position = self._subscribing[key]
        else:
            position = self.broker.position(channel)
        if isinstance(position, StreamPosition):
            missed = self._missed(channel, request, position)
            if not isinstance(missed, Awaitable):
                kept = self.hub.release(key, transport)
                self._answer(session, request, key, position, missed, kept)
                return
        # Something is on its way: hold live messages for this session until it is answered.
        self.hub.hold(key, transport)
        asyncio.ensure_future(self._subscribe_later(session, request, key, position))

    def _broker_subscribe(self, key: bytes, channel: str) -> Pending[StreamPosition]:
        try:
            outcome = self.broker.subscribe(channel)
        except BrokerError as exc:
            future = asyncio.get_running_loop().create_future()
            future.set_exception(exc)
            outcome = future
        if isinstance(outcome, StreamPosition):
            return outcome
        future = asyncio.ensure_future(outcome)
        self._subscribing[key] = future
        future.add_done_callback(lambda _: self._subscribing.pop(key, None))
        return future

    def _missed(
        self, channel: str, request: Subscribe, position: StreamPosition
    ) -> Pending[list[tuple[int, bytes, bytes]] | None]:
        if request.since is None:
            return None
        since_offset, since_epoch = request.since
        if since_epoch != position.epoch:
            return None
        return self.broker.history(channel, StreamPosition(since_offset, since_epoch), position.offset)

    async def _subscribe_later(
        self, session: Any, request: Subscribe, key: bytes, position: Pending[StreamPosition]
    ) -> None:
        channel = request.channel
        try:
            if not isinstance(position, StreamPosition):
                position = await position
            missed = self._missed(channel, request, position)
            if isinstance(missed, Awaitable):
                missed = await missed
        except BrokerError as exc:
            if self._still_subscribed(session, channel):
                session.forget_channel(channel)
                self._unsubscribe_channel(session, channel)
                session.send_text(err_reply(request.id, exc.code, str(exc)))
            return
        if not self._still_subscribed(session, channel):
            return  # gone, or unsubscribed meanwhile
        kept = self.hub.release(key, session.raw)
        self._answer(session, request, key, position, missed, kept)

    @staticmethod
    def _still_subscribed(session: Any, channel: str) -> bool:
        return session.raw is not None and not session.raw.is_closing() and session.has_channel(channel)

    def _answer(
        self,
        session: Any,
        request: Subscribe,
        key: bytes,
        position: StreamPosition,
        missed: list[tuple[int, bytes, bytes]] | None,
        kept: list[tuple[int, bytes]] = (),
    ) -> None:
        reply: dict[str, Any] = {"off": position.offset, "epoch": position.epoch}
        if request.since is not None:
            reply["recovered"] = missed is not None
            self.counters.resume(missed is not None)
        reply["worker"] = self.worker_slot
        session.send_text(ok_reply(request.id, **reply))
        frames = []
        last = position.offset
        if missed:
            name = request.channel.encode()
            frames = [
                msg_frame(name, offset, data, from_json(sender) if sender else b"") for offset, data, sender in missed
            ]
        # Live messages that arrived while we waited: only those after what the session was told;
        # after a gap notice, everything (the offsets continue after the gap's).
        after_gap = False
        for offset, frame in kept:
            if after_gap or offset == GAP_NOTICE or offset > last:
                frames.append(frame)
                after_gap = after_gap or offset == GAP_NOTICE
        if frames:
            self.hub.write_to(session, b"".join(frames))

    def subscribe_again(self, session: Any, request: Subscribe) -> None:
        """A `sub` of a channel the session holds already: its position, nothing replayed twice."""
        key = request.channel.encode()
        if key in self._subscribing or (key, session.raw) in self.hub.held:
            # Its first `sub` is still being answered; that answer carries the position.
            session.send_text(ok_reply(request.id, worker=self.worker_slot))
            return
        position = self.broker.position(request.channel)
        reply: dict[str, Any] = {"off": position.offset, "epoch": position.epoch}
        if request.since is not None:
            # Everything after the first subscription has been delivered on this connection already.
            reply["recovered"] = True
            self.counters.resume(True)
        reply["worker"] = self.worker_slot
        session.send_text(ok_reply(request.id, **reply))

    def unsubscribe(self, session: Any, channel: str) -> None:
        self._unsubscribe_channel(session, channel)

    def _unsubscribe_channel(self, session: Any, channel: str) -> None:
        self.subscriptions -= 1
        key = channel.encode()
        if self.hub.remove(key, session.raw) and key not in self._subscribing:
            self.broker.unsubscribe(channel)
        elif not self.hub.has_subscribers(key) and key in self._subscribing:
            # The broker's subscribe is still pending: drop the interest once it has been taken.
            self._subscribing[key].add_done_callback(lambda f: self._drop_if_unwanted(key, channel, f))

    def _drop_if_unwanted(self, key: bytes, channel: str, future: asyncio.Future) -> None:
        if not future.cancelled() and future.exception() is None and not self.hub.has_subscribers(key):
            self.broker.unsubscribe(channel)

    def _cut_off_slow_reader(self, session: Any) -> None:
        """A subscriber whose unsent bytes passed the limit: close it (1013) rather than grow our memory."""
        raw = session.raw
        if raw is None or raw.is_closing():
            return
        self.counters.counts[SLOW_DISCONNECTS] += 1
        # A warning, so rate-limited (wsd.server.logs): a crowd of slow readers is one line per 10 s.
        log.warning(
            "worker %d: slow reader cut off (%d bytes unsent; limit %d)",
            self.worker_slot, raw.get_write_buffer_size(), self.write_buffer_limit, extra=session.log_fields(),
        )  # fmt: skip
        # close() drops its subscriptions and aborts it if it does not take the close frame either.
        session.close(WSCloseCode.TRY_AGAIN_LATER, "too slow: write buffer limit exceeded")

    def drop_subscriptions(self, session: Any) -> None:
        for channel in session.take_channels():
            self._unsubscribe_channel(session, channel)

    def publish_for_client(self, session: Any, request: Publish) -> None:
        """A client's `pub`: answered with `ok` and the offset, or `err`. With auth on, the message
        carries the client's user id, which its deliveries show as `from`."""
        user = session.user
        try:
            outcome = self.publish(request.channel, request.data_json, user.encode() if user else b"", "client")
        except BrokerError as exc:
            session.send_text(err_reply(request.id, _publish_error_code(exc), str(exc)))
            return
        if isinstance(outcome, int):
            session.send_text(ok_reply(request.id, off=outcome))
            return
        outcome.add_done_callback(lambda future: _answer_publish(session, request.id, future))

    # -- publishing: one path for clients and the API --

    def publish(self, channel: str, data_json: bytes, sender: bytes = b"", source: str = "api") -> Pending[int]:
        """Put a message on the broker now (from client user `sender`; b"": the API): its offset, or
        a future of it. Raises BrokerError.

        `source` is where it entered this worker (`client`, `api`; `cluster` for messages another
        host published, once the cluster bus can tell them apart): wsd_messages_published_total."""
        outcome = self.broker.publish(channel, data_json, sender)
        self.counters.published(source)
        if isinstance(outcome, int):
            return outcome
        return asyncio.ensure_future(outcome)

    def publish_batch_api(
        self, items: list[tuple[str, bytes]]
    ) -> tuple[list[int], asyncio.Future | None, tuple[int, BrokerError] | None] | None:
        """The publish API's batch in one call to the broker, when it takes batches (the
        shared-memory bus, and Redis with every item pipelined): see ShmBroker.publish_batch for
        what it returns. None when the broker does not; the caller publishes item by item then."""
        publish_batch = getattr(self.broker, "publish_batch", None)
        if publish_batch is None:
            return None
        outcome = publish_batch(items)
        self.counters.published("api", len(outcome[0]))
        return outcome

    # -- the server API, for this worker's sessions (wsd.server.worker.server_api gathers workers) --

    def disconnect_user(self, user: str) -> int:
        """Close every local connection of `user` with 4000; how many there were."""
        closed = 0
        for session in self.users.sessions_of(user):
            raw = session.raw
            if raw is None or raw.is_closing():
                continue
            log.info("worker %d: connection closed by the server API", self.worker_slot, extra=session.log_fields())
            session.close(DISCONNECTED_BY_SERVER, "disconnected by the server")
            closed += 1
        return closed

    def unsubscribe_user(self, user: str, channel: str) -> int:
        """End `user`'s subscriptions to `channel` here (each told with an `unsub` notice); how many."""
        ended = 0
        for session in self.users.sessions_of(user):
            if session.forget_channel(channel):
                self._unsubscribe_channel(session, channel)
                session.send_text(unsub_notice(channel))
                ended += 1
        return ended

    def channel_subscribers(self, channel: str | None = None) -> dict[str, int]:
        """Local subscriber connections per channel: of every channel, or of `channel` alone."""
        by_channel = self.hub.by_channel  # keyed by the channel's name (bytes)
        if channel is not None:
            members = by_channel.get(channel.encode())
            return {channel: len(members)} if members else {}
        return {name.decode(): len(members) for name, members in by_channel.items() if members}


def from_json(sender: bytes) -> bytes:
    """A delivery's `from`: the publishing user's id as a JSON string."""
    return orjson.dumps(sender.decode("utf-8", "replace"))


def _publish_error_code(exc: BrokerError) -> str:
    return exc.code if exc.code in (PUBLISH_FAILED, UNAVAILABLE) else PUBLISH_FAILED


def _answer_publish(session: Any, request_id: Any, future: asyncio.Future) -> None:
    if future.cancelled():
        session.send_text(err_reply(request_id, PUBLISH_FAILED, "publish cancelled"))
        return
    exc = future.exception()
    if exc is None:
        session.send_text(ok_reply(request_id, off=future.result()))
    elif isinstance(exc, BrokerError):
        session.send_text(err_reply(request_id, _publish_error_code(exc), str(exc)))
    else:
        log.error("publish failed", exc_info=exc)
        session.send_text(err_reply(request_id, PUBLISH_FAILED, f"internal error: {exc!r}"))
