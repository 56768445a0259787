"""One worker slot's shared-memory segment: header, stats, cursors, interest map, channel table, ring.

The supervisor creates one segment per bus slot (a memfd, its memory allocated at once) before it
starts any worker, so a segment outlives worker respawns and reloads; every worker inherits all of
their descriptors and maps them (server/bus/provision.py). Layout in docs/bus.md.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
from dataclasses import dataclass

from wsd.ext.chantable import ChannelTable
from wsd.ext.interest import InterestMap
from wsd.ext.ring import Ring
from wsd.server.stats import STATS_FORMAT, STATS_SIZE, SUPERVISOR_SIZE, WORKER_FIELDS, StatsBlock, SupervisorArea

MAGIC = 0x3230474553445357  # b"WSDSEG02" little-endian
MAX_SLOTS = 256

HEADER_SIZE = 4096
_MAGIC_AT, _SLOT_AT, _EPOCH_AT, _WORKERS_AT = 0, 8, 16, 24
_RING_CAPACITY_AT, _TABLE_SLOTS_AT, _INTEREST_BUCKETS_AT = 32, 40, 48
PENDING_FLAG_AT = 64  # doorbell coalescing flag, alone on its cache line
_ROLE_HOLDER_AT = 448  # role segments: bus slot + 1 of the process sequencing this role (0: none)
_DRAIN_WINDOW_MS_AT = 456  # supervisor -> worker: the window for the next drain command
_TAKE_ROLE_AT = 464  # supervisor -> worker: role + 1 to take over on the next take-role command
_CURSORS_AT = 512  # role segments: the role holder's read position in every ring
_HASH_SECRET_AT = _CURSORS_AT + 8 * MAX_SLOTS  # the server's channel-hash secret (32 bytes, every segment)
HASH_SECRET_SIZE = 32

INTEREST_BUCKETS = 65536

# After the header, a page each: the stats block the worker on this bus slot writes (the numbers
# declared in wsd.server.stats), and the supervisor's area (its values for the worker slot, the
# server's, and the counts of exited processes). Separate pages: the two writers never share a
# cache line, and the block has room to grow.
STATS_AT = HEADER_SIZE
SUPERVISOR_AT = STATS_AT + 4096
assert STATS_SIZE <= 4096 and SUPERVISOR_SIZE <= 4096
assert _CURSORS_AT + 8 * MAX_SLOTS <= _HASH_SECRET_AT
assert _HASH_SECRET_AT + HASH_SECRET_SIZE <= HEADER_SIZE


@dataclass(frozen=True)
class SegmentLayout:
    ring_capacity: int
    table_slots: int
    interest_buckets: int = INTEREST_BUCKETS

    @property
    def interest_at(self) -> int:
        return SUPERVISOR_AT + 4096

    @property
    def table_at(self) -> int:
        return _align(self.interest_at + InterestMap.region_size(self.interest_buckets), 4096)

    @property
    def ring_at(self) -> int:
        return _align(self.table_at + ChannelTable.region_size(self.table_slots, self.interest_buckets), 4096)

    @property
    def size(self) -> int:
        return _align(self.ring_at + Ring.region_size(self.ring_capacity), 4096)


def _align(value: int, to: int) -> int:
    return (value + to - 1) // to * to


class SegmentAllocationError(OSError):
    """The memory of a new segment could not be allocated (fallocate failed: ENOSPC, ENOMEM...)."""


class Segment:
    """A mapped segment over a memfd. `create` makes and initialises a new one; `attach` maps one
    whose descriptor this process inherited."""

    def __init__(self, fd: int, mapping: mmap.mmap, layout: SegmentLayout):
        self.fd = fd
        self.map = mapping
        self.layout = layout
        self.slot, self.epoch, self.workers = struct.unpack_from("<QQQ", mapping, _SLOT_AT)
        self.interest = InterestMap(mapping, layout.interest_at, layout.interest_buckets)
        # Forget buckets are the interest buckets: a channel is forgotten only while no process marks
        # its interest bucket, so the epoch a subscriber read for an absent channel stays valid.
        self.table = ChannelTable(mapping, layout.table_at, layout.table_slots, layout.interest_buckets)
        self.ring = Ring(mapping, layout.ring_at, layout.ring_capacity)
        self.stats = StatsBlock(mapping, STATS_AT)
        self.supervisor = SupervisorArea(mapping, SUPERVISOR_AT)

    @classmethod
    def create(cls, slot: int, workers: int, epoch: int, layout: SegmentLayout, hash_secret: bytes) -> Segment:
        """A new segment in memory only (memfd: no name anyone could open), its memory allocated now
        (so using it can never fail with SIGBUS) and sealed at that size."""
        if len(hash_secret) != HASH_SECRET_SIZE:
            raise ValueError(f"the channel hash secret is {HASH_SECRET_SIZE} bytes, got {len(hash_secret)}")
        fd = os.memfd_create(f"wsd-bus-slot{slot}", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, layout.size)
            try:
                os.posix_fallocate(fd, 0, layout.size)
            except OSError as exc:
                raise SegmentAllocationError(exc.errno, f"cannot allocate {layout.size} bytes for bus slot {slot}: "
                                             f"{exc.strerror}") from None  # fmt: skip
            # Nobody (a bug in a worker included) can shrink it under the others' mappings.
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
            mapping = mmap.mmap(fd, layout.size)
        except BaseException:
            os.close(fd)
            raise
        struct.pack_into("<QQQQ", mapping, _MAGIC_AT, MAGIC, slot, epoch, workers)
        struct.pack_into(
            "<QQQ", mapping, _RING_CAPACITY_AT, layout.ring_capacity, layout.table_slots, layout.interest_buckets
        )
        mapping[_HASH_SECRET_AT : _HASH_SECRET_AT + HASH_SECRET_SIZE] = hash_secret
        segment = cls(fd, mapping, layout)
        # The memory is new, hence zero: write headers only.
        segment.table.init(base_epoch=epoch, already_zeroed=True)
        segment.ring.init()
        return segment

    @classmethod
    def attach(cls, fd: int) -> Segment:
        """Map the segment whose memfd is `fd` (inherited from the supervisor)."""
        size = os.fstat(fd).st_size
        mapping = mmap.mmap(fd, size)
        magic = struct.unpack_from("<Q", mapping, _MAGIC_AT)[0]
        if magic != MAGIC:
            raise ValueError(f"descriptor {fd} is not a wsd bus segment (bad magic {magic:#x})")
        ring_capacity, table_slots, buckets = struct.unpack_from("<QQQ", mapping, _RING_CAPACITY_AT)
        return cls(fd, mapping, SegmentLayout(ring_capacity, table_slots, buckets))

    @property
    def hash_secret(self) -> bytes:
        """The per-server secret of the channel hash (wsd.ext.hashing.ChannelHasher)."""
        return bytes(self.map[_HASH_SECRET_AT : _HASH_SECRET_AT + HASH_SECRET_SIZE])

    # -- stats (written by the bus slot's worker through `stats`, read by everyone) --
    def read_stats(self) -> dict[str, int]:
        return dict(zip(WORKER_FIELDS, struct.unpack_from(STATS_FORMAT, self.map, STATS_AT), strict=True))

    # -- role segments: who sequences the role now --
    def role_holder(self) -> int | None:
        holder = struct.unpack_from("<Q", self.map, _ROLE_HOLDER_AT)[0]
        return holder - 1 if holder else None

    def set_role_holder(self, bus_slot: int | None) -> None:
        struct.pack_into("<Q", self.map, _ROLE_HOLDER_AT, 0 if bus_slot is None else bus_slot + 1)

    # -- commands from the supervisor to the process on this bus slot (then a signal) --
    def drain_window_s(self) -> float | None:
        """The window of the next drain command, or None for the worker's configured one."""
        stored = struct.unpack_from("<Q", self.map, _DRAIN_WINDOW_MS_AT)[0]
        return (stored - 1) / 1000.0 if stored else None

    def set_drain_window_s(self, seconds: float | None) -> None:
        # Stored as milliseconds + 1, so that a window of 0 (close everyone now) is not "unset".
        struct.pack_into("<Q", self.map, _DRAIN_WINDOW_MS_AT, 0 if seconds is None else int(seconds * 1000) + 1)

    def role_to_take(self) -> int | None:
        role = struct.unpack_from("<Q", self.map, _TAKE_ROLE_AT)[0]
        return role - 1 if role else None

    def set_role_to_take(self, role: int | None) -> None:
        struct.pack_into("<Q", self.map, _TAKE_ROLE_AT, 0 if role is None else role + 1)

    # -- role segments: the role holder's read cursors into every ring (persisted across holders) --
    def cursor(self, ring_slot: int) -> int:
        return struct.unpack_from("<Q", self.map, _CURSORS_AT + 8 * ring_slot)[0]

    def set_cursor(self, ring_slot: int, position: int) -> None:
        struct.pack_into("<Q", self.map, _CURSORS_AT + 8 * ring_slot, position)

    def close(self) -> None:
        self.stats.release()
        self.supervisor.release()
        try:
            self.map.close()
        except BufferError:
            # Cython views may still reference the map at interpreter exit; the OS unmaps it.
            pass
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
