"""`nft` data path: nftables DNAT through a map of Maglev buckets that the balancer fills.

    ip daddr VIP tcp dport PORT dnat ip addr . port to jhash ip saddr . tcp sport mod M seed S map @buckets

The balancer owns the hash: the map holds the Maglev table over the healthy backends, and a change
rewrites only the buckets whose backend changed, in one atomic `nft -j -f -` batch. DNAT keeps a
conntrack entry per connection on the front, so established flows stay on their backend whatever
the table says later, and the backends' replies must route back through the front.

Element updates and reads use nftables' JSON interface. The map and rule are declared once in
nft's own language, because nft 1.0.6's JSON parser cannot express a map keyed by a hash with a
concatenated NAT target (it crashes on it).
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import tempfile
from collections import Counter

from wsd.balancer.config import BalancerConfig, Endpoint
from wsd.balancer.table import LookupTable

log = logging.getLogger("wsd.balancer.nft")


class NftError(RuntimeError):
    """nft refused a command; carries its message."""


async def run_nft(arguments: list[str], stdin: str | None = None) -> str:
    """Run nft; `stdin` is passed as a file (`-f FILE`), since nft reads `-f -` by reopening
    /dev/stdin, which fails on the socketpair uvloop gives a child for its stdin."""
    with tempfile.NamedTemporaryFile("w", prefix="wsd-balancer-", suffix=".nft") as script:
        if stdin is not None:
            script.write(stdin)
            script.flush()
            arguments = [script.name if argument == "-" else argument for argument in arguments]
        process = await asyncio.create_subprocess_exec(
            "nft", *arguments, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await process.communicate()
    if process.returncode != 0:
        raise NftError(f"nft {' '.join(arguments)} failed: {stderr.decode().strip()}")
    return stdout.decode()


def ruleset_text(config: BalancerConfig) -> str:
    """The table, map and DNAT rule (recreated from scratch: `add` + `delete` + declare)."""
    table = config.nft_table
    return f"""
add table ip {table}
delete table ip {table}
table ip {table} {{
    map buckets {{
        typeof numgen inc mod 2 : ip daddr . tcp dport
        size {config.table_size}
    }}
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        ip daddr {config.vip.host} tcp dport {config.vip.port} \
dnat ip addr . port to jhash ip saddr . tcp sport mod {config.table_size} seed {config.hash_seed:#x} map @buckets
    }}
}}
"""


def element(bucket: int, backend: str) -> list:
    host, _, port = backend.rpartition(":")
    return [bucket, {"concat": [host, int(port)]}]


def update_batch(table_name: str, old: LookupTable | None, new: LookupTable) -> dict | None:
    """One JSON transaction: delete and re-add exactly the buckets whose backend changed."""
    changed = [
        bucket
        for bucket in range(new.size)
        if old is None or old.slots[bucket] != new.slots[bucket]
    ]
    if not changed:
        return None
    where = {"family": "ip", "table": table_name, "name": "buckets"}
    commands = []
    stale = [bucket for bucket in changed if old is not None and old.slots[bucket] is not None]
    if stale:
        commands.append({"delete": {"element": {**where, "elem": stale}}})
    fresh = [element(bucket, new.slots[bucket]) for bucket in changed if new.slots[bucket] is not None]
    if fresh:
        commands.append({"add": {"element": {**where, "elem": fresh}}})
    return {"nftables": commands}


class NftDataPlane:
    """Keeps the nft bucket map equal to the Maglev table over the wanted backends."""

    mode = "nft"

    def __init__(self, config: BalancerConfig) -> None:
        self.config = config
        self.table: LookupTable | None = None
        self.lock = asyncio.Lock()

    async def start(self) -> None:
        if shutil.which("nft") is None:
            raise NftError("the nft command is missing: install nftables (apt-get install nftables)")
        await run_nft(["-f", "-"], ruleset_text(self.config))

    async def apply(self, wanted: list[Endpoint]) -> None:
        new = LookupTable.build([str(backend) for backend in wanted], self.config.table_size, self.config.hash_seed)
        async with self.lock:
            if self.table is not None and new == self.table:
                return
            batch = update_batch(self.config.nft_table, self.table, new)
            if batch is not None:
                await run_nft(["-j", "-f", "-"], json.dumps(batch))
            self.table = new

    async def kernel_buckets(self) -> dict[int, str]:
        """The map as the kernel holds it (bucket -> "host:port"), read back through JSON."""
        listing = json.loads(await run_nft(["-j", "list", "map", "ip", self.config.nft_table, "buckets"]))
        for item in listing["nftables"]:
            if "map" in item:
                return {
                    bucket: f"{target['concat'][0]}:{target['concat'][1]}"
                    for bucket, target in item["map"].get("elem", [])
                }
        return {}

    def shares(self) -> dict[str, float]:
        if self.table is None:
            return {}
        return self.table.shares()

    def pick_table(self) -> LookupTable | None:
        return self.table

    async def close(self) -> None:
        try:
            await run_nft(["delete", "table", "ip", self.config.nft_table])
        except NftError as error:
            log.debug("cleanup: %s", error)


def bucket_counts(buckets: dict[int, str]) -> Counter:
    return Counter(buckets.values())
