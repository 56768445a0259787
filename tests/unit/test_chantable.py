"""The channel table: insert, update, lookup, the load limit, iteration, the Cython class against its
reference, and seqlock readers in another process never seeing a half-written entry."""

import mmap
import os
import struct
import subprocess
import sys
import tempfile
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsd.ext import atomics, chantable, chantable_ref

IMPLEMENTATIONS = [chantable.ChannelTable, chantable_ref.ChannelTable]


@pytest.fixture(params=IMPLEMENTATIONS, ids=["cython", "ref"])
def ChannelTable(request):
    return request.param


BUCKETS = 256  # forget buckets (the interest buckets in wsd): fewer here, so tests stay small
NO_POSITION = 2**64 - 1
GENERATION_OFFSET = 24


def new_table(cls, slots: int = 64, offset: int = 0):
    buf = bytearray(offset + cls.region_size(slots, BUCKETS))
    table = cls(buf, offset, slots, BUCKETS)
    table.init(base_epoch=1000)
    return table, buf


def ENTRY_AT(buf, table, h1: int) -> int:  # noqa: N802 - reads like the layout's offset names
    """Byte offset of the entry holding h1 (at offset 0 tables only)."""
    for index in range(table.slots):
        at = 64 + 64 * index
        if struct.unpack_from("<Q", buf, at + 8)[0] == h1:
            return at
    raise AssertionError(f"no entry for {h1}")


H2 = 0xABCDEF  # the second hash, for tests where only h1 matters


def test_put_then_get_and_update_in_place(ChannelTable):
    table, _ = new_table(ChannelTable, offset=128)
    table.check()
    assert table.get(12345, H2) is None
    table.put(12345, H2, 1, 10, 4096, 1_700_000_000_000_000_000)
    assert table.get(12345, H2) == (1, 10, 4096, 1_700_000_000_000_000_000)
    table.put(12345, H2, 2, 11, 8192, 1_700_000_000_000_000_001)
    assert table.get(12345, H2) == (2, 11, 8192, 1_700_000_000_000_000_001)
    assert len(table) == 1


def test_colliding_hashes_probe_linearly(ChannelTable):
    table, _ = new_table(ChannelTable, slots=16)
    hashes = [5 + 16 * i for i in range(8)] + [6]  # all start at index 5; 6 then lands after them
    for i, h in enumerate(hashes):
        table.put(h, H2, i, i, i, i)
    assert [table.get(h, H2) for h in hashes] == [(i, i, i, i) for i in range(len(hashes))]
    assert table.get(5 + 16 * 100, H2) is None
    assert sorted(item[0] for item in table.items()) == sorted(hashes)


def test_names_with_one_h1_are_told_apart_by_h2(ChannelTable):
    """A full collision of the first hash (issue 9, item 10): two channels, two entries."""
    table, _ = new_table(ChannelTable, slots=16)
    table.put(42, 1, 7, 1, 100, 5)
    table.put(42, 2, 7, 9, 200, 6)
    assert table.get(42, 1) == (7, 1, 100, 5)
    assert table.get(42, 2) == (7, 9, 200, 6)
    assert table.get(42, 3) is None
    assert len(table) == 2
    assert table.forget(42, 1)
    assert table.get(42, 1) is None and table.get(42, 2) == (7, 9, 200, 6)


def test_table_refuses_inserts_beyond_ninety_percent_but_still_updates(ChannelTable):
    table, _ = new_table(ChannelTable, slots=32)
    limit = 32 * 9 // 10
    assert table.limit == limit
    for h in range(1, limit + 1):
        table.put(h, H2, 0, h, 0, 0)
    with pytest.raises(chantable.TableFullError if ChannelTable is chantable.ChannelTable
                       else chantable_ref.TableFullError, match="full"):
        table.put(10_000, H2, 0, 0, 0, 0)
    table.put(1, H2, 7, 7, 7, 7)  # existing entries stay writable
    assert table.get(1, H2) == (7, 7, 7, 7)
    assert len(table) == limit
    assert issubclass(chantable.TableFullError, RuntimeError)


