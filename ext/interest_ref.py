"""Pure-Python reference of wsd.ext.interest: one byte per bucket saying whether a slot has subscribers.

Layout: `buckets` bytes at `offset` (region rounded up to 8 bytes); bucket = chan_hash % buckets,
non-zero = interested. Single writer (the owning slot), read by channel owners before ringing it.
"""


class InterestMap:
    """A byte-per-bucket interest map over a writable buffer."""

    def __init__(self, buf, offset: int, buckets: int = 65536) -> None:
        if buckets < 1:
            raise ValueError(f"InterestMap buckets must be >= 1, got {buckets}")
        view = memoryview(buf).cast("B")
        if view.readonly:
            raise ValueError("InterestMap needs a writable buffer (mmap or bytearray)")
        if offset < 0 or offset + buckets > len(view):
            raise ValueError(
                f"InterestMap of {buckets} buckets at offset {offset} does not fit in a buffer of "
                f"{len(view)} bytes"
            )
        self._view = view
        self._offset = offset
        self.buckets = buckets

    @staticmethod
    def region_size(buckets: int = 65536) -> int:
        """Bytes the map occupies: one per bucket, rounded up to keep the next region 8-byte aligned."""
        return (buckets + 7) & ~7

    def mark(self, chan_hash: int, on: bool) -> None:
        """Set (on=True) or clear the bucket of `chan_hash`; the caller keeps per-bucket reference counts."""
        self._view[self._offset + chan_hash % self.buckets] = 1 if on else 0

    def test(self, chan_hash: int) -> bool:
        """True if the bucket of `chan_hash` is marked (may be a false positive: buckets are shared)."""
        return self._view[self._offset + chan_hash % self.buckets] != 0

    def test_any(self, chan_hashes) -> bool:
        """True if the bucket of any of `chan_hashes` (an iterable of hashes) is marked."""
        return any(self.test(chan_hash) for chan_hash in chan_hashes)

    def clear_all(self) -> None:
        """Clear every bucket (a respawned worker starts with no subscribers)."""
        self._view[self._offset : self._offset + self.buckets] = bytes(self.buckets)
