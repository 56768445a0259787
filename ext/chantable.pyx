"""The owner's per-channel state (epoch, last offset, last ring position, last publish time) in shared
memory, written by the owning slot and read by every other slot.

Open addressing with linear probing over 64-byte entries, each guarded by a seqlock (`seq` odd while
the single writer updates it). Entries are never deleted, so an empty entry ends a probe. Layout:
docs/bus.md ("Memory layouts"); reference implementation: ext/chantable_ref.py.
"""

from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memcpy, memset

from wsd.ext.atomics cimport (
    wsd_cpu_relax,
    wsd_fence_acquire,
    wsd_fence_release,
    wsd_fence_seq_cst,
    wsd_load_acquire_u64,
    wsd_store_release_u64,
)

TABLE_MAGIC = int.from_bytes(b"WSDCHAN1", "little")
HEADER_SIZE = 64
ENTRY_SIZE = 64

cdef uint64_t C_TABLE_MAGIC = 0x314E414843445357ULL  # b"WSDCHAN1" little-endian

cdef enum:
    C_HEADER_SIZE = 64  # magic u64, slots u64, used-entry count u64, reserved
    MAGIC_OFFSET = 0
    SLOTS_OFFSET = 8
    COUNT_OFFSET = 16
    C_ENTRY_SIZE = 64
    # Entry: seq u64, chan_hash u64 (0 = empty), epoch u32, pad u32, last_off u64, last_pos u64,
    # last_ts_ns u64, 16 reserved bytes.
    SEQ_OFFSET = 0
    HASH_OFFSET = 8
    EPOCH_OFFSET = 16
    LAST_OFF_OFFSET = 24
    LAST_POS_OFFSET = 32
    LAST_TS_OFFSET = 40

# A reader spins briefly on an entry whose seq is odd, then yields the CPU (on a busy machine
# the writer may be descheduled mid-update), and only after this long concludes that the writer
# died mid-update (the role's next holder rewrites the entry).
cdef long SPINS_BEFORE_YIELDING = 1000
cdef double MAX_SEQLOCK_WAIT_S = 2.0

cdef extern from "<sched.h>":
    int sched_yield() nogil

from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec


cdef double monotonic_s() noexcept nogil:
    cdef timespec now
    clock_gettime(CLOCK_MONOTONIC, &now)
    return now.tv_sec + now.tv_nsec * 1e-9


class TableFullError(RuntimeError):
    """The channel table has no free entry within its load limit: configure more table slots."""


def _check_slots(slots: int) -> None:
    if slots < 1 or slots & (slots - 1):
        raise ValueError(f"channel table slots must be a power of two, got {slots}")


cdef inline uint64_t max_used(uint64_t slots) noexcept nogil:
    return slots * 9 // 10  # at most 90% of the entries used, so probes stay short


