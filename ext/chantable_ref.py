"""Pure-Python reference of wsd.ext.chantable: the owner's per-channel state, readable by every slot.

Open addressing with linear probing over 64-byte entries, each guarded by a seqlock (`seq` odd while
the single writer updates it). Entries are never deleted, so an empty entry ends a probe. This module
is the executable specification (not atomic); the server uses ext.chantable.
"""

import struct
from collections.abc import Iterator

TABLE_MAGIC = int.from_bytes(b"WSDCHAN1", "little")
HEADER_SIZE = 64  # magic u64, slots u64, used-entry count u64, reserved
MAGIC_OFFSET = 0
SLOTS_OFFSET = 8
COUNT_OFFSET = 16
ENTRY_SIZE = 64
# Entry: seq u64, chan_hash u64 (0 = empty), epoch u32, pad u32, last_off u64, last_pos u64,
# last_ts_ns u64, 16 reserved bytes.
ENTRY_SEQ_OFFSET = 0
ENTRY_HASH_OFFSET = 8
ENTRY_FIELDS = struct.Struct("<QQIIQQQ")
MAX_LOAD_NUMERATOR = 9  # at most 90% of the entries used, so probes stay short
MAX_LOAD_DENOMINATOR = 10

_U64 = struct.Struct("<Q")


class TableFullError(RuntimeError):
    """The channel table has no free entry within its load limit: configure more table slots."""


def check_slots(slots: int) -> None:
    if slots < 1 or slots & (slots - 1):
        raise ValueError(f"channel table slots must be a power of two, got {slots}")


def max_used(slots: int) -> int:
    return slots * MAX_LOAD_NUMERATOR // MAX_LOAD_DENOMINATOR


