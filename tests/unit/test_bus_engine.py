"""The bus engine's ordering rules, with several engines in one process over real segments.

No sockets: doorbells are recorded, and the test decides when each engine reads its rings, which
lets it produce the interleavings that matter (subscribe racing a publish, a lagging reader, a
respawned owner).
"""

from __future__ import annotations

import os
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsd.ext.hashing import ChannelHasher
from wsd.server.bus.engine import BusEngine, BusError
from wsd.server.bus.segment import Segment, SegmentLayout


class Cluster:
    """`workers` roles, each held by the engine on the bus slot of the same number; twice as many
    bus slots, as in wsd, so a test can add a stand-by engine on bus slot workers + n."""

    def __init__(self, workers: int, ring_capacity: int = 1 << 16, table_slots: int = 1024, hasher=None):
        layout = SegmentLayout(ring_capacity, table_slots)
        secret = os.urandom(32)
        self.hasher = hasher or ChannelHasher(secret).hash
        self.segments = [Segment.create(i, workers, 77, layout, secret) for i in range(2 * workers)]
        self.delivered: list[list[tuple[str, int, bytes]]] = [[] for _ in range(2 * workers)]
        self.senders: list[list[bytes]] = [[] for _ in range(2 * workers)]
        self.acks: list[dict[int, int]] = [{} for _ in range(2 * workers)]
        self.doorbells: list[int] = []
        self.workers = workers
        self.engines = [self.start(i, role=i) for i in range(workers)]

    def start(self, slot: int, role: int | None = None) -> BusEngine:
        # Each engine maps the memfds through descriptors of its own, as a worker does.
        segments = [Segment.attach(os.dup(segment.fd)) for segment in self.segments]

        def deliver(_h, channel, _epoch, offset, data, _ts, sender):
            self.delivered[slot].append((channel.decode(), offset, data))
            self.senders[slot].append(sender)

        def acknowledge(token, offset):
            self.acks[slot][token] = offset

        return BusEngine(slot, segments, deliver, acknowledge, self.doorbells.append, role=role, hasher=self.hasher)

    def poll_all(self) -> None:
        for _ in range(3):
            for engine in self.engines:
                engine.poll()

    def channel_owned_by(self, slot: int, prefix: str = "ch") -> str:
        for n in range(10_000):
            name = f"{prefix}{n}"
            if self.hasher(name.encode())[0] % self.workers == slot:
                return name
        raise AssertionError("no channel found")

    def close(self) -> None:
        for segment in self.segments:
            segment.close()


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


def test_the_publishing_users_id_travels_with_the_message_to_deliveries_and_history(cluster):
    c = cluster(2)
    channel = c.channel_owned_by(0)
    epoch, _ = c.engines[1].subscribe(channel)
    c.engines[0].publish(channel, b"1", "zoë".encode())  # sequenced at once by the owner
    c.engines[1].publish(channel, b"2", b"42")  # a PUBREQ to the owner
    c.engines[1].publish(channel, b"3")  # an API publish: no sender
    c.poll_all()
    assert c.delivered[1] == [(channel, 1, b"1"), (channel, 2, b"2"), (channel, 3, b"3")]
    assert c.senders[1] == ["zoë".encode(), b"42", b""]
    assert c.engines[1].history(channel, epoch, 0, 3, 100, 0) == [(1, b"1", "zoë".encode()), (2, b"2", b"42"),
                                                                  (3, b"3", b"")]  # fmt: skip


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
    c.engines[0] = c.start(0, role=0)  # a fresh process on the same bus slot
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
    assert engine.gaps == 1
    # What the ring still holds is delivered (in order, from the oldest intact message on), not
    # only what comes after the overrun: a 16 KiB ring holds well over 100 of these 120-byte MSGs.
    offsets = [off for _, off, _ in c.delivered[1]]
    assert offsets == list(range(offsets[0], 402)) and len(offsets) > 100
    assert c.delivered[1][-1][2] == b'"last"'


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


