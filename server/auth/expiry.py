"""Deadlines of many connections in one structure: token expiry and the auth timeout.

A worker holds up to 200k connections, each with a deadline (its token's `exp`, or, before the
first `auth` message, the end of `--auth-timeout`). Rather than one loop timer per connection, the
deadlines are grouped in buckets of `resolution_s` (default 0.25 s): the worker arms one timer for
`next_due()`, and `pop_due(now)` hands back every connection whose deadline has passed. No
connection is handed back before its deadline, and none later than one resolution after it.

A bucket is the ceiling of `deadline / resolution`, so a refresh that moves a deadline within the
same bucket costs two dictionary operations. Buckets are found through a heap of their numbers;
an emptied bucket's heap entry is dropped lazily when its time comes.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Hashable


class ExpiryWheel:
    """`schedule(key, deadline)`, `cancel(key)`, `pop_due(now)`; keys are connections (hashable)."""

    __slots__ = ("resolution_s", "_buckets", "_bucket_of", "_heap")

    def __init__(self, resolution_s: float = 0.25):
        if not resolution_s > 0:
            raise ValueError(f"resolution_s must be positive, got {resolution_s!r}")
        self.resolution_s = resolution_s
        self._buckets: dict[int, set[Hashable]] = {}
        self._bucket_of: dict[Hashable, int] = {}
        self._heap: list[int] = []

    def __len__(self) -> int:
        return len(self._bucket_of)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._bucket_of

    def schedule(self, key: Hashable, deadline: float) -> None:
        """Set (or move) `key`'s deadline."""
        bucket = math.ceil(deadline / self.resolution_s)
        old = self._bucket_of.get(key)
        if old == bucket:
            return
        if old is not None:
            self._remove(key, old)
        members = self._buckets.get(bucket)
        if members is None:
            members = self._buckets[bucket] = set()
            heapq.heappush(self._heap, bucket)
        members.add(key)
        self._bucket_of[key] = bucket

    def cancel(self, key: Hashable) -> None:
        """Forget `key` (closed, or no deadline any more); no error if it had none."""
        old = self._bucket_of.pop(key, None)
        if old is not None:
            members = self._buckets[old]
            members.discard(key)
            if not members:
                del self._buckets[old]

    def _remove(self, key: Hashable, bucket: int) -> None:
        members = self._buckets[bucket]
        members.discard(key)
        if not members:
            del self._buckets[bucket]

    def next_due(self) -> float | None:
        """When the earliest bucket falls due (for the one loop timer), or None if nothing is scheduled."""
        heap = self._heap
        while heap and heap[0] not in self._buckets:
            heapq.heappop(heap)
        return heap[0] * self.resolution_s if heap else None

    def pop_due(self, now: float) -> list[Hashable]:
        """Remove and return every key whose deadline is at or before `now`."""
        due: list[Hashable] = []
        heap = self._heap
        limit = math.floor(now / self.resolution_s)
        while heap and heap[0] <= limit:
            members = self._buckets.pop(heapq.heappop(heap), None)
            if members:
                for key in members:
                    del self._bucket_of[key]
                due.extend(members)
        return due
