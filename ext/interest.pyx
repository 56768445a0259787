"""Which channels a slot has subscribers for: one byte per bucket (`chan_hash % buckets`) in shared
memory, written by the owning slot and read by channel owners before they ring its doorbell.

A marked bucket may be a false positive (buckets are shared between channels), never a false
negative while the owning slot keeps its per-bucket reference counts. Reference: ext/interest_ref.py.
"""

from libc.stdint cimport uint64_t
from libc.string cimport memset

from wsd.ext.atomics cimport wsd_fence_seq_cst, wsd_load_acquire_u8, wsd_store_release_u8


cdef class InterestMap:
    """A byte-per-bucket interest map over a writable buffer."""

    cdef unsigned char[::1] _view  # keeps the buffer exported (and mapped) while the map lives
    cdef unsigned char* _buckets
    cdef readonly uint64_t buckets

    def __init__(self, buf, Py_ssize_t offset, buckets: int = 65536) -> None:
        if buckets < 1:
            raise ValueError(f"InterestMap buckets must be >= 1, got {buckets}")
        cdef unsigned char[::1] view = buf  # raises on a read-only buffer
        if offset < 0 or offset + buckets > view.shape[0]:
            raise ValueError(
                f"InterestMap of {buckets} buckets at offset {offset} does not fit in a buffer of "
                f"{view.shape[0]} bytes"
            )
        self._view = view
        self._buckets = &view[0] + offset
        self.buckets = buckets

    @staticmethod
    def region_size(buckets: int = 65536) -> int:
        """Bytes the map occupies: one per bucket, rounded up to keep the next region 8-byte aligned."""
        return (buckets + 7) & ~7

    def mark(self, uint64_t chan_hash, bint on) -> None:
        """Set (on=True) or clear the bucket of `chan_hash`; the caller keeps per-bucket reference counts."""
        wsd_store_release_u8(self._buckets + chan_hash % self.buckets, 1 if on else 0)

    def test(self, uint64_t chan_hash) -> bool:
        """True if the bucket of `chan_hash` is marked (may be a false positive: buckets are shared)."""
        return wsd_load_acquire_u8(self._buckets + chan_hash % self.buckets) != 0

    def test_any(self, chan_hashes) -> bool:
        """True if the bucket of any of `chan_hashes` (an iterable of hashes) is marked: one call for
        a whole batch of published channels."""
        cdef uint64_t chan_hash
        for chan_hash in chan_hashes:
            if wsd_load_acquire_u8(self._buckets + chan_hash % self.buckets) != 0:
                return True
        return False

    def clear_all(self) -> None:
        """Clear every bucket (a respawned worker starts with no subscribers)."""
        memset(self._buckets, 0, self.buckets)
        wsd_fence_seq_cst()
