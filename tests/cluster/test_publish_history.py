"""Publishing and history against a real redis-server: global gap-free offsets, epochs, limits,
batching into few round trips, coalesced history reads, spreading channels over instances."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

from tests.cluster.conftest import run
from wsd.server.cluster import ClusterClient, StreamPosition

ROOT = Path(__file__).resolve().parents[2]


async def started(url, **options) -> ClusterClient:
    client = ClusterClient([url] if isinstance(url, str) else url, timeout_s=2, probe_interval_s=0, **options)
    await client.start()
    assert await client.wait_up(5)
    return client


def test_offsets_are_gap_free_across_concurrent_publisher_processes(redis_server):
    received: list[tuple[int, int]] = []

    async def body():
        subscriber = await started(redis_server.url, on_publication=lambda ch, e, off, *_: received.append((e, off)))
        await subscriber.subscribe(["race"])
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "tests.cluster.publisher", redis_server.url, "race", "200"],
                cwd=ROOT,
                stdout=subprocess.PIPE,
            )  # fmt: skip
            for _ in range(4)
        ]
        local = [(await subscriber.publish("race", b'"local"')).offset for _ in range(100)]
        outputs = [await asyncio.to_thread(proc.communicate, timeout=30) for proc in procs]
        assert all(proc.returncode == 0 for proc in procs)
        offsets = local + [o for out, _ in outputs for o in json.loads(out)]
        assert sorted(offsets) == list(range(1, 901))
        deadline = time.monotonic() + 5
        while len(received) < 900 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert [off for _, off in received] == list(range(1, 901))  # once each, in offset order
        assert len({epoch for epoch, _ in received}) == 1
        await subscriber.close()

    run(body())


def test_publication_carries_data_verbatim_user_and_redis_time(redis_server):
    received = []

    async def body():
        client = await started(redis_server.url, on_publication=lambda *args: received.append(args))
        await client.subscribe(["c"])
        before = time.time_ns()
        result = await client.publish("c", b'{"k": "v:w", "n": [1,2]}', user="user:42")
        anonymous = await client.publish("c", b"null")
        while len(received) < 2:
            await asyncio.sleep(0.01)
        channel, epoch, offset, data, ts_ns, user = received[0]
        assert (channel, epoch, offset, data, user) == ("c", result.epoch, 1, b'{"k": "v:w", "n": [1,2]}', "user:42")
        assert abs(ts_ns - before) < 5e9  # Redis's clock
        assert received[1][2:4] == (2, b"null") and received[1][5] is None and anonymous.offset == 2
        history = await client.history("c", StreamPosition(result.epoch, 0))
        assert [(p.offset, p.data, p.user, p.ts_ns) for p in history.publications] == [
            (1, b'{"k": "v:w", "n": [1,2]}', "user:42", ts_ns), (2, b"null", None, received[1][4])]  # fmt: skip
        assert ts_ns <= received[1][4]
        await client.close()

    run(body())


def test_history_honours_size_epoch_and_ttl(redis_server):
    async def body():
        client = await started(redis_server.url, history_size=5, history_ttl_s=1)
        position = await client.position("h")
        assert position.offset == 0 and position.epoch > 0
        assert (await client.position("h")) == position  # the epoch is created once, then kept
        for i in range(8):
            await client.publish("h", b"%d" % i)
        epoch = position.epoch
        assert (await client.history("h", StreamPosition(epoch, 2))).publications is None  # 3 was trimmed
        assert [p.offset for p in (await client.history("h", StreamPosition(epoch, 3))).publications] == [4, 5, 6, 7, 8]
        assert (await client.history("h", StreamPosition(epoch, 8))).publications == []
        assert (await client.history("h", StreamPosition(epoch + 1, 7))).publications is None
        assert [p.offset for p in (await client.history("h", StreamPosition(epoch, 5), upto=7)).publications] == [6, 7]
        assert redis_server.client().ttl("wsd:{h}:s") <= 1
        assert redis_server.client().ttl("wsd:{h}:m") > 86400  # the epoch outlives the history
        await asyncio.sleep(1.1)
        await client.publish("h", b"9")  # 4..8 are now older than the TTL, 9 is fresh
        assert (await client.history("h", StreamPosition(epoch, 7))).publications is None
        assert [p.offset for p in (await client.history("h", StreamPosition(epoch, 8))).publications] == [9]
        await asyncio.sleep(2.1)  # the whole stream expired, the meta (epoch, offset) did not
        result = await client.history("h", StreamPosition(epoch, 8))
        assert (result.epoch, result.offset, result.publications) == (epoch, 9, None)
        assert (await client.publish("h", b"10")).offset == 10
        await client.close()

    run(body())


def test_epoch_changes_only_when_redis_lost_the_channel(redis_factory):
    durable, volatile = redis_factory(aof=True), redis_factory(aof=False)

    async def body():
        for server, survives in ((durable, True), (volatile, False)):
            client = await started(server.url)
            first = [await client.publish("e", b"1") for _ in range(3)]
            await client.close()
            server.kill()
            server.start()
            client = await started(server.url)
            after = await client.publish("e", b"2")
            if survives:
                assert (after.epoch, after.offset) == (first[0].epoch, 4)
            else:
                assert after.epoch != first[0].epoch and after.offset == 1
            await client.close()

    run(body())


def test_publishes_issued_together_share_one_round_trip(redis_server):
    async def body():
        client = await started(redis_server.url)
        await client.publish("warm", b"0")  # loads the scripts
        shard = client.shards[0]
        trips = shard.commands.round_trips
        redis_server.client().config_resetstat()
        results = await asyncio.gather(*(client.publish(f"b{i % 10}", b"%d" % i) for i in range(300)))
        assert shard.commands.round_trips - trips == 1
        assert redis_server.commandstats()["evalsha"] == 300
        assert sorted(r.offset for r in results) == sorted([o for o in range(1, 31)] * 10)
        batch = await client.publish_batch([("bb", b"%d" % i, None) for i in range(50)])
        assert [r.offset for r in batch] == list(range(1, 51)) and shard.commands.round_trips - trips == 2
        await client.close()

    run(body())


def test_sixty_concurrent_resumes_of_one_channel_cost_at_most_five_commands(redis_server):
    async def body():
        client = await started(redis_server.url)
        results = [await client.publish("hot", b"%d" % i) for i in range(80)]
        epoch = results[0].epoch
        redis_server.client().config_resetstat()
        since = [StreamPosition(epoch, 20 + i) for i in range(60)]
        answers = await asyncio.gather(*(client.history("hot", s, upto=80) for s in since))
        stats = redis_server.commandstats()
        # One script call per read (its HMGET/XRANGE inside are counted apart by Redis).
        assert stats["evalsha"] <= 5 and "eval" not in stats and stats["xrange"] == stats["evalsha"], stats
        assert client._history.reads == stats["evalsha"]
        for s, answer in zip(since, answers, strict=True):
            assert [p.offset for p in answer.publications] == list(range(s.offset + 1, 81))
        # Late joiners while a read is on the wire are served by it or by one more read.
        first = asyncio.ensure_future(client.history("hot", StreamPosition(epoch, 30)))
        await asyncio.sleep(0)
        late = [asyncio.ensure_future(client.history("hot", StreamPosition(epoch, 31 + i))) for i in range(10)]
        await asyncio.gather(first, *late)
        assert redis_server.commandstats()["evalsha"] <= 7
        await client.close()

    run(body())


def test_channels_spread_over_instances_by_consistent_hash(redis_factory):
    servers = [redis_factory() for _ in range(3)]

    async def body():
        client = await started([s.url for s in servers])
        channels = [f"spread-{i}" for i in range(300)]
        await client.publish_batch([(ch, b"1", None) for ch in channels])
        per_server = [set(k.decode() for k in s.client().keys("wsd:*:m")) for s in servers]
        for ch in channels:
            holders = [i for i, found in enumerate(per_server) if f"wsd:{{{ch}}}:m" in found]
            assert holders == [client.spec.targets.index(client.shard_for(ch).target)]
        assert all(60 < len(found) < 140 for found in per_server), [len(f) for f in per_server]
        # A fourth instance takes about a quarter of the channels, all from the three others.
        fourth = redis_factory()
        bigger = ClusterClient([s.url for s in servers] + [fourth.url])
        moved = [ch for ch in channels if bigger.shard_for(ch).target.key != client.shard_for(ch).target.key]
        assert all(bigger.shard_for(ch).target.key == bigger.spec.targets[3].key for ch in moved)
        assert 45 < len(moved) < 110, len(moved)
        await client.close()

    run(body())
