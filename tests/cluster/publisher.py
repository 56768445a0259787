"""A separate publishing process for the concurrency test: `python -m tests.cluster.publisher URL
CHANNEL COUNT` publishes COUNT messages (half one by one, half in batches) and prints their offsets."""

from __future__ import annotations

import json
import os
import sys

import uvloop

from wsd.server.cluster import ClusterClient


async def main(url: str, channel: str, count: int) -> None:
    client = ClusterClient([url], timeout_s=5)
    await client.start()
    offsets = []
    pid = os.getpid()
    for i in range(count // 2):
        offsets.append((await client.publish(channel, json.dumps([pid, i]).encode())).offset)
    rest = [(channel, json.dumps([pid, i]).encode(), None) for i in range(count // 2, count)]
    for start in range(0, len(rest), 25):
        offsets.extend(result.offset for result in await client.publish_batch(rest[start : start + 25]))
    await client.close()
    print(json.dumps(offsets))


if __name__ == "__main__":
    uvloop.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