class ChannelTable:
    """chan_hash -> (epoch, last_off, last_pos, last_ts_ns), one writer, many readers."""

    def __init__(self, buf, offset: int, slots: int) -> None:
        check_slots(slots)
        view = memoryview(buf).cast("B")
        if view.readonly:
            raise ValueError("ChannelTable needs a writable buffer (mmap or bytearray)")
        if offset < 0 or offset % 8:
            raise ValueError(f"channel table offset must be a non-negative multiple of 8, got {offset}")
        if offset + ChannelTable.region_size(slots) > len(view):
            raise ValueError(
                f"channel table of {slots} slots at offset {offset} needs "
                f"{offset + ChannelTable.region_size(slots)} bytes, the buffer has {len(view)}"
            )
        self._view = view
        self._offset = offset
        self._entries = offset + HEADER_SIZE
        self.slots = slots
        self._mask = slots - 1

    @staticmethod
    def region_size(slots: int) -> int:
        """Bytes a table of `slots` entries occupies (header + entries)."""
        check_slots(slots)
        return HEADER_SIZE + slots * ENTRY_SIZE

    def init(self, already_zeroed: bool = False) -> None:
        """Write an empty table. Called once, by the segment's creator (`already_zeroed`: only
        the header needs writing, the memory is known to be zero)."""
        size = HEADER_SIZE if already_zeroed else ChannelTable.region_size(self.slots)
        self._view[self._offset : self._offset + size] = bytes(size)
        _U64.pack_into(self._view, self._offset + MAGIC_OFFSET, TABLE_MAGIC)
        _U64.pack_into(self._view, self._offset + SLOTS_OFFSET, self.slots)

    def check(self) -> None:
        """Raise ValueError unless the header holds this table's magic and slot count."""
        (magic,) = _U64.unpack_from(self._view, self._offset + MAGIC_OFFSET)
        (slots,) = _U64.unpack_from(self._view, self._offset + SLOTS_OFFSET)
        if magic != TABLE_MAGIC or slots != self.slots:
            raise ValueError(
                f"no channel table of {self.slots} slots at offset {self._offset} (magic {magic:#x}, "
                f"slots {slots}); was the segment initialised with this configuration?"
            )

    def __len__(self) -> int:
        return _U64.unpack_from(self._view, self._offset + COUNT_OFFSET)[0]

    def _entry_at(self, index: int) -> int:
        return self._entries + index * ENTRY_SIZE

    def _find(self, chan_hash: int) -> tuple[int, bool]:
        """(entry byte offset, found): the entry holding chan_hash, or the empty entry ending the probe.

        Raises TableFullError if neither exists (every entry probed).
        """
        index = chan_hash & self._mask
        for _ in range(self.slots):
            at = self._entry_at(index)
            (found_hash,) = _U64.unpack_from(self._view, at + ENTRY_HASH_OFFSET)
            if found_hash == chan_hash:
                return at, True
            if found_hash == 0:
                return at, False
            index = (index + 1) & self._mask
        raise TableFullError(f"channel table full: all {self.slots} entries used")

    def _read_entry(self, at: int) -> tuple[int, int, int, int, int]:
        """Seqlock read: (chan_hash, epoch, last_off, last_pos, last_ts_ns) as one consistent tuple."""
        while True:
            seq_before, chan_hash, epoch, _, last_off, last_pos, last_ts_ns = ENTRY_FIELDS.unpack_from(
                self._view, at
            )
            (seq_after,) = _U64.unpack_from(self._view, at + ENTRY_SEQ_OFFSET)
            if seq_before % 2 == 0 and seq_before == seq_after:
                return chan_hash, epoch, last_off, last_pos, last_ts_ns

    def get(self, chan_hash: int) -> tuple[int, int, int, int] | None:
        """(epoch, last_off, last_pos, last_ts_ns) of the channel, or None if the table lacks it."""
        if chan_hash == 0:
            raise ValueError("chan_hash 0 is reserved for empty entries (channel_hash never returns it)")
        try:
            at, found = self._find(chan_hash)
        except TableFullError:
            return None
        if not found:
            return None
        return self._read_entry(at)[1:]

    def put(self, chan_hash: int, epoch: int, last_off: int, last_pos: int, last_ts_ns: int) -> None:
        """Insert or update the channel's entry. Single writer (the owner slot) only."""
        if chan_hash == 0:
            raise ValueError("chan_hash 0 is reserved for empty entries (channel_hash never returns it)")
        if not 0 <= epoch <= 0xFFFFFFFF:
            raise OverflowError(f"channel table epoch {epoch} is out of range 0..2**32-1")
        for name, value in (("last_off", last_off), ("last_pos", last_pos), ("last_ts_ns", last_ts_ns)):
            if not 0 <= value <= 0xFFFFFFFFFFFFFFFF:
                raise OverflowError(f"channel table {name} {value} is out of range 0..2**64-1")
        at, found = self._find(chan_hash)
        used = len(self)
        if not found and used + 1 > max_used(self.slots):
            raise TableFullError(
                f"channel table full: {used} of {self.slots} entries used, the limit is "
                f"{max_used(self.slots)} (90%); configure more channel-table slots"
            )
        (seq,) = _U64.unpack_from(self._view, at + ENTRY_SEQ_OFFSET)
        # A writer that died mid-update left seq odd: keep it odd rather than flipping it even.
        writing_seq = seq | 1
        _U64.pack_into(self._view, at + ENTRY_SEQ_OFFSET, writing_seq)
        ENTRY_FIELDS.pack_into(
            self._view, at, writing_seq, chan_hash, epoch, 0, last_off, last_pos, last_ts_ns
        )
        _U64.pack_into(self._view, at + ENTRY_SEQ_OFFSET, writing_seq + 1)
        if not found:
            _U64.pack_into(self._view, self._offset + COUNT_OFFSET, used + 1)

    def items(self) -> Iterator[tuple[int, int, int, int, int]]:
        """(chan_hash, epoch, last_off, last_pos, last_ts_ns) of every used entry, in table order."""
        for index in range(self.slots):
            at = self._entry_at(index)
            if _U64.unpack_from(self._view, at + ENTRY_HASH_OFFSET)[0] != 0:
                yield self._read_entry(at)
