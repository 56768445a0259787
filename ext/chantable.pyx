"""The owner's per-channel state (epoch, last offset, last ring position, last publish time) in shared
memory, written by the role's holder (one writer) and read by every process.

Open addressing with linear probing over 64-byte entries keyed by the channel's two hashes (h1, h2;
the table holds no names). Each entry is guarded by its own seqlock (`seq` odd while the writer
updates it); moving entries (forgetting one shifts the rest of its probe run back) happens under
the table's `generation`, odd while it lasts, which readers check around every lookup. A
forgotten channel's bucket counts one more forget, so the channel comes back in a new epoch
(`absent_epoch`). The writer keeps a least-recently-used order of the entries in its own memory
(rebuilt from `last_ts_ns` by `repair`, which a new holder calls first). Layout: docs/bus.md
("Memory layouts"); reference implementation: ext/chantable_ref.py.
"""

from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memcpy, memset

from wsd.ext.atomics cimport (
    wsd_cpu_relax,
    wsd_fence_acquire,
    wsd_fence_seq_cst,
    wsd_load_acquire_u32,
    wsd_load_acquire_u64,
    wsd_store_release_u32,
    wsd_store_release_u64,
)

TABLE_MAGIC = int.from_bytes(b"WSDCHAN2", "little")
HEADER_SIZE = 64
ENTRY_SIZE = 64
NO_POSITION = 0xFFFFFFFFFFFFFFFF

cdef uint64_t C_TABLE_MAGIC = 0x324E414843445357ULL  # b"WSDCHAN2" little-endian
cdef uint64_t C_NO_POSITION = 0xFFFFFFFFFFFFFFFFULL

cdef enum:
    C_HEADER_SIZE = 64
    MAGIC_OFFSET = 0
    SLOTS_OFFSET = 8
    COUNT_OFFSET = 16  # entries in use
    GENERATION_OFFSET = 24  # odd while the writer moves entries
    BASE_EPOCH_OFFSET = 32  # u32: the epoch of a never-forgotten bucket
    BUCKETS_OFFSET = 36  # u32: forget buckets
    C_ENTRY_SIZE = 64
    # Entry: seq u64, h1 u64 (0 = empty), epoch u32, pad u32, last_off u64, last_pos u64,
    # last_ts_ns u64, h2 u64, 8 reserved bytes.
    SEQ_OFFSET = 0
    HASH_OFFSET = 8
    EPOCH_OFFSET = 16
    LAST_OFF_OFFSET = 24
    LAST_POS_OFFSET = 32
    LAST_TS_OFFSET = 40
    HASH2_OFFSET = 48

# A reader spins briefly on an entry (or a table) the writer is changing, then yields the CPU (on a
# busy machine the writer may be descheduled mid-update), and only after this long concludes that
# the writer died mid-update (the role's next holder repairs it).
cdef long SPINS_BEFORE_YIELDING = 1000
cdef double MAX_SEQLOCK_WAIT_S = 2.0

cdef extern from "<sched.h>":
    int sched_yield() nogil

cdef extern from "<stdlib.h>":
    void qsort(void* base, size_t count, size_t size, int (*compare)(const void*, const void*) noexcept nogil) nogil

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


def _check_buckets(buckets: int) -> None:
    if not 1 <= buckets <= 0xFFFFFFFF:
        raise ValueError(f"channel table forget buckets must be in 1..2**32-1, got {buckets}")


cdef inline uint64_t max_used(uint64_t slots) noexcept nogil:
    return slots * 9 // 10  # at most 90% of the entries used, so probes stay short


cdef struct LruKey:
    uint64_t ts
    uint64_t index


cdef int compare_lru_keys(const void* a, const void* b) noexcept nogil:
    cdef const LruKey* x = <const LruKey*>a
    cdef const LruKey* y = <const LruKey*>b
    if x.ts != y.ts:
        return -1 if x.ts < y.ts else 1
    if x.index != y.index:
        return -1 if x.index < y.index else 1
    return 0


