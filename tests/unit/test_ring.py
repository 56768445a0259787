"""The shared-memory ring: framing, wraparound, overrun detection, random access, the Cython class
against its reference, and one writer racing one reader in another process."""

import mmap
import os
import random
import struct
import subprocess
import sys
import tempfile
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsd.ext import atomics, ring, ring_ref

IMPLEMENTATIONS = [ring.Ring, ring_ref.Ring]
CAPACITY = 4096
MAX_PAYLOAD = CAPACITY // 4 - 8
RESERVE_OFFSET = 64
TAIL_OFFSET = 72


def new_ring(cls, capacity: int = CAPACITY, offset: int = 0):
    buf = bytearray(offset + cls.region_size(capacity))
    r = cls(buf, offset, capacity)
    r.init()
    return r, buf


def entry_length(size: int) -> int:
    return 8 + (size + 7) // 8 * 8


@pytest.fixture(params=IMPLEMENTATIONS, ids=["cython", "ref"])
def Ring(request):
    return request.param


def test_appended_entries_read_back_in_order_with_positions(Ring):
    r, _ = new_ring(Ring, offset=64)
    r.check()
    payloads = [b"", b"a", b"hello world", bytes(range(200))]
    positions = [r.append(tag, p) for tag, p in enumerate(payloads, start=1)]
    assert positions == [0, 8, 24, 48]
    assert r.commit == r.reserve == 48 + entry_length(200)
    entries, cursor, lost = r.read(0)
    assert entries == [(pos, tag, p) for pos, tag, p in zip(positions, range(1, 5), payloads, strict=True)]
    assert (cursor, lost) == (r.commit, 0)
    assert r.read(cursor) == ([], cursor, 0)


def test_read_stops_at_max_entries_and_resumes(Ring):
    r, _ = new_ring(Ring)
    for i in range(10):
        r.append(7, bytes([i]) * i)
    first, cursor, lost = r.read(0, max_entries=3)
    rest, end, _ = r.read(cursor)
    assert [e[2] for e in first + rest] == [bytes([i]) * i for i in range(10)]
    assert lost == 0 and end == r.commit


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(0, MAX_PAYLOAD), min_size=1, max_size=120), batch=st.integers(1, 7))
def test_reader_keeping_up_sees_every_entry_across_wraparound(sizes, batch):
    for cls in IMPLEMENTATIONS:
        r, _ = new_ring(cls)
        cursor, seen, written = 0, [], []
        for i, size in enumerate(sizes):
            payload = bytes([i % 251]) * size
            written.append((r.append(1 + i % 3, payload), 1 + i % 3, payload))
            # "Keeping up": read every `batch` entries, and always before the unread bytes plus
            # the next entry and its pad (each at most a quarter ring) could lap us.
            if i % batch == 0 or r.commit - cursor > CAPACITY // 4:
                entries, cursor, lost = r.read(cursor)
                assert lost == 0
                seen += entries
        entries, cursor, lost = r.read(cursor)
        assert lost == 0
        assert seen + entries == written
        assert cursor == r.commit


def test_entry_that_does_not_fit_before_the_end_is_preceded_by_a_pad(Ring):
    r, buf = new_ring(Ring)
    for _ in range(3):
        r.append(1, b"x" * 1013)  # 3 * 1024 bytes
    r.append(1, b"x" * 900)  # up to index 3984: a 208-byte entry no longer fits
    index = r.commit
    assert index == 3 * 1024 + entry_length(900) == 3984
    entry = r.append(2, b"y" * 200)
    assert entry == CAPACITY  # wrapped to physical index 0, never split
    pad_size, pad_tag = struct.unpack_from("<II", buf, ring.HEADER_SIZE + index)
    assert (pad_tag, 8 + pad_size) == (0, CAPACITY - index)
    entries, cursor, lost = r.read(index)
    assert entries == [(CAPACITY, 2, b"y" * 200)]
    assert (cursor, lost) == (CAPACITY + entry_length(200), 0)
    assert r.read_at(index) is None  # a PAD is not an entry


def test_entry_larger_than_a_quarter_of_the_ring_is_refused(Ring):
    r, _ = new_ring(Ring)
    r.append(1, b"z" * MAX_PAYLOAD)
    with pytest.raises(ValueError, match="exceeds the maximum"):
        r.append(1, b"z" * (MAX_PAYLOAD + 1))
    with pytest.raises(ValueError):
        r.append(0, b"tag 0 is PAD")
    assert r.read(0)[0] == [(0, 1, b"z" * MAX_PAYLOAD)]


