"""Pure-Python reference of wsd.ext.chantable: the owner's per-channel state, readable by every slot.

Open addressing with linear probing over 64-byte entries keyed by the channel's two hashes (h1, h2);
each entry guarded by a seqlock (`seq` odd while the single writer updates it), entry moves guarded
by the table's `generation` (odd while they last). Forgetting a channel shifts the rest of its
probe run back (no tombstones) and counts one more forget for its bucket, so the channel comes back
in a new epoch. The writer's least-recently-used order lives in its own memory. This module is the
executable specification (not atomic); the server uses wsd.ext.chantable.
"""

import struct
from collections import OrderedDict
from collections.abc import Callable, Iterator

TABLE_MAGIC = int.from_bytes(b"WSDCHAN2", "little")
HEADER_SIZE = 64  # magic u64, slots u64, used u64, generation u64, base epoch u32, buckets u32
MAGIC_OFFSET = 0
SLOTS_OFFSET = 8
COUNT_OFFSET = 16
GENERATION_OFFSET = 24
BASE_EPOCH_OFFSET = 32
BUCKETS_OFFSET = 36
ENTRY_SIZE = 64
# Entry: seq u64, h1 u64 (0 = empty), epoch u32, pad u32, last_off u64, last_pos u64,
# last_ts_ns u64, h2 u64, 8 reserved bytes.
ENTRY_SEQ_OFFSET = 0
ENTRY_HASH_OFFSET = 8
ENTRY_LAST_TS_OFFSET = 40
ENTRY_HASH2_OFFSET = 48
ENTRY_FIELDS = struct.Struct("<QQIIQQQQ")  # seq .. h2
MAX_LOAD_NUMERATOR = 9  # at most 90% of the entries used, so probes stay short
MAX_LOAD_DENOMINATOR = 10
NO_POSITION = 0xFFFFFFFFFFFFFFFF

_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")


class TableFullError(RuntimeError):
    """The channel table has no free entry within its load limit: configure more table slots."""


def check_slots(slots: int) -> None:
    if slots < 1 or slots & (slots - 1):
        raise ValueError(f"channel table slots must be a power of two, got {slots}")


def check_buckets(buckets: int) -> None:
    if not 1 <= buckets <= 0xFFFFFFFF:
        raise ValueError(f"channel table forget buckets must be in 1..2**32-1, got {buckets}")


def max_used(slots: int) -> int:
    return slots * MAX_LOAD_NUMERATOR // MAX_LOAD_DENOMINATOR


