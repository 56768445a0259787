"""The bus engine's cluster-mode additions, with engines over real segments in one process: messages
sequenced elsewhere (Redis) appended by a channel's role holder, table moves, and other layers'
records read in ring order among the messages."""

from __future__ import annotations

import os

import pytest

from wsd.ext.hashing import ChannelHasher
from wsd.server.bus.engine import FIRST_OTHER_TAG, BusEngine, BusError
from wsd.server.bus.segment import Segment, SegmentLayout


class Host:
    """Two roles held by the engines of bus slots 0 and 1 (out of 4)."""

    def __init__(self):
        layout = SegmentLayout(1 << 16, 1024)
        secret = os.urandom(32)
        self.hash = ChannelHasher(secret).hash
        self.segments = [Segment.create(i, 2, 77, layout, secret) for i in range(4)]
        self.events: list[list[tuple]] = [[] for _ in range(4)]
        self.engines = [self.start(slot) for slot in range(2)]

    def start(self, slot: int) -> BusEngine:
        events = self.events[slot]
        engine = BusEngine(slot, [Segment.attach(os.dup(segment.fd)) for segment in self.segments],
                           lambda _h, channel, epoch, offset, data, _ts, sender: events.append(
                               ("msg", channel, epoch, offset, data) + ((sender,) if sender else ())),
                           lambda token, offset: None, lambda _slot: None, role=slot)  # fmt: skip
        engine.on_record = lambda ring, tag, payload: events.append(("record", ring, tag, payload))
        return engine

    def channel_of_role(self, role: int) -> bytes:
        return next(name for n in range(1000) if self.hash(name := f"c{n}".encode())[0] % 2 == role)

    def close(self):
        for segment in self.segments:
            segment.close()


@pytest.fixture
def host():
    made = Host()
    yield made
    made.close()


def test_messages_sequenced_elsewhere_are_delivered_in_ring_order_with_other_records(host):
    owner, other = host.engines
    channel = host.channel_of_role(0)
    assert other.subscribe(channel.decode()) == (77, 0)  # nothing in the table yet: the segment's epoch
    owner.set_position(channel, 123456, 40)
    assert owner.table_position(channel) == (123456, 40) == other.table_position(channel)
    other.unsubscribe(channel.decode())
    assert other.subscribe(channel.decode()) == (123456, 40)
    owner.append_external(channel, 123456, 41, 1_000, b'"a"')
    owner.append_record(FIRST_OTHER_TAG + 2, b"between")
    owner.append_external(channel, 123456, 42, 2_000, b'"b"', b"user-42")  # published by a client
    other.poll()
    assert host.events[1] == [
        ("msg", channel, 123456, 41, b'"a"'),
        ("record", 0, FIRST_OTHER_TAG + 2, b"between"),
        ("msg", channel, 123456, 42, b'"b"', b"user-42"),
    ]
    assert other.position(channel.decode()) == (123456, 42)


def test_appended_messages_form_a_history_chain_that_a_jump_cuts(host):
    owner, other = host.engines
    channel = host.channel_of_role(0)
    for offset in range(1, 6):
        owner.append_external(channel, 5, offset, 10**18 + offset, b"%d" % offset)
    assert other.history(channel.decode(), 5, 2, 5, 100, 0) == [(3, b"3", b""), (4, b"4", b""), (5, b"5", b"")]
    owner.set_position(channel, 5, 9)  # messages 6..9 never reached this ring
    owner.append_external(channel, 5, 10, 10**18 + 10, b"10")
    assert other.history(channel.decode(), 5, 9, 10, 100, 0) == [(10, b"10", b"")]
    assert other.history(channel.decode(), 5, 5, 10, 100, 0) is None
    assert other.history(channel.decode(), 6, 9, 10, 100, 0) is None  # another epoch


def test_only_the_role_holder_appends_or_moves_a_channel(host):
    owner, other = host.engines
    channel = host.channel_of_role(0)
    with pytest.raises(BusError):
        other.append_external(channel, 1, 1, 1, b"1")
    with pytest.raises(BusError):
        other.set_position(channel, 1, 1)
    with pytest.raises(ValueError):
        owner.append_record(1, b"a MSG tag")


def test_a_restarted_channel_continues_after_its_new_position(host):
    owner, other = host.engines
    channel = host.channel_of_role(0)
    other.subscribe(channel.decode())
    owner.append_external(channel, 5, 1, 1, b"1")
    other.poll()
    assert other.restart_tracked(channel, 9, 30)
    assert not other.restart_tracked(host.channel_of_role(1), 9, 30)  # not tracked here
    owner.set_position(channel, 9, 30)
    owner.append_external(channel, 9, 31, 2, b"31")
    other.poll()
    assert [e[2:4] for e in host.events[1] if e[0] == "msg"] == [(5, 1), (9, 31)]
    assert other.gaps == 0


def test_interest_marks_are_visible_to_the_role_holder(host):
    owner, other = host.engines
    channel = host.channel_of_role(0)
    assert not owner.marks_interest(1, channel)
    other.subscribe(channel.decode())
    assert owner.marks_interest(1, channel)
    assert owner.role_holder(0) == 0 and owner.role_holder(1) == 1
    assert owner.role_of_channel(channel) == 0
