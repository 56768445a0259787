"""Which independent Redis instance serves a channel: rendezvous (highest random weight) hashing.

Every host computes the same answer from the same list of instances, whatever order they were given
in. Adding an instance to N moves only the channels the new one wins (about 1/(N+1) of them); removing
one moves only its own channels.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from functools import lru_cache


def _weight(key: bytes, channel: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(channel, digest_size=8, key=key).digest(), "big")


class Rendezvous:
    """Map channel names to one of several instance keys (their URLs without password)."""

    def __init__(self, keys: Sequence[str]):
        if not keys:
            raise ValueError("Rendezvous needs at least one instance")
        if len(set(keys)) != len(keys):
            raise ValueError(f"instance keys must be unique, got {list(keys)}")
        self.keys = list(keys)
        # blake2b keys are at most 64 bytes: a longer instance key is hashed down first.
        self._hash_keys = [k.encode() if len(k.encode()) <= 64 else hashlib.blake2b(k.encode()).digest()
                           for k in self.keys]  # fmt: skip
        self.pick = lru_cache(maxsize=1 << 16)(self._pick)

    def _pick(self, channel: str) -> int:
        """Index (into keys) of the instance that serves `channel`."""
        if len(self._hash_keys) == 1:
            return 0
        data = channel.encode()
        weights = [_weight(key, data) for key in self._hash_keys]
        return max(range(len(weights)), key=weights.__getitem__)