class ChannelTable:
    """(h1, h2) -> (epoch, last_off, last_pos, last_ts_ns), one writer, many readers."""

    def __init__(self, buf, offset: int, slots: int, buckets: int = 65536) -> None:
        check_slots(slots)
        check_buckets(buckets)
        view = memoryview(buf).cast("B")
        if view.readonly:
            raise ValueError("ChannelTable needs a writable buffer (mmap or bytearray)")
        if offset < 0 or offset % 8:
            raise ValueError(f"channel table offset must be a non-negative multiple of 8, got {offset}")
        needed = offset + ChannelTable.region_size(slots, buckets)
        if needed > len(view):
            raise ValueError(
                f"channel table of {slots} slots at offset {offset} needs {needed} bytes, the buffer has {len(view)}"
            )
        self._view = view
        self._offset = offset
        self._entries = offset + HEADER_SIZE
        self._counts = self._entries + slots * ENTRY_SIZE
        self.slots = slots
        self.buckets = buckets
        self.limit = max_used(slots)
        self._mask = slots - 1
        self._lru: OrderedDict[tuple[int, int], None] | None = None

    @staticmethod
    def region_size(slots: int, buckets: int = 65536) -> int:
        """Bytes a table of `slots` entries and `buckets` forget counters occupies."""
        check_slots(slots)
        check_buckets(buckets)
        return HEADER_SIZE + slots * ENTRY_SIZE + (4 * buckets + 7) // 8 * 8

    def init(self, base_epoch: int = 1, already_zeroed: bool = False) -> None:
        """Write an empty table. Called once, by the segment's creator (`already_zeroed`: only
        the header needs writing, the memory is known to be zero)."""
        size = HEADER_SIZE if already_zeroed else ChannelTable.region_size(self.slots, self.buckets)
        self._view[self._offset : self._offset + size] = bytes(size)
        _U64.pack_into(self._view, self._offset + MAGIC_OFFSET, TABLE_MAGIC)
        _U64.pack_into(self._view, self._offset + SLOTS_OFFSET, self.slots)
        _U32.pack_into(self._view, self._offset + BASE_EPOCH_OFFSET, base_epoch)
        _U32.pack_into(self._view, self._offset + BUCKETS_OFFSET, self.buckets)

    def check(self) -> None:
        """Raise ValueError unless the header holds this table's magic, slot and bucket count."""
        (magic,) = _U64.unpack_from(self._view, self._offset + MAGIC_OFFSET)
        (slots,) = _U64.unpack_from(self._view, self._offset + SLOTS_OFFSET)
        (buckets,) = _U32.unpack_from(self._view, self._offset + BUCKETS_OFFSET)
        if magic != TABLE_MAGIC or slots != self.slots or buckets != self.buckets:
            raise ValueError(
                f"no channel table of {self.slots} slots and {self.buckets} buckets at offset {self._offset} "
                f"(magic {magic:#x}, slots {slots}, buckets {buckets}); was the segment initialised with this "
                "configuration?"
            )

    def __len__(self) -> int:
        return self._u64(self._offset + COUNT_OFFSET)

    @property
    def generation(self) -> int:
        """Odd while the writer moves entries; readers retry a lookup it overlapped."""
        return self._u64(self._offset + GENERATION_OFFSET)

    def _u64(self, at: int) -> int:
        return _U64.unpack_from(self._view, at)[0]

    def _set_u64(self, at: int, value: int) -> None:
        _U64.pack_into(self._view, at, value)

    def _entry_at(self, index: int) -> int:
        return self._entries + index * ENTRY_SIZE

    def _find(self, h1: int, h2: int) -> tuple[int, bool]:
        """(entry byte offset, found): the entry holding (h1, h2), or the empty entry ending the probe.

        Raises TableFullError if neither exists (every entry probed).
        """
        index = h1 & self._mask
        for _ in range(self.slots):
            at = self._entry_at(index)
            entry_h1 = self._u64(at + ENTRY_HASH_OFFSET)
            if entry_h1 == h1 and self._u64(at + ENTRY_HASH2_OFFSET) == h2:
                return at, True
            if entry_h1 == 0:
                return at, False
            index = (index + 1) & self._mask
        raise TableFullError(f"channel table full: all {self.slots} entries used")

    def _bucket_at(self, h1: int) -> int:
        return self._counts + 4 * (h1 % self.buckets)

    def absent_epoch(self, h1: int) -> int:
        """The epoch a channel of h1's bucket starts in when it is (re-)created."""
        (base,) = _U32.unpack_from(self._view, self._offset + BASE_EPOCH_OFFSET)
        (forgets,) = _U32.unpack_from(self._view, self._bucket_at(h1))
        return (base + forgets) & 0xFFFFFFFF

    def _lookup(self, h1: int, h2: int) -> tuple[bool, int, int, int, int]:
        """(found, epoch, last_off, last_pos, last_ts_ns), consistent: no entry update (seq) and no
        move (generation) overlapped the read."""
        if h1 == 0:
            raise ValueError("h1 0 is reserved for empty entries (the channel hasher never returns it)")
        while True:
            generation = self.generation
            if generation % 2:
                continue
            try:
                at, found = self._find(h1, h2)
            except TableFullError:
                at, found = 0, False
            if found:
                seq_before, _, epoch, _, last_off, last_pos, last_ts_ns, _ = ENTRY_FIELDS.unpack_from(self._view, at)
                if seq_before % 2 or self._u64(at + ENTRY_SEQ_OFFSET) != seq_before:
                    continue
            else:
                epoch, last_off, last_pos, last_ts_ns = self.absent_epoch(h1), 0, NO_POSITION, 0
            if self.generation == generation:
                return found, epoch, last_off, last_pos, last_ts_ns

    def get(self, h1: int, h2: int) -> tuple[int, int, int, int] | None:
        """(epoch, last_off, last_pos, last_ts_ns) of the channel, or None if the table lacks it."""
        found, *fields = self._lookup(h1, h2)
        return tuple(fields) if found else None

    def state(self, h1: int, h2: int) -> tuple[int, int, int, int]:
        """(epoch, last_off, last_pos, last_ts_ns) of the channel; for one the table lacks, the epoch
        its first message will have, with offset 0 and no position."""
        return self._lookup(h1, h2)[1:]

    def items(self) -> Iterator[tuple[int, int, int, int, int, int]]:
        """(h1, h2, epoch, last_off, last_pos, last_ts_ns) of every used entry, in table order."""
        for index in range(self.slots):
            at = self._entry_at(index)
            h1 = self._u64(at + ENTRY_HASH_OFFSET)
            if h1:
                h2 = self._u64(at + ENTRY_HASH2_OFFSET)
                found, *fields = self._lookup(h1, h2)
                if found:
                    yield (h1, h2, *fields)

    # -- the writer --

    def put(self, h1: int, h2: int, epoch: int, last_off: int, last_pos: int, last_ts_ns: int) -> None:
        """Insert or update the channel's entry, and make it the most recently used. Writer only."""
        if h1 == 0:
            raise ValueError("h1 0 is reserved for empty entries (the channel hasher never returns it)")
        if not 0 <= epoch <= 0xFFFFFFFF:
            raise OverflowError(f"channel table epoch {epoch} is out of range 0..2**32-1")
        for name, value in (("h2", h2), ("last_off", last_off), ("last_pos", last_pos), ("last_ts_ns", last_ts_ns)):
            if not 0 <= value <= 0xFFFFFFFFFFFFFFFF:
                raise OverflowError(f"channel table {name} {value} is out of range 0..2**64-1")
        lru = self._writer_lru()
        at, found = self._find(h1, h2)
        used = len(self)
        if not found and used + 1 > self.limit:
            raise TableFullError(
                f"channel table full: {used} of {self.slots} entries used, the limit is "
                f"{self.limit} (90%); configure more channel-table slots"
            )
        # A writer that died mid-update left seq odd: keep it odd rather than flipping it even.
        writing_seq = self._u64(at + ENTRY_SEQ_OFFSET) | 1
        self._set_u64(at + ENTRY_SEQ_OFFSET, writing_seq)
        ENTRY_FIELDS.pack_into(self._view, at, writing_seq, h1, epoch, 0, last_off, last_pos, last_ts_ns, h2)
        self._set_u64(at + ENTRY_SEQ_OFFSET, writing_seq + 1)
        if not found:
            self._set_u64(self._offset + COUNT_OFFSET, used + 1)
        lru[(h1, h2)] = None
        lru.move_to_end((h1, h2))

    def touch(self, h1: int, h2: int) -> None:
        """Make the channel the most recently used (the writer saw it in use). Writer only."""
        lru = self._writer_lru()
        if (h1, h2) in lru:
            lru.move_to_end((h1, h2))

    def lru_oldest(self, limit: int) -> list[tuple[int, int]]:
        """(h1, h2) of up to `limit` channels, least recently used first. Writer only."""
        keys = []
        for key in self._writer_lru():
            if len(keys) >= limit:
                break
            keys.append(key)
        return keys

    def forget(self, h1: int, h2: int, confirm: Callable[[], object] | None = None) -> bool:
        """Drop the channel's entry (if any) and move its bucket to a new epoch. Writer only.

        `confirm` is called once readers are fenced out (the generation is odd): only if it
        returns true is the channel forgotten.
        """
        if h1 == 0:
            raise ValueError("h1 0 is reserved for empty entries (the channel hasher never returns it)")
        lru = self._writer_lru()
        generation = self.generation
        self._set_u64(self._offset + GENERATION_OFFSET, generation + 1)
        try:
            go_ahead = True if confirm is None else bool(confirm())
            if go_ahead:
                # The bucket's new epoch first (see the Cython module).
                bucket_at = self._bucket_at(h1)
                _U32.pack_into(self._view, bucket_at, (_U32.unpack_from(self._view, bucket_at)[0] + 1) & 0xFFFFFFFF)
                at, found = self._find(h1, h2)
                if found:
                    self._remove_at((at - self._entries) // ENTRY_SIZE)
                    self._set_u64(self._offset + COUNT_OFFSET, len(self) - 1)
                    lru.pop((h1, h2), None)
        finally:
            self._set_u64(self._offset + GENERATION_OFFSET, generation + 2)
        return go_ahead

    def _remove_at(self, hole: int) -> None:
        """Backward-shift deletion: later entries of the probe run that may live in the hole move there."""
        index = hole
        while True:
            index = (index + 1) & self._mask
            at = self._entry_at(index)
            h1 = self._u64(at + ENTRY_HASH_OFFSET)
            if h1 == 0:
                break
            home = h1 & self._mask
            # The entry may move to the hole unless its home lies cyclically in (hole, index].
            if (index > hole and (home <= hole or home > index)) or (index < hole and hole >= home > index):
                self._write_entry(self._entry_at(hole), bytes(self._view[at + ENTRY_HASH_OFFSET : at + ENTRY_SIZE]))
                hole = index
        self._write_entry(self._entry_at(hole), None)

    def _write_entry(self, at: int, body: bytes | None) -> None:
        """The 56 bytes after seq (or zeros: an empty entry), under the entry's seqlock."""
        writing_seq = self._u64(at + ENTRY_SEQ_OFFSET) | 1
        self._set_u64(at + ENTRY_SEQ_OFFSET, writing_seq)
        self._view[at + ENTRY_HASH_OFFSET : at + ENTRY_SIZE] = body if body is not None else bytes(56)
        self._set_u64(at + ENTRY_SEQ_OFFSET, writing_seq + 1)

    def repair(self) -> list[tuple[int, int]]:
        """Make the table whole after its last writer died, and become its writer; call it first.

        Entries left mid-update (seq odd) are dropped, and if the writer died while moving
        entries (generation odd) the table is rebuilt from its intact entries. Returns the keys
        whose state was lost that way; the least recently used order is rebuilt from last_ts_ns.
        """
        generation = self.generation
        rebuild = generation % 2 == 1
        torn: list[tuple[int, int]] = []
        intact: list[tuple[tuple[int, int], bytes]] = []
        for index in range(self.slots):
            at = self._entry_at(index)
            seq = self._u64(at + ENTRY_SEQ_OFFSET)
            h1, h2 = self._u64(at + ENTRY_HASH_OFFSET), self._u64(at + ENTRY_HASH2_OFFSET)
            if seq % 2:
                rebuild = True
                if h1:
                    torn.append((h1, h2))
            elif h1:
                intact.append(((h1, h2), bytes(self._view[at + ENTRY_HASH_OFFSET : at + ENTRY_SIZE])))
        seen: set[tuple[int, int]] = set()
        if rebuild:
            if generation % 2 == 0:
                generation += 1
                self._set_u64(self._offset + GENERATION_OFFSET, generation)
            self._view[self._entries : self._counts] = bytes(self._counts - self._entries)
            for key, body in intact:
                if key in seen:
                    continue  # a completed copy from an interrupted move
                seen.add(key)
                at, _ = self._find(*key)
                self._write_entry(at, body)
            self._set_u64(self._offset + COUNT_OFFSET, len(seen))
            self._set_u64(self._offset + GENERATION_OFFSET, generation + 1)
        elif len(intact) != len(self):
            self._set_u64(self._offset + COUNT_OFFSET, len(intact))  # killed between insert and count
        self._lru = self._build_lru()
        return [key for key in dict.fromkeys(torn) if key not in seen]

    def _writer_lru(self) -> OrderedDict:
        if self._lru is None:
            self._lru = self._build_lru()
        return self._lru

    def _build_lru(self) -> OrderedDict:
        ordered = []
        for index in range(self.slots):
            at = self._entry_at(index)
            h1 = self._u64(at + ENTRY_HASH_OFFSET)
            if h1:
                ordered.append((self._u64(at + ENTRY_LAST_TS_OFFSET), index, (h1, self._u64(at + ENTRY_HASH2_OFFSET))))
        ordered.sort()
        return OrderedDict((key, None) for _, _, key in ordered)