@pytest.mark.parametrize("capacity", [0, 2048, 4095, 4097, 6144])
def test_capacity_must_be_a_power_of_two_of_at_least_4096(Ring, capacity):
    with pytest.raises(ValueError, match="power of two"):
        Ring(bytearray(1 << 16), 0, capacity)


def test_check_rejects_an_uninitialised_or_mismatched_header(Ring):
    buf = bytearray(Ring.region_size(8192))
    with pytest.raises(ValueError, match="magic"):
        Ring(buf, 0, 8192).check()
    Ring(buf, 0, 8192).init()
    with pytest.raises(ValueError, match="capacity"):
        Ring(buf, 0, 4096).check()
    with pytest.raises(ValueError, match="needs"):
        Ring(bytearray(100), 0, 4096)


def test_cursor_beyond_commit_is_an_error(Ring):
    r, _ = new_ring(Ring)
    r.append(1, b"abc")
    with pytest.raises(ValueError, match="beyond"):
        r.read(r.commit + 8)


def test_lapped_reader_continues_from_the_oldest_intact_entry_and_reports_lost_bytes(Ring):
    r, _ = new_ring(Ring)
    written = [(r.append(1, i.to_bytes(4, "little") * 25), i) for i in range(200)]  # ~5 laps
    intact = [(pos, i) for pos, i in written if pos >= r.reserve - CAPACITY]
    assert r.tail == intact[0][0]  # the oldest entry still intact
    entries, cursor, lost = r.read(0)
    # What is still intact is kept: only the overwritten bytes are lost.
    assert (entries, cursor, lost) == ([], intact[0][0], intact[0][0])
    entries, cursor, lost = r.read(cursor)
    assert lost == 0 and [int.from_bytes(p[:4], "little") for _, _, p in entries] == [i for _, i in intact]
    assert cursor == r.commit


def test_tail_follows_the_writer_over_pads_and_laps(Ring):
    r, _ = new_ring(Ring)
    positions = []
    for i in range(300):
        positions.append(r.append(1, b"q" * (i * 37 % 700)))
        floor = r.reserve - CAPACITY
        # The first entry position (pads included) at or after the floor.
        expected = min(p for p in positions if p >= floor) if r.reserve > CAPACITY else 0
        if r.reserve > CAPACITY:
            assert r.tail >= floor
        assert r.tail <= expected
        assert r.read(r.tail)[2] == 0  # the tail is readable without loss


def test_an_announced_overwrite_invalidates_entries_before_it_is_committed(Ring):
    """The writer stores `reserve` before writing bytes: entries it covers are treated as torn even
    though `commit` has not moved yet (the concurrent case is the two-process test below)."""
    r, buf = new_ring(Ring)
    positions = [r.append(1, bytes([i]) * 500) for i in range(7)]  # 7 * 512 bytes, no wrap yet
    commit = r.commit
    # A writer mid-append whose new entry reaches 8 bytes into entry 2 (one lap later).
    struct.pack_into("<Q", buf, TAIL_OFFSET, positions[3])  # as that writer would have, first
    struct.pack_into("<Q", buf, RESERVE_OFFSET, positions[2] + CAPACITY + 8)
    assert r.read(positions[0]) == ([], positions[3], positions[3] - positions[0])
    assert r.read(positions[2]) == ([], positions[3], positions[3] - positions[2])
    entries, cursor, lost = r.read(positions[3])
    assert [p for p, _, _ in entries] == positions[3:]
    assert (cursor, lost) == (commit, 0)
    assert r.read_at(positions[2]) is None
    assert r.read_at(positions[3]) == (1, bytes([3]) * 500)


def test_read_at_returns_live_entries_only(Ring):
    r, _ = new_ring(Ring)
    first = r.append(5, b"history")
    assert r.read_at(first) == (5, b"history")
    assert r.read_at(r.commit) is None  # not committed yet
    last = first
    while r.reserve - CAPACITY <= first:
        last = r.append(6, b"filler" * 50)
    assert r.read_at(first) is None  # overwritten
    assert r.read_at(last) == (6, b"filler" * 50)
    with pytest.raises(ValueError):
        r.read_at(3)


