"""The slot map of a Redis Cluster: which master serves each of the 16384 hash slots, read with
CLUSTER SLOTS from any node that answers (the seeds first, then the masters known before)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from redis.exceptions import RedisError

from wsd.server.cluster.connection import make_connection
from wsd.server.cluster.errors import ClusterUnavailable
from wsd.server.cluster.urls import RedisTarget

SLOTS = 16384


@dataclass(frozen=True)
class SlotMap:
    """Masters (host, port) and, per slot, the index of its master (-1: no master serves it)."""

    masters: tuple[tuple[str, int], ...]
    owner: tuple[int, ...]

    def ranges(self, master: int) -> list[tuple[int, int]]:
        """The inclusive slot ranges one master serves."""
        found: list[tuple[int, int]] = []
        for slot, index in enumerate(self.owner):
            if index == master:
                if found and found[-1][1] == slot - 1:
                    found[-1] = (found[-1][0], slot)
                else:
                    found.append((slot, slot))
        return found


def parse_cluster_slots(reply: list, fallback_host: str) -> SlotMap:
    """A SlotMap from the raw CLUSTER SLOTS reply [[start, end, [host, port, id, ...], replicas...]...].
    A master announced without an address ('' or '?') is the node that answered: `fallback_host`."""
    masters: list[tuple[str, int]] = []
    owner = [-1] * SLOTS
    for entry in reply:
        start, end, primary = int(entry[0]), int(entry[1]), entry[2]
        host = primary[0].decode() if isinstance(primary[0], bytes) else str(primary[0])
        if host in ("", "?"):
            host = fallback_host
        address = (host, int(primary[1]))
        if address not in masters:
            masters.append(address)
        index = masters.index(address)
        for slot in range(start, end + 1):
            owner[slot] = index
    return SlotMap(tuple(masters), tuple(owner))


async def discover(seeds: Sequence[RedisTarget], timeout_s: float, client_name: str | None = None) -> SlotMap:
    """Ask the nodes in turn for CLUSTER SLOTS; ClusterUnavailable if none answers within timeout_s."""
    errors: list[str] = []
    per_node = max(timeout_s / max(len(seeds), 1), 0.2)
    for seed in seeds:
        connection = make_connection(seed, connect_timeout_s=per_node, client_name=client_name)
        try:
            async with asyncio.timeout(per_node):
                await connection.connect()
                await connection.send_command("CLUSTER", "SLOTS")
                reply = await connection.read_response()
            return parse_cluster_slots(reply, seed.host)
        except (RedisError, OSError, TimeoutError) as exc:
            errors.append(f"{seed.shown}: {exc or 'no answer'}")
        finally:
            await connection.disconnect(nowait=True)
    raise ClusterUnavailable("no Redis Cluster node answered CLUSTER SLOTS (" + "; ".join(errors) + ")")
