"""The node answers a `sub` before any live message reaches the subscriber, even when the broker
delivers while it subscribes: the shared-memory bus catches up on its rings inside `subscribe()`, so a
message in flight is fanned out before the position is known (found by the chaos test: a client that
resumed on a freshly respawned worker got offset 33, then `ok` off 33 recovered, then 32 and 33 again)."""

from __future__ import annotations

import orjson

from wsd.ext.frames import msg_frame
from wsd.server.node.broker import StreamPosition
from wsd.server.node.node import Node
from wsd.server.protocol import Subscribe
from wsd.server.stats import WorkerCounters

CHANNEL = "news"
EPOCH = 3


class RawTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return False


class Session:
    """What the node needs of a client session; text replies land on the same transport as frames."""

    def __init__(self) -> None:
        self.raw = RawTransport()
        self.channels = {CHANNEL}
        self.deflate = None  # permessage-deflate not negotiated

    def send_text(self, payload: bytes) -> None:
        self.raw.write(b"TEXT " + payload)

    def has_channel(self, channel: str) -> bool:
        return channel in self.channels

    def forget_channel(self, channel: str) -> bool:
        return self.channels.discard(channel) is None


class CatchingUpBroker:
    """Like the shared-memory bus: the table says offset 32, then `subscribe` catches up on the rings
    and delivers offset 33 (in flight until then) before it returns the position it reached."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.offset = 32

    def unavailable(self, channel: str) -> None:
        return None

    def subscribe(self, channel: str) -> StreamPosition:
        self.offset = 33
        self.node.deliver(0, channel.encode(), EPOCH, 33, b'"m33"', 0, b"")
        self.node.deliveries_done()
        return StreamPosition(self.offset, EPOCH)

    def position(self, channel: str) -> StreamPosition:
        return StreamPosition(self.offset, EPOCH)

    def history(self, channel: str, since: StreamPosition, upto: int) -> list[tuple[int, bytes, bytes]]:
        return [(offset, b'"m%d"' % offset, b"") for offset in range(since.offset + 1, upto + 1)]


def subscribe(since: tuple[int, int] | None) -> list[bytes]:
    node = Node(WorkerCounters(), 0, 100, 1 << 20, 5.0, lambda s: None, lambda s: None)
    node.broker = CatchingUpBroker(node)
    session = Session()
    node.subscribe(session, Subscribe(1, CHANNEL, since))
    return session.raw.writes


def test_a_resume_on_a_fresh_worker_gets_its_ok_then_each_missed_message_once_in_order():
    writes = subscribe(since=(31, EPOCH))
    assert writes[0].startswith(b"TEXT "), f"a message reached the client before its ok: {writes[0][:80]!r}"
    reply = orjson.loads(writes[0][5:])
    assert reply["off"] == 33 and reply["recovered"] is True
    assert b"".join(writes[1:]) == msg_frame(b"news", 32, b'"m32"') + msg_frame(b"news", 33, b'"m33"')


def test_a_first_subscriber_gets_its_ok_first_and_nothing_at_or_before_its_position():
    writes = subscribe(since=None)
    assert writes[0].startswith(b"TEXT ") and orjson.loads(writes[0][5:])["off"] == 33
    assert writes[1:] == [], "offset 33 is the position the ok gave: not delivered again"
