"""The kernel jhash as nftables applies it, and `pick()` on top of the Maglev table."""

import pytest

from wsd.balancer.flowhash import flow_bucket, jhash, reciprocal_scale, source_key
from wsd.balancer.table import LookupTable

# Known answers of Bob Jenkins' lookup3 hashlittle(), which Linux jhash() is for lengths that are
# not multiples of 4 and for multiples of 4 read little-endian (lookup3.c driver5()).
LOOKUP3_VECTORS = [
    (b"", 0, 0xDEADBEEF),
    (b"", 0xDEADBEEF, 0xBD5B7DDE),
    (b"Four score and seven years ago", 0, 0x17770551),
    (b"Four score and seven years ago", 1, 0xCD628161),
]


@pytest.mark.parametrize(("key", "initval", "expected"), LOOKUP3_VECTORS)
def test_jhash_matches_lookup3_known_answers(key, initval, expected):
    assert jhash(key, initval) == expected


def test_reciprocal_scale_maps_onto_the_modulus():
    assert reciprocal_scale(0, 4099) == 0
    assert reciprocal_scale(0xFFFFFFFF, 4099) == 4098


def test_source_key_pads_the_port_to_a_register():
    assert source_key("10.0.0.1", 0x1234) == bytes([10, 0, 0, 1, 0x12, 0x34, 0, 0])


def test_pick_is_the_table_slot_of_the_flow_bucket():
    table = LookupTable.build(["10.0.0.11:8080", "10.0.0.12:8080", "10.0.0.13:8080"])
    bucket = flow_bucket("10.77.1.5", 40000, table.seed, table.size)
    assert table.pick("10.77.1.5", 40000, "10.99.0.1", 8080) == table.slots[bucket]


def test_flows_spread_evenly_over_backends():
    table = LookupTable.build(["a:1", "b:1", "c:1"])
    counts = {"a:1": 0, "b:1": 0, "c:1": 0}
    for host in range(1, 41):
        for port in range(40000, 40150):
            counts[table.pick(f"10.77.1.{host}", port, "10.99.0.1", 80)] += 1
    average = sum(counts.values()) / 3
    assert all(abs(count - average) / average < 0.05 for count in counts.values())


def test_room_key_lands_on_one_backend():
    table = LookupTable.build(["a:1", "b:1", "c:1"])
    assert len({table.pick_key("room-123") for _ in range(5)}) == 1