cdef int wait_for_writer(long* spins, double* give_up_at) except -1:
    """One step of bounded waiting for a writer mid-update: spin, then yield, then give up."""
    spins[0] += 1
    if spins[0] < SPINS_BEFORE_YIELDING:
        wsd_cpu_relax()
        return 0
    if give_up_at[0] == 0.0:
        give_up_at[0] = monotonic_s() + MAX_SEQLOCK_WAIT_S
    elif monotonic_s() > give_up_at[0]:
        raise RuntimeError(
            "channel table stays locked: its writer probably died mid-update; "
            "the role's next holder repairs it when it takes over"
        )
    sched_yield()
    return 0


cdef class ChannelTable:
    """(h1, h2) -> (epoch, last_off, last_pos, last_ts_ns), one writer, many readers."""

    def __init__(self, buf, Py_ssize_t offset, slots: int, buckets: int = 65536) -> None:
        _check_slots(slots)
        _check_buckets(buckets)
        cdef unsigned char[::1] view = buf  # raises on a read-only buffer
        if offset < 0 or offset % 8:
            raise ValueError(f"channel table offset must be a non-negative multiple of 8, got {offset}")
        cdef Py_ssize_t needed = offset + ChannelTable.region_size(slots, buckets)
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
        self._counts = self._entries + self.slots * C_ENTRY_SIZE
        self.buckets = buckets
        self.limit = max_used(self.slots)
        self._mask = self.slots - 1
        self._prev = NULL
        self._next = NULL

    def __dealloc__(self):
        PyMem_Free(self._prev)
        PyMem_Free(self._next)

    @staticmethod
    def region_size(slots: int, buckets: int = 65536) -> int:
        """Bytes a table of `slots` entries and `buckets` forget counters occupies."""
        _check_slots(slots)
        _check_buckets(buckets)
        return HEADER_SIZE + slots * ENTRY_SIZE + (4 * buckets + 7) // 8 * 8

    def init(self, uint32_t base_epoch=1, already_zeroed: bool = False) -> None:
        """Write an empty table. Called once, by the segment's creator.

        `already_zeroed`: the memory is known to be zero (a new file), so only the header is
        written; touching every entry would make each page of the table resident for nothing.
        """
        cdef uint32_t buckets = self.buckets
        memset(self._header, 0, C_HEADER_SIZE if already_zeroed else ChannelTable.region_size(self.slots, self.buckets))
        memcpy(self._header + MAGIC_OFFSET, &C_TABLE_MAGIC, 8)
        memcpy(self._header + SLOTS_OFFSET, &self.slots, 8)
        memcpy(self._header + BASE_EPOCH_OFFSET, &base_epoch, 4)
        memcpy(self._header + BUCKETS_OFFSET, &buckets, 4)
        wsd_fence_seq_cst()

    def check(self) -> None:
        """Raise ValueError unless the header holds this table's magic, slot and bucket count."""
        magic = wsd_load_acquire_u64(self._header + MAGIC_OFFSET)
        slots = wsd_load_acquire_u64(self._header + SLOTS_OFFSET)
        buckets = wsd_load_acquire_u32(self._header + BUCKETS_OFFSET)
        if magic != C_TABLE_MAGIC or slots != self.slots or buckets != self.buckets:
            raise ValueError(
                f"no channel table of {self.slots} slots and {self.buckets} buckets at offset {self._offset} "
                f"(magic {magic:#x}, slots {slots}, buckets {buckets}); was the segment initialised with this "
                "configuration?"
            )

    def __len__(self) -> int:
        return wsd_load_acquire_u64(self._header + COUNT_OFFSET)

    @property
    def generation(self) -> int:
        """Odd while the writer moves entries; readers retry a lookup it overlapped."""
        return wsd_load_acquire_u64(self._header + GENERATION_OFFSET)

    # -- lookups (any process) --

    cdef unsigned char* _find(self, uint64_t h1, uint64_t h2, bint* found) noexcept nogil:
        # The entry holding (h1, h2) (found=1), the empty entry ending its probe (found=0), or NULL
        # if every entry was probed.
        cdef uint64_t index = h1 & self._mask
        cdef uint64_t probes
        cdef uint64_t entry_h1, entry_h2
        cdef unsigned char* entry
        for probes in range(self.slots):
            entry = self._entries + index * C_ENTRY_SIZE
            entry_h1 = wsd_load_acquire_u64(entry + HASH_OFFSET)
            if entry_h1 == h1:
                memcpy(&entry_h2, entry + HASH2_OFFSET, 8)
                if entry_h2 == h2:
                    found[0] = 1
                    return entry
            elif entry_h1 == 0:
                found[0] = 0
                return entry
            index = (index + 1) & self._mask
        found[0] = 0
        return NULL

    cdef inline uint32_t _absent_epoch(self, uint64_t h1) noexcept nogil:
        cdef uint32_t base
        memcpy(&base, self._header + BASE_EPOCH_OFFSET, 4)
        return base + wsd_load_acquire_u32(self._counts + 4 * (h1 % self.buckets))

    cdef tuple _lookup(self, uint64_t h1, uint64_t h2):
        # (found, epoch, last_off, last_pos, last_ts_ns) as one consistent read: no entry update
        # (the entry's seq) and no move (the table's generation) overlapped it.
        if h1 == 0:
            raise ValueError("h1 0 is reserved for empty entries (the channel hasher never returns it)")
        cdef uint64_t generation_before, seq_before, seq_after, last_off, last_pos, last_ts_ns
        cdef uint32_t epoch
        cdef bint found
        cdef unsigned char* entry
        cdef long spins = 0
        cdef double give_up_at = 0.0
        while True:
            generation_before = wsd_load_acquire_u64(self._header + GENERATION_OFFSET)
            if generation_before & 1:
                wait_for_writer(&spins, &give_up_at)
                continue
            entry = self._find(h1, h2, &found)
            if found:
                seq_before = wsd_load_acquire_u64(entry + SEQ_OFFSET)
                if seq_before & 1:
                    wait_for_writer(&spins, &give_up_at)
                    continue
                memcpy(&epoch, entry + EPOCH_OFFSET, 4)
                memcpy(&last_off, entry + LAST_OFF_OFFSET, 8)
                memcpy(&last_pos, entry + LAST_POS_OFFSET, 8)
                memcpy(&last_ts_ns, entry + LAST_TS_OFFSET, 8)
                wsd_fence_acquire()
                seq_after = wsd_load_acquire_u64(entry + SEQ_OFFSET)
                if seq_before != seq_after:
                    wait_for_writer(&spins, &give_up_at)
                    continue
            else:
                epoch = self._absent_epoch(h1)
                last_off, last_pos, last_ts_ns = 0, C_NO_POSITION, 0
                wsd_fence_acquire()
            if wsd_load_acquire_u64(self._header + GENERATION_OFFSET) == generation_before:
                return found, epoch, last_off, last_pos, last_ts_ns
            wait_for_writer(&spins, &give_up_at)

    def get(self, uint64_t h1, uint64_t h2):
        """(epoch, last_off, last_pos, last_ts_ns) of the channel, or None if the table lacks it."""
        result = self._lookup(h1, h2)
        return result[1:] if result[0] else None

    def state(self, uint64_t h1, uint64_t h2) -> tuple:
        """(epoch, last_off, last_pos, last_ts_ns) of the channel; for one the table lacks, the epoch
        its first message will have, with offset 0 and no position."""
        return self._lookup(h1, h2)[1:]

    def absent_epoch(self, uint64_t h1) -> int:
        """The epoch a channel of h1's bucket starts in when it is (re-)created."""
        return self._absent_epoch(h1)

    def items(self):
        """(h1, h2, epoch, last_off, last_pos, last_ts_ns) of every used entry, in table order."""
        cdef uint64_t index, h1, h2
        cdef unsigned char* entry
        for index in range(self.slots):
            entry = self._entries + index * C_ENTRY_SIZE
            h1 = wsd_load_acquire_u64(entry + HASH_OFFSET)
            if h1 != 0:
                memcpy(&h2, entry + HASH2_OFFSET, 8)
                found, *fields = self._lookup(h1, h2)
                if found:
                    yield (h1, h2, *fields)

    # -- the writer (the role's holder) --

    def put(self, uint64_t h1, uint64_t h2, uint32_t epoch, uint64_t last_off, uint64_t last_pos,
            uint64_t last_ts_ns) -> None:
        """Insert or update the channel's entry, and make it the most recently used. Writer only."""
        if h1 == 0:
            raise ValueError("h1 0 is reserved for empty entries (the channel hasher never returns it)")
        self._ensure_lru()
        cdef bint found
        cdef unsigned char* entry = self._find(h1, h2, &found)
        if entry == NULL:
            raise TableFullError(f"channel table full: all {self.slots} entries used")
        cdef uint64_t used = wsd_load_acquire_u64(self._header + COUNT_OFFSET)
        if not found and used + 1 > self.limit:
            raise TableFullError(
                f"channel table full: {used} of {self.slots} entries used, the limit is "
                f"{self.limit} (90%); configure more channel-table slots"
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
        memcpy(entry + HASH2_OFFSET, &h2, 8)
        # h1 last: a prober that sees it also sees the fields and h2 (and then checks seq anyway).
        wsd_store_release_u64(entry + HASH_OFFSET, h1)
        wsd_store_release_u64(entry + SEQ_OFFSET, writing_seq + 1)
        cdef uint64_t index = (entry - self._entries) // C_ENTRY_SIZE
        if found:
            self._lru_unlink(index)
        else:
            wsd_store_release_u64(self._header + COUNT_OFFSET, used + 1)
        self._lru_push_back(index)

    def touch(self, uint64_t h1, uint64_t h2) -> None:
        """Make the channel the most recently used (the writer saw it in use). Writer only."""
        self._ensure_lru()
        cdef bint found
        cdef unsigned char* entry = self._find(h1, h2, &found)
        if not found:
            return
        cdef uint64_t index = (entry - self._entries) // C_ENTRY_SIZE
        self._lru_unlink(index)
        self._lru_push_back(index)

    def lru_oldest(self, Py_ssize_t limit) -> list:
        """(h1, h2) of up to `limit` channels, least recently used first. Writer only."""
        self._ensure_lru()
        cdef list keys = []
        cdef uint64_t index = self._next[self.slots]
        cdef uint64_t h1, h2
        cdef unsigned char* entry
        while index != self.slots and len(keys) < limit:
            entry = self._entries + index * C_ENTRY_SIZE
            memcpy(&h1, entry + HASH_OFFSET, 8)
            memcpy(&h2, entry + HASH2_OFFSET, 8)
            keys.append((h1, h2))
            index = self._next[index]
        return keys

    def forget(self, uint64_t h1, uint64_t h2, confirm=None) -> bool:
        """Drop the channel's entry (if any) and move its bucket to a new epoch. Writer only.

        `confirm` is called once readers are fenced out (the generation is odd and a full fence
        passed): only if it returns true is the channel forgotten. So a reader that announced
        interest before looking up (and fenced) is either seen by `confirm`, or looks up after
        the change and finds the channel absent in its new epoch.
        """
        if h1 == 0:
            raise ValueError("h1 0 is reserved for empty entries (the channel hasher never returns it)")
        self._ensure_lru()
        cdef uint64_t generation = wsd_load_acquire_u64(self._header + GENERATION_OFFSET)
        wsd_store_release_u64(self._header + GENERATION_OFFSET, generation + 1)
        wsd_fence_seq_cst()
        cdef bint go_ahead = True
        try:
            if confirm is not None:
                go_ahead = bool(confirm())
            if go_ahead:
                self._forget(h1, h2)
        finally:
            wsd_store_release_u64(self._header + GENERATION_OFFSET, generation + 2)
        return go_ahead

    cdef void _forget(self, uint64_t h1, uint64_t h2) noexcept nogil:
        # Under an odd generation. The bucket's new epoch first: a writer killed after it and
        # before the move is repaired into the same state as one killed after the move.
        cdef unsigned char* count = self._counts + 4 * (h1 % self.buckets)
        wsd_store_release_u32(count, wsd_load_acquire_u32(count) + 1)
        cdef bint found
        cdef unsigned char* entry = self._find(h1, h2, &found)
        if not found:
            return
        self._remove_at((entry - self._entries) // C_ENTRY_SIZE)
        wsd_store_release_u64(self._header + COUNT_OFFSET, wsd_load_acquire_u64(self._header + COUNT_OFFSET) - 1)

    cdef void _remove_at(self, uint64_t hole) noexcept nogil:
        # Backward-shift deletion: every later entry of the probe run that may live in the hole
        # moves there, so an empty entry still ends every probe (no tombstones to pile up).
        self._lru_unlink(hole)
        cdef uint64_t index = hole
        cdef uint64_t h1, home
        cdef unsigned char* entry
        while True:
            index = (index + 1) & self._mask
            entry = self._entries + index * C_ENTRY_SIZE
            h1 = wsd_load_acquire_u64(entry + HASH_OFFSET)
            if h1 == 0:
                break
            home = h1 & self._mask
            # The entry may move to the hole unless its home lies cyclically in (hole, index].
            if (index > hole and (home <= hole or home > index)) or (index < hole and home <= hole and home > index):
                self._write_entry(self._entries + hole * C_ENTRY_SIZE, entry + HASH_OFFSET)
                self._lru_move(index, hole)
                hole = index
        self._write_entry(self._entries + hole * C_ENTRY_SIZE, NULL)

    cdef void _write_entry(self, unsigned char* entry, const unsigned char* source) noexcept nogil:
        # The 56 bytes after seq from `source`, or zeros (an empty entry), under the entry's seqlock:
        # a writer killed mid-copy leaves seq odd, so the repair knows this copy is torn.
        cdef uint64_t writing_seq = wsd_load_acquire_u64(entry + SEQ_OFFSET) | 1
        wsd_store_release_u64(entry + SEQ_OFFSET, writing_seq)
        wsd_fence_seq_cst()
        if source == NULL:
            memset(entry + HASH_OFFSET, 0, C_ENTRY_SIZE - HASH_OFFSET)
        else:
            memcpy(entry + HASH_OFFSET, source, C_ENTRY_SIZE - HASH_OFFSET)
        wsd_store_release_u64(entry + SEQ_OFFSET, writing_seq + 1)

    def repair(self) -> list:
        """Make the table whole after its last writer died, and become its writer; call it first.

        Entries left mid-update (seq odd) are dropped, and if the writer died while moving
        entries (generation odd) the table is rebuilt from its intact entries. Returns the keys
        (h1, h2) whose state was lost that way (a torn copy of an entry that is intact elsewhere
        is not lost); the caller restores them from the rings or forgets them. The least recently
        used order is rebuilt from last_ts_ns.
        """
        cdef uint64_t generation = wsd_load_acquire_u64(self._header + GENERATION_OFFSET)
        cdef uint64_t index, seq, h1, h2
        cdef unsigned char* entry
        cdef list torn = []
        cdef list intact = []
        cdef bint rebuild = generation & 1
        for index in range(self.slots):
            entry = self._entries + index * C_ENTRY_SIZE
            seq = wsd_load_acquire_u64(entry + SEQ_OFFSET)
            memcpy(&h1, entry + HASH_OFFSET, 8)
            memcpy(&h2, entry + HASH2_OFFSET, 8)
            if seq & 1:
                rebuild = True
                if h1 != 0:
                    torn.append((h1, h2))
            elif h1 != 0:
                intact.append(((h1, h2), (<char*>entry)[HASH_OFFSET:C_ENTRY_SIZE]))
        cdef uint64_t used = 0
        cdef set seen = set()
        cdef bytes body
        cdef bint found
        if rebuild:
            if not generation & 1:
                generation += 1
                wsd_store_release_u64(self._header + GENERATION_OFFSET, generation)
            wsd_fence_seq_cst()
            memset(self._entries, 0, self.slots * C_ENTRY_SIZE)
            for key, body in intact:
                if key in seen:
                    continue  # a completed copy from an interrupted move
                seen.add(key)
                entry = self._find(key[0], key[1], &found)
                self._write_entry(entry, <const unsigned char*><const char*>body)
                used += 1
            wsd_store_release_u64(self._header + COUNT_OFFSET, used)
            wsd_store_release_u64(self._header + GENERATION_OFFSET, generation + 1)
        else:
            used = len(intact)
            if used != wsd_load_acquire_u64(self._header + COUNT_OFFSET):
                wsd_store_release_u64(self._header + COUNT_OFFSET, used)  # killed between insert and count
        self._build_lru()
        # (Torn entries exist only if rebuilt, and then `seen` holds every intact key.)
        return [key for key in dict.fromkeys(torn) if key not in seen]

    # -- the writer's least-recently-used order (process memory, entry indexes; slots = the head) --

    cdef int _ensure_lru(self) except -1:
        if self._prev == NULL:
            self._build_lru()
        return 0

    cdef int _build_lru(self) except -1:
        cdef size_t nodes = self.slots + 1
        if self._prev == NULL:
            self._prev = <uint32_t*>PyMem_Malloc(nodes * sizeof(uint32_t))
            self._next = <uint32_t*>PyMem_Malloc(nodes * sizeof(uint32_t))
            if self._prev == NULL or self._next == NULL:
                raise MemoryError()
        self._prev[self.slots] = self._next[self.slots] = self.slots
        cdef LruKey* keys = <LruKey*>PyMem_Malloc(self.slots * sizeof(LruKey))
        if keys == NULL:
            raise MemoryError()
        cdef uint64_t index, count = 0, i
        cdef unsigned char* entry
        for index in range(self.slots):
            entry = self._entries + index * C_ENTRY_SIZE
            if wsd_load_acquire_u64(entry + HASH_OFFSET) != 0:
                memcpy(&keys[count].ts, entry + LAST_TS_OFFSET, 8)
                keys[count].index = index
                count += 1
        qsort(keys, count, sizeof(LruKey), compare_lru_keys)
        for i in range(count):
            self._lru_push_back(keys[i].index)
        PyMem_Free(keys)
        return 0

    cdef inline void _lru_unlink(self, uint64_t index) noexcept nogil:
        self._next[self._prev[index]] = self._next[index]
        self._prev[self._next[index]] = self._prev[index]

    cdef inline void _lru_push_back(self, uint64_t index) noexcept nogil:
        cdef uint32_t last = self._prev[self.slots]
        self._prev[index] = last
        self._next[index] = <uint32_t>self.slots
        self._next[last] = <uint32_t>index
        self._prev[self.slots] = <uint32_t>index

    cdef inline void _lru_move(self, uint64_t old, uint64_t new) noexcept nogil:
        # The entry at `old` now lives at `new` (unlinked): it keeps its place in the order.
        cdef uint32_t before = self._prev[old]
        cdef uint32_t after = self._next[old]
        self._prev[new] = before
        self._next[new] = after
        self._next[before] = <uint32_t>new
        self._prev[after] = <uint32_t>new
