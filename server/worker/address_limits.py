"""`--max-connections-per-ip`: connections from one client address, counted for the whole server.

The kernel spreads one address's connections over every worker (SO_REUSEPORT hashes the whole
4-tuple), so the counts live in shared memory: one memfd that the supervisor makes and every
worker maps, with a region per bus slot. A process counts only its own connections, in its own
region, as a count-min sketch (ROWS rows of COUNTERS u32 counters, each address adding one to a
counter per row, chosen by a hash keyed with a per-server secret so nobody can pick addresses that
collide on purpose; its count is the smallest of its counters). An address's count for the server
is the sum over the regions. Unrelated addresses that share a counter can only make a count larger:
the limit may refuse early in a rare collision, never let an address past it (but for handshakes
racing on two workers at the limit's edge). A process that dies takes its counts with it: the
supervisor zeroes the region of a bus slot whose process it reaped (so a new process finds its own
at zero, and a worker that never counts never touches the pages).
"""

from __future__ import annotations

import mmap
import os
from typing import Any

from wsd.ext.atomics import add_u32

ROWS = 3
COUNTERS = 1 << 16  # per row
SECRET_SIZE = 16
_ROW_BYTES = COUNTERS * 4
REGION_BYTES = ROWS * _ROW_BYTES  # 768 KiB per bus slot


def create_counts_memfd(bus_slots: int) -> tuple[int, bytes]:
    """The supervisor's part: a zeroed shared region per bus slot (memory allocated now), a secret."""
    fd = os.memfd_create("wsd-address-counts", os.MFD_CLOEXEC)
    os.ftruncate(fd, bus_slots * REGION_BYTES)
    os.posix_fallocate(fd, 0, bus_slots * REGION_BYTES)
    return fd, os.urandom(SECRET_SIZE)  # what secrets.token_bytes reads


def zero_region(fd: int, bus_slot: int) -> None:
    """Forget the counts of a bus slot (its process is gone)."""
    os.pwrite(fd, bytes(REGION_BYTES), bus_slot * REGION_BYTES)


class AddressLimiter:
    """One worker's view of the shared counts: admit or refuse a handshake from an address."""

    def __init__(self, fd: int, secret: bytes, limit: int, bus_slot: int):
        # Imported only where the limit is on: hashlib loads OpenSSL, and the supervisor imports this
        # module for create_counts_memfd.
        from hashlib import blake2b

        self._blake2b = blake2b
        self.map = mmap.mmap(fd, 0)
        self.regions = len(self.map) // REGION_BYTES
        self.own = bus_slot * REGION_BYTES
        self.secret = secret
        self.limit = limit
        self.held: dict[Any, tuple[int, ...]] = {}  # session -> its counters (offsets in a region)

    def _counters(self, address: str) -> tuple[int, ...]:
        digest = self._blake2b(address.encode(), key=self.secret, digest_size=4 * ROWS).digest()
        return tuple(
            row * _ROW_BYTES + 4 * (int.from_bytes(digest[4 * row : 4 * row + 4], "little") % COUNTERS)
            for row in range(ROWS)
        )

    def _others(self, counters: tuple[int, ...]) -> int:
        total = 0
        for region in range(self.regions):
            base = region * REGION_BYTES
            if base != self.own:
                total += min(add_u32(self.map, base + offset, 0) for offset in counters)
        return total

    def admit(self, address: str) -> tuple[int, ...] | None:
        """Count one more connection from `address`; None (and nothing counted) if over the limit."""
        counters = self._counters(address)
        own = min(add_u32(self.map, self.own + offset, 1) for offset in counters)
        if own + self._others(counters) > self.limit:
            for offset in counters:
                add_u32(self.map, self.own + offset, -1)
            return None
        return counters

    def forget(self, counters: tuple[int, ...]) -> None:
        """Uncount what `admit` counted for a handshake that was refused later."""
        for offset in counters:
            add_u32(self.map, self.own + offset, -1)

    def hold(self, session: Any, counters: tuple[int, ...]) -> None:
        self.held[session] = counters

    def release(self, session: Any) -> None:
        counters = self.held.pop(session, None)
        if counters is not None:
            self.forget(counters)

    def count(self, address: str) -> int:
        counters = self._counters(address)
        return min(add_u32(self.map, self.own + offset, 0) for offset in counters) + self._others(counters)
