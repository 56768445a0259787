"""Pure-Python reference of wsd.ext.ring: a one-writer, many-reader ring of variable-length entries.

This is the executable specification of the layout and protocol (see docs/bus.md, "Memory layouts");
it is not atomic. The server uses wsd.ext.ring; tests check the two are byte-for-byte interchangeable.
"""

import struct

RING_MAGIC = int.from_bytes(b"WSDRING1", "little")
# Header: magic and capacity on the first cache line (written once), then `reserve` and `commit` on
# cache lines of their own so readers polling `commit` do not share a line with anything else.
MAGIC_OFFSET = 0
CAPACITY_OFFSET = 8
RESERVE_OFFSET = 64
TAIL_OFFSET = 72  # oldest intact entry, on the writer's line with `reserve`
COMMIT_OFFSET = 128
HEADER_SIZE = 192
MIN_CAPACITY = 4096
ENTRY_HEADER_SIZE = 8  # u32 payload size, u32 tag
TAG_PAD = 0

_U64 = struct.Struct("<Q")
_ENTRY_HEADER = struct.Struct("<II")


def align8(n: int) -> int:
    return (n + 7) & ~7


def check_capacity(capacity: int) -> None:
    if capacity < MIN_CAPACITY or capacity & (capacity - 1):
        raise ValueError(f"ring capacity must be a power of two >= {MIN_CAPACITY}, got {capacity}")