@settings(max_examples=40, deadline=None)
@given(entries=st.lists(st.tuples(st.integers(1, 2**32 - 1), st.binary(max_size=MAX_PAYLOAD)), max_size=60))
def test_cython_and_reference_write_identical_bytes_and_read_each_other(entries):
    cython_ring, cython_buf = new_ring(ring.Ring)
    ref_ring, ref_buf = new_ring(ring_ref.Ring)
    for tag, payload in entries:
        assert cython_ring.append(tag, payload) == ref_ring.append(tag, payload)
    assert cython_buf == ref_buf
    cross_cython = ring.Ring(ref_buf, 0, CAPACITY).read(0)
    cross_ref = ring_ref.Ring(cython_buf, 0, CAPACITY).read(0)
    assert cross_cython == cross_ref
    for pos, tag, payload in cross_cython[0]:
        assert ring_ref.Ring(cython_buf, 0, CAPACITY).read_at(pos) == (tag, payload)


# The writer runs as a fresh interpreter (not a fork of the test process, whose threads and
# state after hundreds of other tests made forked children unreliable).
_WRITER = """
import mmap, sys, time
from wsd.ext import ring
path, capacity, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def seq_payload(seq):
    filler = bytes([seq % 251]) * (seq * 7919 % 3000)
    return seq.to_bytes(8, "little") + filler + seq.to_bytes(8, "little")
with open(path, "r+b") as f:
    mapping = mmap.mmap(f.fileno(), 0)
writer = ring.Ring(mapping, 0, capacity)
for seq in range(count):
    writer.append(1, seq_payload(seq))
    if seq % 256 == 0:
        time.sleep(0.0002)  # bursts: between them the reader catches up, during them it is lapped
"""


def seq_payload(seq: int) -> bytes:
    """A payload whose every byte is determined by `seq`, so any torn copy is detectable (the
    writer script above builds the same)."""
    filler = bytes([seq % 251]) * (seq * 7919 % 3000)
    return seq.to_bytes(8, "little") + filler + seq.to_bytes(8, "little")


def test_concurrent_reader_sees_increasing_sequence_and_every_gap_reported_as_lost():
    # A small ring and kilobyte payloads: the writer laps the reader constantly and overwrites
    # entries while they are being copied, exercising the torn-read check, not only the lap check.
    count, capacity = 200_000, 16384
    with tempfile.NamedTemporaryFile(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as f:
        f.truncate(ring.Ring.region_size(capacity))
        mapping = mmap.mmap(f.fileno(), 0)
        reader = ring.Ring(mapping, 0, capacity)
        reader.init()
        writer = subprocess.Popen(
            [sys.executable, "-c", _WRITER, f.name, str(capacity), str(count)], stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 120
        cursor, last_seq, received, lost_total, lost_unexplained = 0, -1, 0, 0, False
        rng = random.Random(7)
        while True:
            entries, cursor, lost = reader.read(cursor, max_entries=rng.choice([1, 16, 1024]))
            for _, tag, payload in entries:
                seq = int.from_bytes(payload[:8], "little")
                assert tag == 1
                assert payload == seq_payload(seq), f"corrupted payload for seq {seq}"
                assert seq > last_seq
                if seq != last_seq + 1:
                    assert lost_unexplained, f"gap {last_seq} -> {seq} without lost bytes reported"
                lost_unexplained = False
                last_seq = seq
                received += 1
            if lost:  # the entries returned precede the overrun; the next one may follow a gap
                lost_total += lost
                lost_unexplained = True
            if not entries and writer.poll() is not None and cursor == reader.commit:
                break
            assert time.monotonic() < deadline, "the writer process did not finish"
        _, errors = writer.communicate(timeout=30)
        assert writer.returncode == 0, errors.decode()[-2000:]
        # Either the reader saw the last entry, or it was lapped at the very end and told so.
        assert last_seq == count - 1 or lost_unexplained
        assert received > 100, (received, lost_total)
        assert received == count or lost_total > 0
        del reader
        mapping.close()


def test_atomic_helpers_on_a_shared_buffer():
    buf = bytearray(64)
    atomics.store_u64(buf, 8, 2**64 - 1)
    assert atomics.load_u64(buf, 8) == 2**64 - 1
    atomics.store_u32(buf, 16, 5)
    assert atomics.exchange_u32(buf, 16, 0) == 5
    assert atomics.load_u32(buf, 16) == 0
    atomics.fence()
    with pytest.raises(ValueError, match="aligned"):
        atomics.load_u64(buf, 4)
    with pytest.raises(ValueError, match="outside"):
        atomics.store_u32(buf, 62, 1)