def test_rolling_hand_over_of_a_role_keeps_offsets_and_pending_requests(cluster):
    c = cluster(2)
    channel = c.channel_owned_by(0)
    c.engines[1].subscribe(channel)
    c.engines[0].publish(channel, b"1")
    standby = c.start(2)  # the new process for slot 0 joins on a spare bus slot, without a role
    standby.subscribe(channel)
    offset, token = standby.publish(channel, b"2")  # addressed to role 0, still held by the old one
    assert offset == 0
    c.engines[0].poll()  # the old holder sequences it
    standby.publish(channel, b"3")  # pending while the old process exits
    c.engines[0] = None
    standby.take_role(0)  # the supervisor hands role 0 over once the old process is gone
    assert standby.publish(channel, b"4") == (4, 0)
    assert c.segments[0].role_holder() == 2
    standby.poll()
    c.engines[1].poll()
    assert [(off, data) for _, off, data in c.delivered[1]] == [(1, b"1"), (2, b"2"), (3, b"3"), (4, b"4")]
    assert [(off, data) for _, off, data in c.delivered[2]] == [(2, b"2"), (3, b"3"), (4, b"4")]
    assert token in c.acks[2]


def test_history_replays_across_rings_and_reports_what_is_gone(cluster):
    c = cluster(2)
    channel = c.channel_owned_by(0)
    for n in range(1, 6):
        c.engines[0].publish(channel, str(n).encode())
    standby = c.start(2)
    c.engines[0] = None
    standby.take_role(0)
    for n in range(6, 9):
        standby.publish(channel, str(n).encode())
    reader = c.engines[1]
    epoch, current = reader.subscribe(channel)
    assert current == 8
    history = reader.history(channel, epoch, 2, 8, 100, 0)
    assert history == [(n, str(n).encode(), b"") for n in range(3, 9)]
    assert reader.history(channel, epoch, 0, 8, 5, 0) is None  # more than max_count
    assert reader.history(channel, epoch + 1, 2, 8, 100, 0) is None  # another epoch
    assert reader.history(channel, epoch, 2, 8, 100, time.time_ns() + 10**9) is None  # too old
    assert reader.history(channel, epoch, 8, 8, 100, 0) == []


def test_history_is_gone_once_the_ring_overwrote_it(cluster):
    c = cluster(2, ring_capacity=1 << 14)
    channel = c.channel_owned_by(0)
    other = c.channel_owned_by(0, prefix="other")
    c.engines[0].publish(channel, b"old")
    for _ in range(300):
        c.engines[0].publish(other, b'"' + b"x" * 100 + b'"')
    c.engines[0].publish(channel, b"new")
    epoch, current = c.engines[1].subscribe(channel)
    assert c.engines[1].history(channel, epoch, 1, 2, 100, 0) == [(2, b"new", b"")]
    assert c.engines[1].history(channel, epoch, 0, 2, 100, 0) is None


# -- one bad entry never wedges a bus or sequences a publish twice (issue 9, item 6) --


def test_a_bad_entry_is_skipped_and_counted_and_nothing_before_it_is_sequenced_again(cluster):
    from wsd.ext.record import TAG_PUBREQ

    c = cluster(2)
    channel = c.channel_owned_by(0)
    c.engines[1].subscribe(channel)
    c.engines[1].publish(channel, b'"a"')
    # A PUBREQ addressed to role 0 whose body does not decode (its length fields lie).
    garbage = bytearray(64)
    garbage[28:30] = (0).to_bytes(2, "little")  # target_slot 0
    garbage[24:28] = (10_000).to_bytes(4, "little")  # data_len far beyond the payload
    garbage[32] = 3
    c.segments[1].ring.append(TAG_PUBREQ, bytes(garbage))
    c.engines[1].publish(channel, b'"b"')
    owner = c.engines[0]
    owner.poll()
    owner.poll()  # a retry must not sequence "a" again
    c.engines[1].poll()
    assert owner.bad_entries == 1
    assert c.delivered[1] == [(channel, 1, b'"a"'), (channel, 2, b'"b"')]
    assert sorted(c.acks[1].values()) == [1, 2]


