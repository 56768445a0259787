"""The lookup table a data path forwards by, and `pick()`: where a flow goes, without sending a packet.

In the Katran model the control plane computes this table and pushes it into the data path; the
same object answers "which backend gets this 4-tuple?" so the tests can compare it with what the
kernel (nft mode) or the userspace forwarder (proxy mode) actually did.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from wsd.balancer.flowhash import flow_bucket, key_bucket
from wsd.balancer.maglev import DEFAULT_TABLE_SIZE, build_table

# Fixed, not random: every front host must hash a flow to the same bucket, and nft's own default
# would pick a random seed per rule load.
DEFAULT_HASH_SEED = 0x77736421


@dataclass(frozen=True)
class LookupTable:
    """A Maglev table over a backend set ("host:port" names) plus the flow hash that indexes it."""

    backends: tuple[str, ...]
    size: int = DEFAULT_TABLE_SIZE
    seed: int = DEFAULT_HASH_SEED
    slots: tuple[str | None, ...] = field(default=(), compare=False, repr=False)

    @classmethod
    def build(
        cls, backends: Sequence[str], size: int = DEFAULT_TABLE_SIZE, seed: int = DEFAULT_HASH_SEED
    ) -> LookupTable:
        names = tuple(sorted(set(backends)))
        return cls(names, size, seed, tuple(build_table(names, size)))

    def pick(self, src_ip: str, src_port: int, dst_ip: str, dst_port: int) -> str | None:
        """The backend for a TCP connection, as the nft rule and the proxy choose it.

        Only the source address and port are hashed: the front serves one VIP:port, so the
        destination adds nothing, and hashing it would make the nft key longer for no spread.
        """
        del dst_ip, dst_port  # constant per front; kept in the signature so callers pass 4-tuples
        return self.slots[flow_bucket(src_ip, src_port, self.seed, self.size)]

    def pick_key(self, key: str) -> str | None:
        """The backend for an application key (L7 routing: every member of a room lands together)."""
        return self.slots[key_bucket(key, self.seed, self.size)]

    def shares(self) -> dict[str, float]:
        """Each backend's fraction of the slots."""
        counts = Counter(slot for slot in self.slots if slot is not None)
        return {name: counts.get(name, 0) / self.size for name in self.backends}

    def changed_slots(self, other: LookupTable) -> list[int]:
        """Slots whose backend differs between this table and `other` (same size)."""
        pairs = zip(self.slots, other.slots, strict=True)
        return [index for index, (old, new) in enumerate(pairs) if old != new]