cdef class ChannelTable:
    """chan_hash -> (epoch, last_off, last_pos, last_ts_ns), one writer, many readers."""

    def __init__(self, buf, Py_ssize_t offset, slots: int) -> None:
        _check_slots(slots)
        cdef unsigned char[::1] view = buf  # raises on a read-only buffer
        if offset < 0 or offset % 8:
            raise ValueError(f"channel table offset must be a non-negative multiple of 8, got {offset}")
        cdef Py_ssize_t needed = offset + C_HEADER_SIZE + slots * C_ENTRY_SIZE
        if needed > view.shape[0]:
            raise ValueError(
                f"channel table of {slots} slots at offset {offset} needs {needed} bytes, "
                f"the buffer has {view.shape[0]}"
            )
        if <size_t>(&view[0] + offset) % 8:
            raise ValueError("channel table memory is not 8-byte aligned (use an mmap, or a fresh bytearray)")
        self._view = view
        self._offset = offset
        self._header = &view[0] + offset
        self._entries = self._header + C_HEADER_SIZE
        self.slots = slots
        self._mask = self.slots - 1

    @staticmethod
    def region_size(slots: int) -> int:
        """Bytes a table of `slots` entries occupies (header + entries)."""
        _check_slots(slots)
        return HEADER_SIZE + slots * ENTRY_SIZE

    def init(self, already_zeroed: bool = False) -> None:
        """Write an empty table. Called once, by the segment's creator.

        `already_zeroed`: the memory is known to be zero (a new file), so only the header is
        written; touching every entry would make each page of the table resident for nothing.
        """
        memset(self._header, 0, C_HEADER_SIZE if already_zeroed else C_HEADER_SIZE + self.slots * C_ENTRY_SIZE)
        memcpy(self._header + MAGIC_OFFSET, &C_TABLE_MAGIC, 8)
        memcpy(self._header + SLOTS_OFFSET, &self.slots, 8)
        wsd_fence_seq_cst()

    def check(self) -> None:
        """Raise ValueError unless the header holds this table's magic and slot count."""
        magic = wsd_load_acquire_u64(self._header + MAGIC_OFFSET)
        slots = wsd_load_acquire_u64(self._header + SLOTS_OFFSET)
        if magic != C_TABLE_MAGIC or slots != self.slots:
            raise ValueError(
                f"no channel table of {self.slots} slots at offset {self._offset} (magic {magic:#x}, "
                f"slots {slots}); was the segment initialised with this configuration?"
            )

    def __len__(self) -> int:
        return wsd_load_acquire_u64(self._header + COUNT_OFFSET)

    cdef unsigned char* _find(self, uint64_t chan_hash, bint* found) noexcept nogil:
        # The entry holding chan_hash (found=1), the empty entry ending its probe (found=0), or NULL
        # if every entry was probed.
        cdef uint64_t index = chan_hash & self._mask
        cdef uint64_t probes
        cdef uint64_t entry_hash
        cdef unsigned char* entry
        for probes in range(self.slots):
            entry = self._entries + index * C_ENTRY_SIZE
            entry_hash = wsd_load_acquire_u64(entry + HASH_OFFSET)
            if entry_hash == chan_hash:
                found[0] = 1
                return entry
            if entry_hash == 0:
                found[0] = 0
                return entry
            index = (index + 1) & self._mask
        found[0] = 0
        return NULL

    cdef tuple _read_entry(self, unsigned char* entry):
        # Seqlock read: retry while the writer is mid-update (seq odd) or updated during our copy.
        cdef uint64_t seq_before, seq_after, chan_hash, last_off, last_pos, last_ts_ns
        cdef uint32_t epoch
        cdef long spins = 0
        cdef double give_up_at = 0.0
        while True:
            seq_before = wsd_load_acquire_u64(entry + SEQ_OFFSET)
            if seq_before & 1 == 0:
                memcpy(&chan_hash, entry + HASH_OFFSET, 8)
                memcpy(&epoch, entry + EPOCH_OFFSET, 4)
                memcpy(&last_off, entry + LAST_OFF_OFFSET, 8)
                memcpy(&last_pos, entry + LAST_POS_OFFSET, 8)
                memcpy(&last_ts_ns, entry + LAST_TS_OFFSET, 8)
                wsd_fence_acquire()
                seq_after = wsd_load_acquire_u64(entry + SEQ_OFFSET)
                if seq_before == seq_after:
                    return chan_hash, epoch, last_off, last_pos, last_ts_ns
            spins += 1
            if spins < SPINS_BEFORE_YIELDING:
                wsd_cpu_relax()
                continue
            if give_up_at == 0.0:
                give_up_at = monotonic_s() + MAX_SEQLOCK_WAIT_S
            elif monotonic_s() > give_up_at:
                raise RuntimeError(
                    "channel table entry stays locked: its owner probably died mid-update; "
                    "it is rewritten when the role's next holder takes over"
                )
            sched_yield()

    def get(self, uint64_t chan_hash):
        """(epoch, last_off, last_pos, last_ts_ns) of the channel, or None if the table lacks it."""
        if chan_hash == 0:
            raise ValueError("chan_hash 0 is reserved for empty entries (channel_hash never returns it)")
        cdef bint found
        cdef unsigned char* entry = self._find(chan_hash, &found)
        if not found:
            return None
        return self._read_entry(entry)[1:]

    def put(self, uint64_t chan_hash, uint32_t epoch, uint64_t last_off, uint64_t last_pos,
            uint64_t last_ts_ns) -> None:
        """Insert or update the channel's entry. Single writer (the owner slot) only."""
        if chan_hash == 0:
            raise ValueError("chan_hash 0 is reserved for empty entries (channel_hash never returns it)")
        cdef bint found
        cdef unsigned char* entry = self._find(chan_hash, &found)
        if entry == NULL:
            raise TableFullError(f"channel table full: all {self.slots} entries used")
        cdef uint64_t used = wsd_load_acquire_u64(self._header + COUNT_OFFSET)
        if not found and used + 1 > max_used(self.slots):
            raise TableFullError(
                f"channel table full: {used} of {self.slots} entries used, the limit is "
                f"{max_used(self.slots)} (90%); configure more channel-table slots"
            )
        # A writer that died mid-update left seq odd: keep it odd rather than flipping it even.
        cdef uint64_t writing_seq = wsd_load_acquire_u64(entry + SEQ_OFFSET) | 1
        cdef uint32_t zero = 0
        wsd_store_release_u64(entry + SEQ_OFFSET, writing_seq)
        wsd_fence_seq_cst()  # the odd seq is visible before any field changes
        memcpy(entry + EPOCH_OFFSET, &epoch, 4)
        memcpy(entry + EPOCH_OFFSET + 4, &zero, 4)
        memcpy(entry + LAST_OFF_OFFSET, &last_off, 8)
        memcpy(entry + LAST_POS_OFFSET, &last_pos, 8)
        memcpy(entry + LAST_TS_OFFSET, &last_ts_ns, 8)
        # chan_hash last: a prober that sees it also sees the fields (and then checks seq anyway).
        wsd_store_release_u64(entry + HASH_OFFSET, chan_hash)
        wsd_store_release_u64(entry + SEQ_OFFSET, writing_seq + 1)
        if not found:
            wsd_store_release_u64(self._header + COUNT_OFFSET, used + 1)

    def items(self):
        """(chan_hash, epoch, last_off, last_pos, last_ts_ns) of every used entry, in table order."""
        cdef uint64_t index
        cdef unsigned char* entry
        for index in range(self.slots):
            entry = self._entries + index * C_ENTRY_SIZE
            if wsd_load_acquire_u64(entry + HASH_OFFSET) != 0:
                yield self._read_entry(entry)
