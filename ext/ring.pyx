"""A one-writer, many-reader ring of variable-length entries in shared memory: a slot's bus output.

The owning worker appends MSG and PUBREQ records; every other worker reads them with its own cursor
and never blocks the writer: a reader that was lapped is told how many bytes it lost and continues
from the oldest entry still intact (`tail`, kept by the writer), so it keeps what the ring still holds.
Layout and protocol: docs/bus.md ("Memory layouts"); reference implementation: ext/ring_ref.py.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memcpy, memset

from wsd.ext.atomics cimport (
    wsd_fence_acquire,
    wsd_fence_seq_cst,
    wsd_load_acquire_u64,
    wsd_store_release_u64,
)

RING_MAGIC = int.from_bytes(b"WSDRING1", "little")
HEADER_SIZE = 192
MIN_CAPACITY = 4096
TAG_PAD = 0

cdef enum:
    C_TAG_PAD = 0

cdef uint64_t C_RING_MAGIC = 0x31474E4952445357ULL  # b"WSDRING1" little-endian
# Header: magic and capacity on the first cache line (written once), then `reserve` and `commit` on
# cache lines of their own so readers polling `commit` do not share a line with anything else.
cdef Py_ssize_t MAGIC_OFFSET = 0
cdef Py_ssize_t CAPACITY_OFFSET = 8
cdef Py_ssize_t RESERVE_OFFSET = 64
cdef Py_ssize_t TAIL_OFFSET = 72  # on the writer's line with `reserve`: both change per lapping append
cdef Py_ssize_t COMMIT_OFFSET = 128
cdef Py_ssize_t C_HEADER_SIZE = 192
cdef uint64_t ENTRY_HEADER_SIZE = 8  # u32 payload size, u32 tag


cdef inline uint64_t align8(uint64_t n) noexcept nogil:
    return (n + 7) & ~(<uint64_t>7)


cdef inline uint32_t load_le_u32(const unsigned char* p) noexcept nogil:
    # x86-64 and aarch64 are little-endian: the layout is the native one, memcpy avoids aliasing UB.
    cdef uint32_t value
    memcpy(&value, p, 4)
    return value


cdef inline void store_le_u32(unsigned char* p, uint32_t value) noexcept nogil:
    memcpy(p, &value, 4)


def _check_capacity(capacity: int) -> None:
    if capacity < MIN_CAPACITY or capacity & (capacity - 1):
        raise ValueError(f"ring capacity must be a power of two >= {MIN_CAPACITY}, got {capacity}")


cdef class Ring:
    """A ring of `[u32 size][u32 tag][payload][pad to 8]` entries in `buf` at `offset`."""

    def __init__(self, buf, Py_ssize_t offset, capacity: int) -> None:
        _check_capacity(capacity)
        cdef unsigned char[::1] view = buf  # raises BufferError/TypeError on a read-only buffer
        if offset < 0 or offset % 8:
            raise ValueError(f"ring offset must be a non-negative multiple of 8, got {offset}")
        if offset + C_HEADER_SIZE + capacity > view.shape[0]:
            raise ValueError(
                f"ring of capacity {capacity} at offset {offset} needs "
                f"{offset + C_HEADER_SIZE + capacity} bytes, the buffer has {view.shape[0]}"
            )
        if <size_t>(&view[0] + offset) % 8:
            raise ValueError("ring memory is not 8-byte aligned (use an mmap, or a fresh bytearray)")
        self._view = view
        self._offset = offset
        self._header = &view[0] + offset
        self._data = self._header + C_HEADER_SIZE
        self.capacity = capacity
        self._mask = self.capacity - 1
        self.max_payload = self.capacity // 4 - ENTRY_HEADER_SIZE

    @staticmethod
    def region_size(capacity: int) -> int:
        """Bytes a ring of `capacity` occupies in a segment (header + data)."""
        _check_capacity(capacity)
        return HEADER_SIZE + capacity

    def init(self) -> None:
        """Write a fresh header (empty ring). Called once, by the segment's creator."""
        memset(self._header, 0, C_HEADER_SIZE)
        memcpy(self._header + MAGIC_OFFSET, &C_RING_MAGIC, 8)
        memcpy(self._header + CAPACITY_OFFSET, &self.capacity, 8)
        wsd_fence_seq_cst()

    def check(self) -> None:
        """Raise ValueError unless the header holds this ring's magic and capacity."""
        magic = wsd_load_acquire_u64(self._header + MAGIC_OFFSET)
        capacity = wsd_load_acquire_u64(self._header + CAPACITY_OFFSET)
        if magic != C_RING_MAGIC:
            raise ValueError(
                f"no ring at offset {self._offset}: magic {magic:#x}, expected {RING_MAGIC:#x} "
                "(was the segment initialised?)"
            )
        if capacity != self.capacity:
            raise ValueError(
                f"ring at offset {self._offset} has capacity {capacity}, this process expected "
                f"{self.capacity} (segment created with another configuration?)"
            )

    cdef uint64_t _load_commit(self) noexcept nogil:
        return wsd_load_acquire_u64(self._header + COMMIT_OFFSET)

    cdef uint64_t _load_reserve(self) noexcept nogil:
        return wsd_load_acquire_u64(self._header + RESERVE_OFFSET)

    cdef uint64_t _load_tail(self) noexcept nogil:
        return wsd_load_acquire_u64(self._header + TAIL_OFFSET)

    cdef bint _overwritten(self, uint64_t pos) noexcept nogil:
        # The acquire fence keeps the bytes copied before this check from being read after it.
        wsd_fence_acquire()
        return self._load_reserve() > pos + self.capacity

    @property
    def reserve(self) -> int:
        """End of the bytes the writer may be writing: data before `reserve - capacity` is gone."""
        return self._load_reserve()

    @property
    def tail(self) -> int:
        """Position of the oldest entry still intact (0 until the first lap): where a lapped reader
        continues, and where the ring's history begins."""
        return self._load_tail()

    @property
    def commit(self) -> int:
        """End of the complete entries: readers may read up to here."""
        return self._load_commit()

    cdef uint64_t _append_raw(self, uint32_t tag, const unsigned char* payload, uint32_t size) noexcept nogil:
        cdef uint64_t entry_len = ENTRY_HEADER_SIZE + align8(size)
        cdef uint64_t pos = self._load_commit()
        cdef uint64_t index = pos & self._mask
        cdef uint64_t pad_len = 0
        # An entry is never split: if it does not fit before the physical end, a PAD entry fills
        # the rest and the entry starts at index 0.
        if index + entry_len > self.capacity:
            pad_len = self.capacity - index
        cdef uint64_t start = pos + pad_len
        cdef uint64_t new_end = start + entry_len
        # Move `tail` past the entries this append overwrites (those starting before new_end -
        # capacity), reading their headers while they are still there; stored before `reserve`,
        # so a reader that sees the new reserve also sees a tail beyond what it destroys.
        cdef uint64_t tail
        if new_end > self.capacity:
            tail = self._load_tail()
            while tail < new_end - self.capacity:
                tail += ENTRY_HEADER_SIZE + align8(load_le_u32(self._data + (tail & self._mask)))
            wsd_store_release_u64(self._header + TAIL_OFFSET, tail)
        # Announce the overwrite before touching bytes (the seq-cst fence keeps the byte stores
        # after it): readers compare their copy against `reserve`.
        wsd_store_release_u64(self._header + RESERVE_OFFSET, new_end)
        wsd_fence_seq_cst()
        if pad_len:
            store_le_u32(self._data + index, <uint32_t>(pad_len - ENTRY_HEADER_SIZE))
            store_le_u32(self._data + index + 4, C_TAG_PAD)
        cdef unsigned char* at = self._data + (start & self._mask)
        store_le_u32(at, size)
        store_le_u32(at + 4, tag)
        memcpy(at + ENTRY_HEADER_SIZE, payload, size)
        memset(at + ENTRY_HEADER_SIZE + size, 0, entry_len - ENTRY_HEADER_SIZE - size)
        wsd_store_release_u64(self._header + COMMIT_OFFSET, new_end)
        return start

    def append(self, tag: int, const unsigned char[::1] payload not None) -> int:
        """Append one entry and return its logical position. Single writer only."""
        if not 1 <= tag <= 0xFFFFFFFF:
            raise ValueError(f"ring entry tag must be in 1..2**32-1 (0 is PAD), got {tag}")
        cdef Py_ssize_t size = payload.shape[0]
        if <uint64_t>size > self.max_payload:
            raise ValueError(
                f"ring entry of {size} bytes exceeds the maximum {self.max_payload} for capacity "
                f"{self.capacity} (capacity // 4 - 8); use a bigger ring"
            )
        cdef const unsigned char* data = &payload[0] if size else NULL
        return self._append_raw(<uint32_t>tag, data, <uint32_t>size)

    def read(self, uint64_t cursor, Py_ssize_t max_entries=1024) -> tuple:
        """Entries from `cursor` up to the current commit: `(entries, new_cursor, lost_bytes)`.

        If the writer lapped the reader, returns what was validly read, continues at the oldest
        intact entry (`tail`) and reports the skipped byte count as `lost` (a reader never blocks
        the writer, and keeps what the ring still holds).
        """
        cdef uint64_t commit = self._load_commit()
        if cursor > commit:
            raise ValueError(f"ring cursor {cursor} is beyond the commit position {commit}")
        if cursor % 8:
            raise ValueError(f"ring cursor {cursor} is not 8-byte aligned (not an entry position)")
        cdef list entries = []
        cdef Py_ssize_t count = 0
        cdef uint64_t index, entry_len
        cdef uint32_t size, tag
        cdef bytes payload
        while cursor < commit and count < max_entries:
            if self._overwritten(cursor):
                return self._skip_to_tail(entries, cursor)
            index = cursor & self._mask
            size = load_le_u32(self._data + index)
            tag = load_le_u32(self._data + index + 4)
            entry_len = ENTRY_HEADER_SIZE + align8(size)
            # Never trust a header we may have read mid-overwrite: bound it before copying.
            if index + entry_len > self.capacity or (tag != C_TAG_PAD and size > self.max_payload):
                if self._overwritten(cursor):
                    return self._skip_to_tail(entries, cursor)
                raise RuntimeError(f"ring corrupted: implausible entry header at position {cursor}")
            if tag != C_TAG_PAD:
                payload = PyBytes_FromStringAndSize(
                    <const char*>(self._data + index + ENTRY_HEADER_SIZE), size
                )
            if self._overwritten(cursor):
                return self._skip_to_tail(entries, cursor)
            if tag != C_TAG_PAD:
                entries.append((cursor, tag, payload))
                count += 1
            cursor += entry_len
        return entries, cursor, 0

    cdef tuple _skip_to_tail(self, list entries, uint64_t cursor):
        # The writer stores tail before the reserve that showed us overwritten, so tail > cursor;
        # should it not be (a writer that broke the protocol), fall back to the commit.
        cdef uint64_t tail = self._load_tail()
        if tail <= cursor or tail > self._load_commit():
            tail = self._load_commit()
        return entries, tail, tail - cursor

    def read_at(self, uint64_t pos):
        """`(tag, payload)` of the entry at `pos`, or None if not committed yet or already overwritten."""
        if pos % 8:
            raise ValueError(f"ring position {pos} is not a non-negative multiple of 8")
        if pos >= self._load_commit() or self._overwritten(pos):
            return None
        cdef uint64_t index = pos & self._mask
        cdef uint32_t size = load_le_u32(self._data + index)
        cdef uint32_t tag = load_le_u32(self._data + index + 4)
        cdef uint64_t entry_len = ENTRY_HEADER_SIZE + align8(size)
        if tag == C_TAG_PAD or index + entry_len > self.capacity or size > self.max_payload:
            return None
        payload = PyBytes_FromStringAndSize(<const char*>(self._data + index + ENTRY_HEADER_SIZE), size)
        if self._overwritten(pos):
            return None
        return tag, payload
