"""A real 3-master Redis Cluster: channels routed by hash slot, keys and shard channel of a channel on
one master, sharded pub/sub (SSUBSCRIBE/SPUBLISH, no classic subscription at all), history."""

from __future__ import annotations

import asyncio
import time

from tests.cluster.conftest import run
from wsd.server.cluster import ClusterClient, StreamPosition
from wsd.server.cluster.keys import slot_of


def test_redis_cluster_with_sharded_pubsub(redis_cluster):
    received: list[tuple] = []

    async def body():
        subscriber = ClusterClient(redis_cluster.url, timeout_s=1, probe_interval_s=0.2,
                                   on_publication=lambda *args: received.append(args))  # fmt: skip
        publisher = ClusterClient(redis_cluster.url, timeout_s=1, probe_interval_s=0)
        await subscriber.start()
        await publisher.start()
        assert await subscriber.wait_up(5) and await publisher.wait_up(5)
        assert len(subscriber.shards) == 3
        channels = [f"room:{i}" for i in range(30)]
        await subscriber.subscribe(channels)
        for channel in channels:
            node = redis_cluster.node_of_slot(slot_of(channel))
            assert node.client().execute_command("PUBSUB", "SHARDNUMSUB", f"wsd:{{{channel}}}")[1] == 1
            assert subscriber.shard_for(channel).target.port == node.port
        for node in redis_cluster.nodes:
            assert node.client().execute_command("PUBSUB", "NUMSUB", *(f"wsd:{{{c}}}" for c in channels))[1::2] == [
                0] * len(channels)  # fmt: skip
        results = await publisher.publish_batch([(ch, b'"%d"' % i, None) for i in range(3) for ch in channels])
        assert all(r.offset in (1, 2, 3) for r in results)
        deadline = time.monotonic() + 5
        while len(received) < 90 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for channel in channels:
            assert [m[2] for m in received if m[0] == channel] == [1, 2, 3]
            node = redis_cluster.node_of_slot(slot_of(channel))
            assert node.client().exists(f"wsd:{{{channel}}}:m", f"wsd:{{{channel}}}:s") == 2
        epoch = results[0].epoch
        history = await subscriber.history(channels[0], StreamPosition(epoch, 1))
        assert [p.data for p in history.publications] == [b'"1"', b'"2"']
        await asyncio.sleep(0.5)  # probes on idle connections come back: no rebuild
        assert all(s["probe_failures"] == 0 and s["state"] == "up" for s in subscriber.status()["shards"])
        await subscriber.unsubscribe(channels)
        for channel in channels[:5]:
            node = redis_cluster.node_of_slot(slot_of(channel))
            assert node.client().execute_command("PUBSUB", "SHARDNUMSUB", f"wsd:{{{channel}}}")[1] == 0
        status = subscriber.status()
        assert status["mode"] == "cluster" and all("127.0.0.1" in s["url"] for s in status["shards"])
        await subscriber.close()
        await publisher.close()

    run(body())


def test_redis_cluster_reroutes_after_a_slot_moves(redis_cluster):
    received: list[tuple] = []
    rebuilt: list[list[str]] = []

    async def body():
        client = ClusterClient(redis_cluster.url, timeout_s=1, probe_interval_s=0, topology_refresh_s=60,
                               on_publication=lambda *a: received.append(a), on_rebuilt=rebuilt.append)  # fmt: skip
        await client.start()
        assert await client.wait_up(5)
        channel = "moving"
        await client.subscribe([channel])
        first = await client.publish(channel, b"1")
        slot = slot_of(channel)
        source = redis_cluster.node_of_slot(slot)
        target = next(node for node in redis_cluster.nodes if node is not source)
        source_id, target_id = source.client().cluster("myid"), target.client().cluster("myid")
        target.client().execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        source.client().execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        keys = source.client().execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100)
        source.client().execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
        for node in redis_cluster.nodes:
            node.client().execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        # The old master dropped our shard channel (an unsolicited SUNSUBSCRIBE): the client reads the
        # new slot map, subscribes on the new master and reports the channel for catch-up.
        deadline = time.monotonic() + 5
        while not rebuilt and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert rebuilt == [[channel]]
        assert client.shard_for(channel).target.port == target.port
        second = await client.publish(channel, b"2")
        assert (second.epoch, second.offset) == (first.epoch, 2)  # the keys moved with the slot
        while len(received) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert [m[3] for m in received] == [b"1", b"2"]
        await client.close()

    run(body())
