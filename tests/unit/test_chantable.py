"""The channel table: insert, update, lookup, the load limit, iteration, the Cython class against its
reference, and seqlock readers in another process never seeing a half-written entry."""

import mmap
import os
import subprocess
import sys
import tempfile
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsd.ext import chantable, chantable_ref

IMPLEMENTATIONS = [chantable.ChannelTable, chantable_ref.ChannelTable]


@pytest.fixture(params=IMPLEMENTATIONS, ids=["cython", "ref"])
def ChannelTable(request):
    return request.param


def new_table(cls, slots: int = 64, offset: int = 0):
    buf = bytearray(offset + cls.region_size(slots))
    table = cls(buf, offset, slots)
    table.init()
    return table, buf


def test_put_then_get_and_update_in_place(ChannelTable):
    table, _ = new_table(ChannelTable, offset=128)
    table.check()
    assert table.get(12345) is None
    table.put(12345, 1, 10, 4096, 1_700_000_000_000_000_000)
    assert table.get(12345) == (1, 10, 4096, 1_700_000_000_000_000_000)
    table.put(12345, 2, 11, 8192, 1_700_000_000_000_000_001)
    assert table.get(12345) == (2, 11, 8192, 1_700_000_000_000_000_001)
    assert len(table) == 1


def test_colliding_hashes_probe_linearly(ChannelTable):
    table, _ = new_table(ChannelTable, slots=16)
    hashes = [5 + 16 * i for i in range(8)] + [6]  # all start at index 5; 6 then lands after them
    for i, h in enumerate(hashes):
        table.put(h, i, i, i, i)
    assert [table.get(h) for h in hashes] == [(i, i, i, i) for i in range(len(hashes))]
    assert table.get(5 + 16 * 100) is None
    assert sorted(item[0] for item in table.items()) == sorted(hashes)


def test_table_refuses_inserts_beyond_ninety_percent_but_still_updates(ChannelTable):
    table, _ = new_table(ChannelTable, slots=32)
    limit = 32 * 9 // 10
    for h in range(1, limit + 1):
        table.put(h, 0, h, 0, 0)
    with pytest.raises(chantable.TableFullError if ChannelTable is chantable.ChannelTable
                       else chantable_ref.TableFullError, match="full"):
        table.put(10_000, 0, 0, 0, 0)
    table.put(1, 7, 7, 7, 7)  # existing entries stay writable
    assert table.get(1) == (7, 7, 7, 7)
    assert len(table) == limit
    assert issubclass(chantable.TableFullError, RuntimeError)


def test_items_lists_every_entry(ChannelTable):
    table, _ = new_table(ChannelTable)
    expected = {h: (h % 7, h // 2, h // 3, h // 4) for h in (3, 99, 2**64 - 1, 1 << 40)}
    for h, fields in expected.items():
        table.put(h, *fields)
    assert {item[0]: item[1:] for item in table.items()} == expected


def test_zero_hash_and_bad_sizes_are_rejected(ChannelTable):
    table, _ = new_table(ChannelTable)
    with pytest.raises(ValueError):
        table.put(0, 1, 1, 1, 1)
    with pytest.raises(ValueError, match="power of two"):
        ChannelTable(bytearray(1 << 16), 0, 48)
    with pytest.raises(ValueError, match="needs"):
        ChannelTable(bytearray(100), 0, 64)
    with pytest.raises(ValueError, match="no channel table"):
        ChannelTable(bytearray(ChannelTable.region_size(64)), 0, 64).check()


@settings(max_examples=50, deadline=None)
@given(puts=st.lists(st.tuples(st.integers(1, 2**64 - 1), st.integers(0, 2**32 - 1),
                               st.integers(0, 2**64 - 1)), max_size=50))
def test_cython_and_reference_write_identical_bytes_and_read_each_other(puts):
    cython_table, cython_buf = new_table(chantable.ChannelTable)
    ref_table, ref_buf = new_table(chantable_ref.ChannelTable)
    for h, epoch, value in puts:
        cython_table.put(h, epoch, value, value // 2, value // 3)
        ref_table.put(h, epoch, value, value // 2, value // 3)
    assert cython_buf == ref_buf
    crossed_ref = chantable_ref.ChannelTable(cython_buf, 0, 64)
    crossed_cython = chantable.ChannelTable(ref_buf, 0, 64)
    assert list(crossed_ref.items()) == list(crossed_cython.items())
    assert len(crossed_ref) == len(crossed_cython) == len({h for h, _, _ in puts})
    for h, _, _ in puts:
        assert crossed_ref.get(h) == crossed_cython.get(h) is not None


# The writer runs as a fresh interpreter (not a fork of the test process, whose threads and
# state after hundreds of other tests made forked children unreliable).
_WRITER = """
import mmap, sys
from wsd.ext import chantable
path, slots, updates = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with open(path, "r+b") as f:
    mapping = mmap.mmap(f.fileno(), 0)
table = chantable.ChannelTable(mapping, 0, slots)
for i in range(1, updates + 1):
    # Every field derived from i: a reader mixing two updates sees fields that disagree.
    table.put(777, i & 0xFFFFFFFF, i, i * 2, i * 3)
"""


def test_seqlock_readers_in_another_process_see_consistent_entries():
    slots, updates = 64, 300_000
    with tempfile.NamedTemporaryFile(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as f:
        f.truncate(chantable.ChannelTable.region_size(slots))
        mapping = mmap.mmap(f.fileno(), 0)
        table = chantable.ChannelTable(mapping, 0, slots)
        table.init()
        table_ref_view = chantable_ref.ChannelTable(mapping, 0, slots)
        writer = subprocess.Popen([sys.executable, "-c", _WRITER, f.name, str(slots), str(updates)],
                                  stderr=subprocess.PIPE)
        reads, last_off = 0, 0
        deadline = time.monotonic() + 60  # a writer that failed at once must not hang the test
        while writer.poll() is None or (reads == 0 and time.monotonic() < deadline):
            entry = table.get(777)
            if entry is None:
                continue
            epoch, off, pos, ts = entry
            assert (pos, ts, epoch) == (off * 2, off * 3, off & 0xFFFFFFFF), entry
            assert off >= last_off  # single writer, increasing values: never goes back
            last_off = off
            reads += 1
        _, errors = writer.communicate(timeout=30)
        assert writer.returncode == 0, f"the writer process failed: {errors.decode()[-2000:]}"
        assert table.get(777) == (updates, updates, updates * 2, updates * 3)
        assert table_ref_view.get(777) == (updates, updates, updates * 2, updates * 3)
        assert reads > 100
        del table, table_ref_view
        mapping.close()
