"""The bus engine's ordering rules, with several engines in one process over real segments.

No sockets: doorbells are recorded, and the test decides when each engine reads its rings, which
lets it produce the interleavings that matter (subscribe racing a publish, a lagging reader, a
respawned owner).
"""

from __future__ import annotations

import os
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ext.hashing import channel_hash
from server.bus.engine import BusEngine
from server.bus.segment import Segment, SegmentLayout


class Cluster:
    def __init__(self, workers: int, ring_capacity: int = 1 << 16):
        self.run_id = uuid.uuid4().hex[:8]
        layout = SegmentLayout(ring_capacity, 1024)
        self.paths = [f"/dev/shm/wsd-test-{self.run_id}-slot{i}" for i in range(workers)]
        self.segments = [Segment.create(p, i, workers, 77, layout) for i, p in enumerate(self.paths)]
        self.delivered: list[list[tuple[str, int, bytes]]] = [[] for _ in range(workers)]
        self.acks: list[dict[int, int]] = [{} for _ in range(workers)]
        self.doorbells: list[int] = []
        self.engines = [self.start(i) for i in range(workers)]

    def start(self, slot: int) -> BusEngine:
        segments = [Segment.attach(p) for p in self.paths]

        def deliver(_h, channel, _epoch, offset, data, _ts):
            self.delivered[slot].append((channel.decode(), offset, data))

        def acknowledge(token, offset):
            self.acks[slot][token] = offset

        return BusEngine(slot, segments, deliver, acknowledge, self.doorbells.append)

    def poll_all(self) -> None:
        for _ in range(3):
            for engine in self.engines:
                engine.poll()

    def channel_owned_by(self, slot: int, prefix: str = "ch") -> str:
        for n in range(10_000):
            name = f"{prefix}{n}"
            if channel_hash(name.encode()) % len(self.engines) == slot:
                return name
        raise AssertionError("no channel found")

    def close(self) -> None:
        for path in self.paths:
            os.unlink(path)


@pytest.fixture
def cluster():
    clusters = []

    def make(workers: int, **kwargs) -> Cluster:
        clusters.append(Cluster(workers, **kwargs))
        return clusters[-1]

    yield make
    for c in clusters:
        c.close()


def test_owner_publish_is_sequenced_at_once_and_rings_interested_slots(cluster):
    c = cluster(3)
    channel = c.channel_owned_by(0)
    assert c.engines[2].subscribe(channel) == (77, 0)
    offset, token = c.engines[0].publish(channel, b'"a"')
    assert (offset, token) == (1, 0)
    assert c.doorbells == [2]  # only the slot with a subscriber is woken
    c.engines[2].poll()
    assert c.delivered[2] == [(channel, 1, b'"a"')]
    assert c.delivered[1] == []


def test_non_owner_publish_goes_through_the_owner_and_is_acknowledged(cluster):
    c = cluster(2)
    channel = c.channel_owned_by(0)
    c.engines[1].subscribe(channel)
    offset, token = c.engines[1].publish(channel, b"1")
    assert offset == 0 and token != 0
    assert 0 in c.doorbells
    c.engines[0].poll()  # the owner sequences
    c.engines[1].poll()  # the publisher reads the MSG: delivery and acknowledgement
    assert c.acks[1] == {token: 1}
    assert c.delivered[1] == [(channel, 1, b"1")]


def test_subscribe_reports_the_offset_after_which_every_message_is_delivered(cluster):
    c = cluster(2)
    channel = c.channel_owned_by(0)
    for n in range(5):
        c.engines[0].publish(channel, str(n).encode())
    # Slot 1 has never read the owner's ring: subscribing catches up without delivering the past.
    epoch, offset = c.engines[1].subscribe(channel)
    assert offset == 5
    c.engines[0].publish(channel, b"5")
    c.engines[1].poll()
    assert c.delivered[1] == [(channel, 6, b"5")]


def test_pending_publish_survives_a_respawn_of_the_owner(cluster):
    c = cluster(2)
    channel = c.channel_owned_by(0)
    c.engines[1].subscribe(channel)
    c.engines[0].publish(channel, b"before")
    c.engines[1].publish(channel, b"while-down")  # the owner is "down": nobody polls it
    c.engines[0] = c.start(0)  # a fresh incarnation of slot 0 on the same segment
    c.poll_all()
    assert [(off, data) for _, off, data in c.delivered[1]] == [(1, b"before"), (2, b"while-down")]


def test_reader_lapped_by_a_writer_counts_an_overrun_and_a_gap(cluster):
    c = cluster(2, ring_capacity=1 << 14)
    channel = c.channel_owned_by(0)
    c.engines[1].subscribe(channel)
    for _ in range(400):  # ~40 KiB through a 16 KiB ring while slot 1 does not read
        c.engines[0].publish(channel, b'"' + b"x" * 80 + b'"')
    c.engines[0].publish(channel, b'"last"')
    c.engines[1].poll()
    engine = c.engines[1]
    assert engine.overruns >= 1 and engine.lost_bytes > 0
    assert engine.gaps >= 1 or c.delivered[1] == []
    assert all(data != b"" for _, _, data in c.delivered[1])


@settings(max_examples=30, deadline=None)
@given(
    plan=st.lists(
        st.tuples(st.integers(0, 2), st.integers(0, 3), st.booleans()), min_size=1, max_size=60
    )
)
def test_every_subscriber_gets_each_message_once_in_offset_order(plan):
    """Random publishes from random slots on random channels, with random poll timing."""
    c = Cluster(3)
    try:
        channels = [f"room{n}" for n in range(4)]
        starts = {}
        for slot in range(3):
            for name in channels:
                starts[(slot, name)] = c.engines[slot].subscribe(name)[1]
        published: dict[str, int] = {}
        for slot, channel_index, poll_now in plan:
            name = channels[channel_index]
            c.engines[slot].publish(name, b"0")
            published[name] = published.get(name, 0) + 1
            if poll_now:
                c.engines[(slot + 1) % 3].poll()
        c.poll_all()
        for slot in range(3):
            for name in channels:
                offsets = [off for ch, off, _ in c.delivered[slot] if ch == name]
                start = starts[(slot, name)]
                assert offsets == list(range(start + 1, start + 1 + published.get(name, 0)))
    finally:
        c.close()