def test_a_publish_that_fits_the_ring_as_a_request_but_not_as_a_message_is_refused_at_once(cluster):
    from wsd.server.bus.engine import MessageTooLarge

    c = cluster(2, ring_capacity=1 << 14)
    channel = c.channel_owned_by(0)
    ring_max = c.segments[0].ring.max_payload
    data = b"1" * (ring_max - 34 - len(channel) - 8)  # a PUBREQ fits, the MSG (18 bytes more) does not
    with pytest.raises(MessageTooLarge, match="too large"):
        c.engines[1].publish(channel, data)
    with pytest.raises(MessageTooLarge, match="too large"):
        c.engines[0].publish(channel, data)  # on the owner too: never a bare ValueError from the ring
    assert c.engines[1].max_data_size(channel) < len(data)
    fits = b"1" * c.engines[1].max_data_size(channel)
    c.engines[1].subscribe(channel)
    assert c.engines[1].publish(channel, fits)[1] != 0
    c.poll_all()
    assert c.engines[0].bad_entries == 0
    assert c.delivered[1] == [(channel, 1, fits)]


# -- channel identity: keyed hashes, names compared (issue 9, item 10) --


def test_two_channels_whose_hashes_collide_keep_apart_offsets_deliveries_and_history(cluster):
    real = ChannelHasher(os.urandom(32)).hash

    def colliding(name: bytes) -> tuple[int, int]:
        return 4242, real(name)[1]  # every name has the same h1: one role, bucket and probe run

    c = cluster(2, hasher=colliding)
    alpha, beta = "alpha", "beta"
    c.engines[1].subscribe(alpha)
    c.engines[0].subscribe(beta)
    for n in range(3):
        assert c.engines[0].publish(alpha, f'"a{n}"'.encode()) == (n + 1, 0)
    tokens = [c.engines[1].publish(beta, f'"b{n}"'.encode())[1] for n in range(2)]
    c.poll_all()
    assert c.delivered[1] == [(alpha, n + 1, f'"a{n}"'.encode()) for n in range(3)]
    assert c.delivered[0] == [(beta, n + 1, f'"b{n}"'.encode()) for n in range(2)]
    assert [c.acks[1][t] for t in tokens] == [1, 2]
    epoch, _ = c.engines[1].position(alpha)
    assert c.engines[1].history(alpha, epoch, 0, 3, 100, 0) == [(n + 1, f'"a{n}"'.encode(), b"") for n in range(3)]
    assert c.engines[1].history(beta, epoch, 0, 2, 100, 0) == [(n + 1, f'"b{n}"'.encode(), b"") for n in range(2)]
    assert len(c.segments[0].table) == 2


def test_the_engine_hashes_names_with_the_servers_secret(cluster):
    c = cluster(2)
    secret = c.segments[0].hash_secret
    engine = BusEngine(0, c.segments, lambda *a: None, lambda *a: None, lambda s: None)
    assert engine.hash(b"news") == ChannelHasher(secret).hash(b"news")
    assert len(secret) == 32 and secret != bytes(32)


# -- a full channel table (issue 9, item 1) --

FIXED = ChannelHasher(bytes(range(32))).hash


def test_a_full_table_forgets_the_least_recently_used_channel_nobody_subscribes_to(cluster):
    c = cluster(1, table_slots=1024, hasher=FIXED, ring_capacity=1 << 20)  # one role, held by engine 0
    owner, table = c.engines[0], c.segments[0].table
    reader = c.start(1)
    reader.subscribe("kept")
    owner.publish("kept", b'"k1"')  # the least recently used of all, but subscribed
    owner.publish("old", b'"o1"')
    old_epoch = table.get(*FIXED(b"old"))[0]
    for n in range(table.limit - 2):
        owner.publish(f"fill{n}", b"1")
    assert len(table) == table.limit
    assert owner.publish("new", b"1") == (1, 0)  # room made: not refused
    assert owner.evictions == 1
    assert table.get(*FIXED(b"old")) is None  # forgotten, its history with it
    assert reader.history("old", old_epoch, 0, 1, 100, 0) is None
    assert table.get(*FIXED(b"kept"))[1] == 1  # subscribed: never forgotten
    # Published again, the forgotten channel starts over in a new epoch: a resume from its old
    # epoch gets recovered:false, never the new messages as if they followed the old ones.
    assert owner.publish("old", b'"o2"') == (1, 0)
    assert table.get(*FIXED(b"old"))[0] != old_epoch
    owner.publish("kept", b'"k2"')
    reader.poll()
    assert reader.history("kept", reader.position("kept")[0], 0, 2, 100, 0) == [(1, b'"k1"', b""), (2, b'"k2"', b"")]
    assert [(ch, off) for ch, off, _ in c.delivered[1]] == [("kept", 1), ("kept", 2)]


