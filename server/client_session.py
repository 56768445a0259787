"""One `/ws` client: JSON requests in (server.protocol), replies and deliveries out.

Deliveries do not pass through here: the worker's SubscriberIndex writes pre-encoded frames to the
raw transport. This class only handles the client's own requests and its lifecycle.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from picows import WSCloseCode, WSMsgType

from wsd.ext.frames import msg_frame
from wsd.server.protocol import (
    TOO_MANY_SUBSCRIPTIONS,
    ErrorReply,
    Publish,
    Subscribe,
    Unsubscribe,
    err_reply,
    ok_reply,
    parse_request,
)
from wsd.server.ws_conformance import ConformingListener

if TYPE_CHECKING:
    from wsd.server.worker import Worker


class ClientSession(ConformingListener):
    # Per-connection state is kept tiny: 200k of these live in one box.
    __slots__ = ("worker", "raw", "channels")

    def __init__(self, worker: Worker, max_message_size: int):
        super().__init__(max_message_size)
        self.worker = worker
        self.raw = None
        self.channels: set[str] | None = None

    def on_ws_connected(self, transport) -> None:
        super().on_ws_connected(transport)
        self.raw = transport.underlying_transport
        self.worker.session_opened(self)

    def on_ws_disconnected(self, transport) -> None:
        self.worker.session_closed(self)
        super().on_ws_disconnected(transport)

    def send_text(self, payload: bytes) -> None:
        if not self.transport.is_disconnected:
            self.transport.send(WSMsgType.TEXT, payload)

    def on_message(self, is_text: bool, payload: bytes) -> None:
        if not is_text:
            self.close(WSCloseCode.UNSUPPORTED_DATA, "binary messages are not supported; send JSON text")
            return
        worker = self.worker
        worker.msgs_in += 1
        request = parse_request(payload)
        if isinstance(request, ErrorReply):
            self.send_text(request.encode())
        elif isinstance(request, Subscribe):
            self._subscribe(request)
        elif isinstance(request, Unsubscribe):
            if self.channels is not None and request.channel in self.channels:
                self.channels.discard(request.channel)
                worker.unsubscribe(self, request.channel)
            self.send_text(ok_reply(request.id))
        elif isinstance(request, Publish):
            worker.publish_for_client(self, request)

    def _subscribe(self, request: Subscribe) -> None:
        if self.channels is None:
            self.channels = set()
        if request.channel not in self.channels:
            if len(self.channels) >= self.worker.config.max_subscriptions:
                self.send_text(
                    err_reply(
                        request.id,
                        TOO_MANY_SUBSCRIPTIONS,
                        f"at most {self.worker.config.max_subscriptions} subscriptions per connection",
                    )
                )
                return
            self.channels.add(request.channel)
            epoch, offset = self.worker.subscribe(self, request.channel)
        else:
            epoch, offset = self.worker.channel_position(request.channel)
        worker_slot = self.worker.slot
        if request.since is None:
            self.send_text(ok_reply(request.id, off=offset, epoch=epoch, worker=worker_slot))
            return
        # Resume: the missed messages, then (from the bus) live ones. Nothing else runs between
        # here and the last replayed frame, so no live message can slip in between.
        since_off, since_epoch = request.since
        missed = None
        if since_epoch == epoch:
            missed = self.worker.history(request.channel, epoch, since_off, offset)
        self.send_text(ok_reply(request.id, off=offset, epoch=epoch, recovered=missed is not None, worker=worker_slot))
        if missed:
            channel = request.channel.encode()
            for off, data in missed:
                self.raw.write(msg_frame(channel, off, data))

    def drop_subscriptions(self) -> None:
        if self.channels:
            for channel in self.channels:
                self.worker.unsubscribe(self, channel)
        self.channels = None