class Ring:
    """A ring of `[u32 size][u32 tag][payload][pad to 8]` entries in `buf` at `offset`."""

    def __init__(self, buf, offset: int, capacity: int) -> None:
        check_capacity(capacity)
        view = memoryview(buf).cast("B")
        if view.readonly:
            raise ValueError("Ring needs a writable buffer (mmap or bytearray)")
        if offset < 0 or offset % 8:
            raise ValueError(f"ring offset must be a non-negative multiple of 8, got {offset}")
        if offset + HEADER_SIZE + capacity > len(view):
            raise ValueError(
                f"ring of capacity {capacity} at offset {offset} needs "
                f"{offset + HEADER_SIZE + capacity} bytes, the buffer has {len(view)}"
            )
        self._view = view
        self._offset = offset
        self._data = offset + HEADER_SIZE
        self.capacity = capacity
        self._mask = capacity - 1
        self.max_payload = capacity // 4 - ENTRY_HEADER_SIZE

    @staticmethod
    def region_size(capacity: int) -> int:
        """Bytes a ring of `capacity` occupies in a segment (header + data)."""
        check_capacity(capacity)
        return HEADER_SIZE + capacity

    def init(self) -> None:
        """Write a fresh header (empty ring). Called once, by the segment's creator."""
        self._view[self._offset : self._offset + HEADER_SIZE] = bytes(HEADER_SIZE)
        _U64.pack_into(self._view, self._offset + MAGIC_OFFSET, RING_MAGIC)
        _U64.pack_into(self._view, self._offset + CAPACITY_OFFSET, self.capacity)

    def check(self) -> None:
        """Raise ValueError unless the header holds this ring's magic and capacity."""
        (magic,) = _U64.unpack_from(self._view, self._offset + MAGIC_OFFSET)
        (capacity,) = _U64.unpack_from(self._view, self._offset + CAPACITY_OFFSET)
        if magic != RING_MAGIC:
            raise ValueError(
                f"no ring at offset {self._offset}: magic {magic:#x}, expected {RING_MAGIC:#x} "
                "(was the segment initialised?)"
            )
        if capacity != self.capacity:
            raise ValueError(
                f"ring at offset {self._offset} has capacity {capacity}, this process expected "
                f"{self.capacity} (segment created with another configuration?)"
            )

    @property
    def reserve(self) -> int:
        """End of the bytes the writer may be writing: data before `reserve - capacity` is gone."""
        return _U64.unpack_from(self._view, self._offset + RESERVE_OFFSET)[0]

    @property
    def tail(self) -> int:
        """Position of the oldest entry still intact (0 until the first lap): where a lapped reader
        continues, and where the ring's history begins."""
        return _U64.unpack_from(self._view, self._offset + TAIL_OFFSET)[0]

    @property
    def commit(self) -> int:
        """End of the complete entries: readers may read up to here."""
        return _U64.unpack_from(self._view, self._offset + COMMIT_OFFSET)[0]

    def append(self, tag: int, payload: bytes) -> int:
        """Append one entry and return its logical position. Single writer only."""
        if not 1 <= tag <= 0xFFFFFFFF:
            raise ValueError(f"ring entry tag must be in 1..2**32-1 (0 is PAD), got {tag}")
        size = len(payload)
        if size > self.max_payload:
            raise ValueError(
                f"ring entry of {size} bytes exceeds the maximum {self.max_payload} for capacity "
                f"{self.capacity} (capacity // 4 - 8); use a bigger ring"
            )
        entry_len = ENTRY_HEADER_SIZE + align8(size)
        pos = self.commit
        index = pos & self._mask
        # An entry is never split: if it does not fit before the physical end, a PAD entry fills
        # the rest and the entry starts at index 0.
        pad_len = self.capacity - index if index + entry_len > self.capacity else 0
        start = pos + pad_len
        new_end = start + entry_len
        # Move `tail` past the entries this append overwrites (those starting before new_end -
        # capacity), reading their headers while they are still there; stored before `reserve`.
        if new_end > self.capacity:
            tail = self.tail
            while tail < new_end - self.capacity:
                (overwritten_size,) = struct.unpack_from("<I", self._view, self._data + (tail & self._mask))
                tail += ENTRY_HEADER_SIZE + align8(overwritten_size)
            _U64.pack_into(self._view, self._offset + TAIL_OFFSET, tail)
        # Announce the overwrite before touching bytes: readers compare against it after copying.
        _U64.pack_into(self._view, self._offset + RESERVE_OFFSET, new_end)
        if pad_len:
            _ENTRY_HEADER.pack_into(self._view, self._data + index, pad_len - ENTRY_HEADER_SIZE, TAG_PAD)
        at = self._data + (start & self._mask)
        _ENTRY_HEADER.pack_into(self._view, at, size, tag)
        payload_at = at + ENTRY_HEADER_SIZE
        self._view[payload_at : payload_at + size] = payload
        self._view[payload_at + size : at + entry_len] = bytes(entry_len - ENTRY_HEADER_SIZE - size)
        _U64.pack_into(self._view, self._offset + COMMIT_OFFSET, new_end)
        return start

    def _overwritten(self, pos: int) -> bool:
        return self.reserve > pos + self.capacity

    def _entry_header(self, pos: int) -> tuple[int, int, int] | None:
        """(size, tag, entry length) of the entry at `pos`, or None if the header is not plausible."""
        index = pos & self._mask
        size, tag = _ENTRY_HEADER.unpack_from(self._view, self._data + index)
        entry_len = ENTRY_HEADER_SIZE + align8(size)
        if index + entry_len > self.capacity or (tag != TAG_PAD and size > self.max_payload):
            return None
        return size, tag, entry_len

    def read(self, cursor: int, max_entries: int = 1024) -> tuple[list[tuple[int, int, bytes]], int, int]:
        """Entries from `cursor` up to the current commit: `(entries, new_cursor, lost_bytes)`.

        If the writer lapped the reader, returns what was validly read, continues at the oldest
        intact entry (`tail`) and reports the skipped byte count as `lost` (a reader never blocks
        the writer, and keeps what the ring still holds).
        """
        commit = self.commit
        if cursor > commit:
            raise ValueError(f"ring cursor {cursor} is beyond the commit position {commit}")
        if cursor % 8:
            raise ValueError(f"ring cursor {cursor} is not 8-byte aligned (not an entry position)")
        entries: list[tuple[int, int, bytes]] = []
        while cursor < commit and len(entries) < max_entries:
            if self._overwritten(cursor):
                return self._skip_to_tail(entries, cursor)
            header = self._entry_header(cursor)
            if header is None:
                if self._overwritten(cursor):
                    return self._skip_to_tail(entries, cursor)
                raise RuntimeError(f"ring corrupted: implausible entry header at position {cursor}")
            size, tag, entry_len = header
            at = self._data + (cursor & self._mask) + ENTRY_HEADER_SIZE
            payload = bytes(self._view[at : at + size])
            if self._overwritten(cursor):
                return self._skip_to_tail(entries, cursor)
            if tag != TAG_PAD:
                entries.append((cursor, tag, payload))
            cursor += entry_len
        return entries, cursor, 0

    def _skip_to_tail(self, entries, cursor: int) -> tuple[list[tuple[int, int, bytes]], int, int]:
        # The writer stores tail before the reserve that showed us overwritten, so tail > cursor;
        # should it not be (a writer that broke the protocol), fall back to the commit.
        tail = self.tail
        if tail <= cursor or tail > self.commit:
            tail = self.commit
        return entries, tail, tail - cursor

    def read_at(self, pos: int) -> tuple[int, bytes] | None:
        """`(tag, payload)` of the entry at `pos`, or None if not committed yet or already overwritten."""
        if pos < 0 or pos % 8:
            raise ValueError(f"ring position {pos} is not a non-negative multiple of 8")
        if pos >= self.commit or self._overwritten(pos):
            return None
        header = self._entry_header(pos)
        if header is None:
            return None
        size, tag, _ = header
        at = self._data + (pos & self._mask) + ENTRY_HEADER_SIZE
        payload = bytes(self._view[at : at + size])
        if self._overwritten(pos) or tag == TAG_PAD:
            return None
        return tag, payload