def test_many_times_more_channels_than_slots_never_fail_and_subscribed_ones_stay(cluster):
    c = cluster(2, table_slots=1024)
    subscribed = [c.channel_owned_by(r, prefix=f"live{r}-") for r in (0, 1)]
    for channel in subscribed:
        c.engines[1].subscribe(channel)
    for n in range(20_000):  # ~20 times the table
        channel = subscribed[n // 1000 % 2] if n % 1000 == 0 else f"user:{n}"
        offset, token = c.engines[n % 2].publish(channel, b"1")
        assert offset or token
        if n % 500 == 0:
            c.poll_all()
    c.poll_all()
    assert c.engines[0].evictions + c.engines[1].evictions > 15_000
    got = [(ch, off) for ch, off, _ in c.delivered[1]]
    assert got == [(subscribed[k % 2], k // 2 + 1) for k in range(20)]


def test_a_channel_subscribed_after_it_was_forgotten_gets_the_epoch_it_comes_back_in(cluster):
    c = cluster(1, table_slots=1024, hasher=FIXED)
    owner, table = c.engines[0], c.segments[0].table
    owner.publish("gone", b"1")
    table.forget(*FIXED(b"gone"))  # as _make_room does
    reader = c.start(1)
    epoch, offset = reader.subscribe("gone")
    assert offset == 0
    owner.publish("gone", b"2")
    reader.poll()
    assert c.delivered[1] == [("gone", 1, b"2")]
    assert reader.position("gone") == (epoch, 1) and reader.gaps == 0


def test_a_table_full_of_subscribed_channels_refuses_new_ones_with_a_clear_error(cluster):
    c = cluster(1, table_slots=1024, hasher=FIXED)
    owner, table = c.engines[0], c.segments[0].table
    for n in range(table.limit):
        owner.subscribe(f"s{n}")
        owner.publish(f"s{n}", b"1")
    with pytest.raises(BusError, match="channel table full"):
        owner.publish("one-more", b"1")
    # Once a channel has no subscriber left, it is found within a few searches (each one looks at
    # the next channels in use): the table never stays full for good.
    owner.unsubscribe("s5")
    for _attempt in range(table.limit // 64 + 2):
        try:
            assert owner.publish("one-more", b"1") == (1, 0)
            break
        except BusError:
            pass
    else:
        raise AssertionError("the unsubscribed channel was never forgotten")
    assert table.get(*FIXED(b"s5")) is None


# -- a holder killed inside a table write (issue 9, item 7) --


def tear_entry(segment, h1: int, last_off: int) -> None:
    """What a holder killed inside ChannelTable.put leaves: seq odd, a field half written."""
    base = segment.layout.table_at + 64
    for index in range(segment.table.slots):
        at = base + 64 * index
        if int.from_bytes(segment.map[at + 8 : at + 16], "little") == h1:
            seq = int.from_bytes(segment.map[at : at + 8], "little")
            segment.map[at : at + 8] = (seq | 1).to_bytes(8, "little")
            segment.map[at + 24 : at + 32] = last_off.to_bytes(8, "little")
            return
    raise AssertionError("no such entry")


def test_the_next_holder_repairs_an_entry_its_predecessor_was_killed_writing(cluster):
    c = cluster(2)
    channel = c.channel_owned_by(0)
    c.engines[1].subscribe(channel)
    for n in range(3):
        c.engines[0].publish(channel, str(n).encode())
    tear_entry(c.segments[0], c.hasher(channel.encode())[0], 12345)
    c.engines[0] = None
    successor = c.start(2)
    started = time.monotonic()
    successor.take_role(0)  # before: every read of the entry spun 2 s and raised
    assert time.monotonic() - started < 1.0
    epoch, _ = c.engines[1].position(channel)
    assert successor.publish(channel, b"3") == (4, 0)  # restored from the ring: offsets go on
    c.engines[1].poll()
    assert [off for _, off, _ in c.delivered[1]] == [1, 2, 3, 4]
    assert c.engines[1].history(channel, epoch, 0, 4, 100, 0) == [(n + 1, str(n).encode(), b"") for n in range(4)]


def test_an_entry_the_rings_cannot_restore_is_forgotten_into_a_new_epoch(cluster):
    c = cluster(2)
    channel = c.channel_owned_by(0)
    c.engines[1].subscribe(channel)
    c.engines[0].publish(channel, b"0")
    c.poll_all()  # the holder's cursors now persist past its message: nothing to replay
    tear_entry(c.segments[0], c.hasher(channel.encode())[0], 12345)
    c.engines[0] = None
    successor = c.start(2)
    successor.take_role(0)
    old_epoch, _ = c.engines[1].position(channel)
    assert successor.publish(channel, b"1") == (1, 0)
    c.engines[1].poll()
    assert [off for _, off, _ in c.delivered[1]] == [1, 1]  # followed into the new epoch
    assert c.engines[1].position(channel)[0] != old_epoch


# -- exactly once across a SIGKILL of the sequencing worker (issue 9, item 8) --


def test_requests_a_killed_holder_sequenced_are_not_sequenced_again_by_the_next(cluster):
    c = cluster(2)
    channel = c.channel_owned_by(0)
    c.engines[1].subscribe(channel)
    tokens = [c.engines[1].publish(channel, str(n).encode())[1] for n in range(5)]
    persisted = [c.segments[0].cursor(slot) for slot in range(4)]
    c.engines[0].poll()  # sequences the five requests...
    for slot, position in enumerate(persisted):  # ...and is SIGKILLed before its cursors are stored
        c.segments[0].set_cursor(slot, position)
    c.engines[0] = None
    successor = c.start(2)
    successor.take_role(0)
    c.engines[0] = successor
    c.poll_all()
    assert [(off, data) for _, off, data in c.delivered[1]] == [(n + 1, str(n).encode()) for n in range(5)]
    assert [c.acks[1][t] for t in tokens] == [1, 2, 3, 4, 5]
    assert successor.publish(channel, b"5") == (6, 0)


# -- publish_batch: one call for a batch, the same offsets as item by item --


def test_a_batch_is_sequenced_in_order_with_one_wake_up_per_slot(cluster):
    c = cluster(2)
    own = [c.channel_owned_by(0, f"own{i}-") for i in range(3)]
    other = [c.channel_owned_by(1, f"other{i}-") for i in range(3)]
    for channel in own + other:
        c.engines[1].subscribe(channel)
    items = [(channel, str(n).encode()) for n in range(2) for channel in own + other]
    results = c.engines[0].publish_batch(items)
    # Ours sequenced at once, in batch order; the other role's as requests with tokens.
    assert [offset for offset, _ in results] == [1, 1, 1, 0, 0, 0, 2, 2, 2, 0, 0, 0]
    tokens = [token for _, token in results if token]
    assert len(set(tokens)) == 6 and all(token == 0 for _, token in results[:3])
    assert sorted(c.doorbells) == [1, 1], "one wake-up for the subscriber, one for the other role's holder"
    c.poll_all()
    assert c.acks[0] == dict(zip(tokens, [1, 1, 1, 2, 2, 2], strict=True))
    for channel in own + other:
        assert [(o, d) for ch, o, d in c.delivered[1] if ch == channel] == [(1, b"0"), (2, b"1")]


def test_a_batch_item_that_cannot_be_published_stops_the_batch_there(cluster):
    from wsd.server.bus.engine import BatchPublishError, MessageTooLarge

    c = cluster(2, ring_capacity=1 << 14)
    channel, remote = c.channel_owned_by(0), c.channel_owned_by(1)
    too_large = b"1" * c.segments[0].ring.max_payload
    with pytest.raises(BatchPublishError) as caught:
        c.engines[0].publish_batch([(channel, b"1"), (remote, b"2"), (channel, too_large), (channel, b"3")])
    assert caught.value.index == 2 and isinstance(caught.value.error, MessageTooLarge)
    assert [offset for offset, _ in caught.value.results] == [1, 0] and caught.value.results[1][1] != 0
    c.engines[1].subscribe(channel)
    c.poll_all()
    assert c.engines[0].publish(channel, b"4") == (2, 0), "nothing after the failing item was sequenced"
