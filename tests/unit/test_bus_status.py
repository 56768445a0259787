"""What `ctl status` shows of the bus, computed from shared memory: a ring's history horizon."""

from wsd.ext import record
from wsd.ext.ring import Ring
from wsd.server.bus.status import ring_horizon_s

SECOND = 1_000_000_000


def new_ring(capacity: int = 4096) -> Ring:
    ring = Ring(bytearray(Ring.region_size(capacity)), 0, capacity)
    ring.init()
    return ring


def msg(ts_ns: int, size: int = 100) -> bytes:
    return record.encode_msg(1, 0xFFFF, 1, record.NO_POSITION, ts_ns, 0, 7, b"ch", b"x" * size)


def test_an_empty_ring_has_no_horizon_and_a_young_one_reaches_back_to_its_first_entry():
    ring = new_ring()
    assert ring_horizon_s(ring, 100 * SECOND) == (None, False)
    ring.append(record.TAG_MSG, msg(40 * SECOND))
    ring.append(record.TAG_PUBREQ, record.encode_pubreq(0, 1, 5, 90 * SECOND, 7, b"ch", b"1"))
    assert ring_horizon_s(ring, 100 * SECOND) == (60.0, False)


def test_a_lapped_ring_reaches_back_to_its_oldest_intact_entry():
    ring = new_ring()
    for second in range(200):  # ~ 5 laps of 160-byte entries
        ring.append(record.TAG_MSG, msg(second * SECOND))
    horizon, lapped = ring_horizon_s(ring, 200 * SECOND)
    oldest = record.decode_msg(ring.read(ring.tail, 1)[0][0][2]).ts_ns
    assert lapped
    assert horizon == (200 * SECOND - oldest) / SECOND
    assert 20 < horizon < 30  # 4096 bytes hold about 25 of them


def test_records_without_a_publish_time_do_not_hide_the_messages_behind_them():
    """With --cluster a worker's ring starts with INTEREST records (no publish time): the horizon is
    the age of the first message after them, and a ring that never lapped does not say it lapped."""
    from wsd.server.cluster.records import SUBSCRIBE, TAG_INTEREST, encode_interest

    ring = new_ring()
    ring.append(TAG_INTEREST, encode_interest(SUBSCRIBE, 0, 1, 1, b"ch"))
    assert ring_horizon_s(ring, 100 * SECOND) == (None, False)  # no message yet
    ring.append(TAG_INTEREST, encode_interest(SUBSCRIBE, 0, 1, 2, b"other"))
    ring.append(record.TAG_MSG, msg(70 * SECOND))
    assert ring_horizon_s(ring, 100 * SECOND) == (30.0, False)