def test_items_lists_every_entry(ChannelTable):
    table, _ = new_table(ChannelTable)
    expected = {h: (h % 7, h // 2, h // 3, h // 4) for h in (3, 99, 2**64 - 1, 1 << 40)}
    for h, fields in expected.items():
        table.put(h, h ^ 1, *fields)
    assert {item[:2]: item[2:] for item in table.items()} == {(h, h ^ 1): f for h, f in expected.items()}


def test_zero_hash_and_bad_sizes_are_rejected(ChannelTable):
    table, _ = new_table(ChannelTable)
    with pytest.raises(ValueError):
        table.put(0, H2, 1, 1, 1, 1)
    with pytest.raises(ValueError, match="power of two"):
        ChannelTable(bytearray(1 << 16), 0, 48)
    with pytest.raises(ValueError, match="needs"):
        ChannelTable(bytearray(100), 0, 64)
    with pytest.raises(ValueError, match="no channel table"):
        ChannelTable(bytearray(ChannelTable.region_size(64, BUCKETS)), 0, 64, BUCKETS).check()


# -- forgetting channels (issue 9, item 1) --


def test_forget_removes_an_entry_and_keeps_the_rest_of_its_probe_run_reachable(ChannelTable):
    table, buf = new_table(ChannelTable, slots=16)
    run = [3 + 16 * i for i in range(6)] + [4, 5]  # one run from index 3 to 10, with 4 and 5 in it
    for i, h in enumerate(run):
        table.put(h, H2, 1, i + 1, i, i)
    generation = table.generation
    assert table.forget(run[1], H2)
    assert table.generation == generation + 2  # odd while entries moved, even again after
    assert table.get(run[1], H2) is None
    assert [table.get(h, H2) for h in run if h != run[1]] == [(1, i + 1, i, i) for i, h in enumerate(run) if i != 1]
    assert len(table) == len(run) - 1
    assert table.forget(run[1], H2) is True  # absent already: its bucket still moves to a new epoch
    # confirm() runs inside the change (generation odd); saying no leaves the entries untouched.
    seen = []
    before = bytes(buf)
    assert not table.forget(run[0], H2, lambda: seen.append(table.generation) or False)
    entries = slice(64, 64 + 64 * 16)
    assert seen[0] % 2 == 1 and bytes(buf[entries]) == before[entries]
    assert table.get(run[0], H2) == (1, 1, 0, 0)


def test_a_forgotten_channel_comes_back_in_a_new_epoch(ChannelTable):
    table, _ = new_table(ChannelTable, slots=16)
    base = table.absent_epoch(77)
    assert table.state(77, H2) == (base, 0, NO_POSITION, 0)
    table.put(77, H2, base, 5, 40, 9)
    assert table.state(77, H2) == (base, 5, 40, 9)
    table.forget(77, H2)
    assert table.state(77, H2) == (base + 1, 0, NO_POSITION, 0)
    assert table.absent_epoch(77 + BUCKETS) == base + 1  # the same bucket
    assert table.absent_epoch(78) == base  # another bucket keeps its epoch


def test_least_recently_used_order_follows_puts_and_touches(ChannelTable):
    table, _ = new_table(ChannelTable, slots=16)
    for h in (10, 20, 30, 40):
        table.put(h, H2, 1, 1, 0, h)
    table.put(20, H2, 1, 2, 0, 50)  # used again
    table.touch(10, H2)
    assert table.lru_oldest(10) == [(30, H2), (40, H2), (20, H2), (10, H2)]
    assert table.lru_oldest(2) == [(30, H2), (40, H2)]
    table.forget(40, H2)
    assert table.lru_oldest(10) == [(30, H2), (20, H2), (10, H2)]


@settings(max_examples=60, deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from(["put", "forget", "touch"]), st.integers(0, 40)), max_size=200))
def test_puts_forgets_and_touches_match_a_model_and_both_implementations_write_the_same_bytes(ops):
    """Keys crowd into a few probe runs of a 64-entry table (h1 low bits from 4 values), so
    forgetting moves entries; the model is a dict plus an LRU list."""
    tables = [new_table(cls, slots=64) for cls in IMPLEMENTATIONS]
    model: dict[tuple[int, int], tuple] = {}
    lru: list[tuple[int, int]] = []
    for step, (op, n) in enumerate(ops):
        key = ((n % 4) + 64 * (n // 4) + 1, n % 3)
        if op == "put" and (key in model or len(model) < tables[0][0].limit):
            value = (n, step, step * 3, step * 5)
            for table, _ in tables:
                table.put(*key, *value)
            model[key] = value
            if key in lru:
                lru.remove(key)
            lru.append(key)
        elif op == "forget":
            for table, _ in tables:
                table.forget(*key)
            model.pop(key, None)
            if key in lru:
                lru.remove(key)
        elif op == "touch" and key in model:
            for table, _ in tables:
                table.touch(*key)
            lru.remove(key)
            lru.append(key)
    (cython_table, cython_buf), (ref_table, ref_buf) = tables
    assert cython_buf == ref_buf
    for table, _ in tables:
        assert {item[:2]: item[2:] for item in table.items()} == model
        assert all(table.get(*key) == value for key, value in model.items())
        assert len(table) == len(model)
        assert table.lru_oldest(100) == lru


# -- a writer that died mid-write (issue 9, item 7) --


def test_a_torn_entry_is_repaired_by_the_next_writer_and_readers_stop_waiting(ChannelTable):
    table, buf = new_table(ChannelTable, slots=16)
    for h in (3, 19, 35, 4):  # one probe run: 3, 19, 35 start at index 3; 4 lands after them
        table.put(h, H2, 1, h, h, h)
    # The writer was killed inside put(19): seq odd, the fields half written.
    at = ENTRY_AT(buf, table, 19)
    struct.pack_into("<Q", buf, at, struct.unpack_from("<Q", buf, at)[0] | 1)
    struct.pack_into("<Q", buf, at + 24, 999_999)
    successor = type(table)(buf, 0, 16, BUCKETS)  # the role's next holder, in another process
    assert successor.repair() == [(19, H2)]
    started = time.monotonic()
    assert successor.get(19, H2) is None
    assert [successor.get(h, H2) for h in (3, 35, 4)] == [(1, h, h, h) for h in (3, 35, 4)]
    assert time.monotonic() - started < 0.5
    assert len(successor) == 3
    assert successor.lru_oldest(10) == [(3, H2), (4, H2), (35, H2)]  # rebuilt from last_ts_ns
    assert successor.repair() == []  # nothing left to repair


def test_a_writer_killed_while_moving_entries_leaves_nothing_a_repair_cannot_fix(ChannelTable):
    table, buf = new_table(ChannelTable, slots=16)
    run = [3 + 16 * i for i in range(5)]
    for i, h in enumerate(run):
        table.put(h, H2, 1, i + 1, i, i)
    # Killed in forget(run[1]) while copying run[2] into run[1]'s place: the generation is odd,
    # the destination's seq odd, half of it copied; run[2] itself is still intact.
    struct.pack_into("<Q", buf, GENERATION_OFFSET, table.generation + 1)
    victim, moved = ENTRY_AT(buf, table, run[1]), ENTRY_AT(buf, table, run[2])
    struct.pack_into("<Q", buf, victim, struct.unpack_from("<Q", buf, victim)[0] | 1)
    buf[victim + 8 : victim + 24] = buf[moved + 8 : moved + 24]
    successor = type(table)(buf, 0, 16, BUCKETS)
    torn = successor.repair()
    assert successor.generation % 2 == 0
    assert all(successor.get(h, H2) == (1, i + 1, i, i) for i, h in enumerate(run) if i != 1)
    # run[1] was being forgotten (its bucket already has its new epoch); the torn copy of run[2]
    # is not reported, since run[2] itself is intact.
    assert successor.get(run[1], H2) is None and torn == []
    assert len(successor) == len(run) - 1


@settings(max_examples=50, deadline=None)
@given(puts=st.lists(st.tuples(st.integers(1, 2**64 - 1), st.integers(0, 2**32 - 1),
                               st.integers(0, 2**64 - 1)), max_size=50))
def test_cython_and_reference_write_identical_bytes_and_read_each_other(puts):
    cython_table, cython_buf = new_table(chantable.ChannelTable)
    ref_table, ref_buf = new_table(chantable_ref.ChannelTable)
    puts = puts[: cython_table.limit]
    for h, epoch, value in puts:
        cython_table.put(h, value % 5, epoch, value, value // 2, value // 3)
        ref_table.put(h, value % 5, epoch, value, value // 2, value // 3)
    assert cython_buf == ref_buf
    crossed_ref = chantable_ref.ChannelTable(cython_buf, 0, 64, BUCKETS)
    crossed_cython = chantable.ChannelTable(ref_buf, 0, 64, BUCKETS)
    assert list(crossed_ref.items()) == list(crossed_cython.items())
    assert len(crossed_ref) == len(crossed_cython) == len({(h, v % 5) for h, _, v in puts})
    for h, _, value in puts:
        assert crossed_ref.get(h, value % 5) == crossed_cython.get(h, value % 5) is not None


# The writer runs as a fresh interpreter (not a fork of the test process, whose threads and
# state after hundreds of other tests made forked children unreliable).
_WRITER = """
import mmap, sys
from wsd.ext import chantable
path, slots, updates = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with open(path, "r+b") as f:
    mapping = mmap.mmap(f.fileno(), 0)
table = chantable.ChannelTable(mapping, 0, slots, 256)
for i in range(1, updates + 1):
    # Every field derived from i: a reader mixing two updates sees fields that disagree.
    table.put(777, 5, i & 0xFFFFFFFF, i, i * 2, i * 3)
"""


def test_seqlock_readers_in_another_process_see_consistent_entries():
    slots, updates = 64, 300_000
    with tempfile.NamedTemporaryFile(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as f:
        f.truncate(chantable.ChannelTable.region_size(slots, BUCKETS))
        mapping = mmap.mmap(f.fileno(), 0)
        table = chantable.ChannelTable(mapping, 0, slots, BUCKETS)
        table.init()
        table_ref_view = chantable_ref.ChannelTable(mapping, 0, slots, BUCKETS)
        writer = subprocess.Popen([sys.executable, "-c", _WRITER, f.name, str(slots), str(updates)],
                                  stderr=subprocess.PIPE)
        reads, last_off = 0, 0
        deadline = time.monotonic() + 60  # a writer that failed at once must not hang the test
        while writer.poll() is None or (reads == 0 and time.monotonic() < deadline):
            entry = table.get(777, 5)
            if entry is None:
                continue
            epoch, off, pos, ts = entry
            assert (pos, ts, epoch) == (off * 2, off * 3, off & 0xFFFFFFFF), entry
            assert off >= last_off  # single writer, increasing values: never goes back
            last_off = off
            reads += 1
        _, errors = writer.communicate(timeout=30)
        assert writer.returncode == 0, f"the writer process failed: {errors.decode()[-2000:]}"
        assert table.get(777, 5) == (updates, updates, updates * 2, updates * 3)
        assert table_ref_view.get(777, 5) == (updates, updates, updates * 2, updates * 3)
        assert reads > 100
        del table, table_ref_view
        mapping.close()


_MOVER = """
import mmap, sys
from wsd.ext import atomics, chantable
path, slots, rounds, phase_at = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
with open(path, "r+b") as f:
    mapping = mmap.mmap(f.fileno(), 0)
table = chantable.ChannelTable(mapping, 0, slots, 256)
fillers = [3 + slots * (i + 1) for i in range(20)]  # all start their probe at index 3, like 3
for n in range(1, rounds + 1):
    atomics.store_u64(mapping, phase_at, 2 * n)  # even: 3 may be absent
    table.forget(3, 5)
    for h in fillers:
        table.put(h, 5, 1, 1, 1, 1)
    table.put(3, 5, n, n, n * 2, n * 3)  # behind the fillers
    atomics.store_u64(mapping, phase_at, 2 * n + 1)  # odd: 3 is in the table
    for h in fillers:
        table.forget(h, 5)  # each moves 3 one entry back towards its home
"""


def test_readers_in_another_process_find_an_entry_while_forgets_move_it():
    slots, rounds = 64, 3000
    phase_at = chantable.ChannelTable.region_size(slots, BUCKETS)
    with tempfile.NamedTemporaryFile(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as f:
        f.truncate(phase_at + 8)
        mapping = mmap.mmap(f.fileno(), 0)
        table = chantable.ChannelTable(mapping, 0, slots, BUCKETS)
        table.init()
        writer = subprocess.Popen(
            [sys.executable, "-c", _MOVER, f.name, str(slots), str(rounds), str(phase_at)], stderr=subprocess.PIPE
        )
        checked, deadline = 0, time.monotonic() + 120
        while writer.poll() is None and time.monotonic() < deadline:
            phase = atomics.load_u64(mapping, phase_at)
            entry = table.get(3, 5)
            if phase % 2 and atomics.load_u64(mapping, phase_at) == phase:
                assert entry is not None, f"3 was in the table during phase {phase}, a reader missed it"
                checked += 1
            if entry is not None:
                epoch, off, pos, ts = entry
                assert (off, pos, ts) == (epoch, epoch * 2, epoch * 3), entry
        _, errors = writer.communicate(timeout=30)
        assert writer.returncode == 0, f"the writer process failed: {errors.decode()[-2000:]}"
        assert checked > 100
        del table
        mapping.close()
