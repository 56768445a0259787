"""Subscriptions and outages against a real redis-server: confirmed and batched (UN)SUBSCRIBE,
Redis killed and restarted, paused (SIGSTOP), connections killed or silenced, and the probe."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from tests.cluster.conftest import run
from tests.cluster.tcp_proxy import SilencingProxy
from wsd.server.cluster import ClusterClient, ClusterOutcomeUnknown, ClusterUnavailable, StreamPosition

TIMEOUT = 0.5


class Recorder:
    """Collects what a client's callbacks report."""

    def __init__(self) -> None:
        self.messages: list[tuple] = []
        self.rebuilt: list[list[str]] = []

    def publication(self, *args) -> None:
        self.messages.append(args)

    async def wait_messages(self, count: int, timeout: float = 5) -> None:
        deadline = time.monotonic() + timeout
        while len(self.messages) < count and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        assert len(self.messages) >= count, self.messages

    async def wait_rebuilt(self, count: int = 1, timeout: float = 8) -> None:
        deadline = time.monotonic() + timeout
        while len(self.rebuilt) < count and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert len(self.rebuilt) >= count, "no rebuild reported"


async def client_for(url: str, recorder: Recorder, **options) -> ClusterClient:
    options.setdefault("probe_interval_s", 0)
    options.setdefault("timeout_s", TIMEOUT)
    client = ClusterClient([url], on_publication=recorder.publication,
                           on_rebuilt=recorder.rebuilt.append, **options)  # fmt: skip
    await client.start()
    assert await client.wait_up(5)
    return client


def numsub(server, *channels: str) -> list[int]:
    reply = server.client().execute_command("PUBSUB", "NUMSUB", *(f"wsd:{{{ch}}}" for ch in channels))
    return reply[1::2]


def test_subscribe_returns_when_confirmed_and_changes_are_batched(redis_server):
    recorder = Recorder()

    async def body():
        client = await client_for(redis_server.url, recorder)
        link = client.shards[0].link
        commands = link.subscribe_commands
        redis_server.client().config_resetstat()
        channels = [f"s{i}" for i in range(300)]
        await asyncio.gather(*(client.subscribe([ch]) for ch in channels[:200]), client.subscribe(channels[200:]))
        assert numsub(redis_server, *channels) == [1] * 300  # confirmed means Redis has them all
        assert link.subscribe_commands - commands == 1 and redis_server.commandstats()["subscribe"] == 1
        assert client.subscribed() == set(channels) and client.status()["channels"] == 300
        await client.publish("s7", b"7")
        await recorder.wait_messages(1)
        await asyncio.gather(*(client.unsubscribe([ch]) for ch in channels[:150]))
        assert redis_server.commandstats()["unsubscribe"] == 1
        assert numsub(redis_server, *channels) == [0] * 150 + [1] * 150
        # subscribe and unsubscribe of one channel in one loop iteration: applied in call order.
        await asyncio.gather(client.subscribe(["flip"]), client.unsubscribe(["flip"]), client.subscribe(["flop"]))
        assert numsub(redis_server, "flip", "flop") == [0, 1]
        await client.close()

    run(body())


def test_host_without_subscription_receives_nothing(redis_server):
    interested, other = Recorder(), Recorder()

    async def body():
        a = await client_for(redis_server.url, interested)
        b = await client_for(redis_server.url, other)
        await a.subscribe(["only-a"])
        for i in range(5):
            await b.publish("only-a", b"%d" % i)
        await interested.wait_messages(5)
        await asyncio.sleep(0.05)
        assert other.messages == [] and b.shards[0].link.messages == 0
        await a.close()
        await b.close()

    run(body())


def test_redis_killed_and_restarted_empty(redis_server, caplog):
    recorder = Recorder()
    caplog.set_level(logging.WARNING, logger="wsd.cluster")

    async def body():
        client = await client_for(redis_server.url, recorder)
        await client.subscribe(["k1", "k2"])
        before = await client.publish("k1", b"1")
        await recorder.wait_messages(1)  # a message still in Redis's output buffer dies with it
        redis_server.kill()
        started = time.monotonic()
        with pytest.raises(ClusterUnavailable, match=r"^cluster unavailable: ") as caught:
            await client.publish("k1", b"lost")
        assert time.monotonic() - started < TIMEOUT + 0.2
        assert not isinstance(caught.value, ClusterOutcomeUnknown)
        await asyncio.sleep(0.2)
        with pytest.raises(ClusterUnavailable):
            await client.subscribe(["k3"])
        failures = await asyncio.gather(*(client.publish("k2", b"x") for _ in range(20)), return_exceptions=True)
        assert all(isinstance(f, ClusterUnavailable) for f in failures)
        assert client.status()["state"] == "down" and client.status()["shards"][0]["state"] == "down"
        redis_server.start()
        await recorder.wait_rebuilt()
        assert sorted(recorder.rebuilt[0]) == ["k1", "k2"] and numsub(redis_server, "k1", "k2") == [1, 1]
        after = await client.publish("k1", b"2")
        assert after.epoch != before.epoch and after.offset == 1  # Redis lost the channel: new epoch
        await recorder.wait_messages(2)
        assert [m[3] for m in recorder.messages] == [b"1", b"2"]  # the refused publish never arrives
        catch_up = await client.read_since("k1", StreamPosition(before.epoch, 1))
        assert catch_up.publications is None and catch_up.epoch == after.epoch
        assert client.status()["state"] == "up" and client.status()["catch_ups"] == 1
        await client.close()

    run(body())
    downs = [r for r in caplog.records if "is down" in r.getMessage()]
    ups = [r for r in caplog.records if "is up again" in r.getMessage()]
    assert len(downs) == 1 and len(ups) == 1, [r.getMessage() for r in caplog.records]


def test_reply_lost_after_send_is_outcome_unknown_and_queued_ones_are_never_sent(redis_server):
    recorder = Recorder()

    async def body():
        client = await client_for(redis_server.url, recorder)
        await client.subscribe(["p"])
        await client.publish("p", b"1")
        redis_server.pause()
        first = asyncio.ensure_future(client.publish("p", b"2"))  # written to the socket, never answered
        await asyncio.sleep(TIMEOUT / 2)
        queued = asyncio.ensure_future(client.publish("p", b"3"))  # waits behind the first, never written
        started = time.monotonic()
        outcomes = await asyncio.gather(first, queued, return_exceptions=True)
        assert time.monotonic() - started < TIMEOUT + 0.2
        assert isinstance(outcomes[0], ClusterOutcomeUnknown) and "outcome unknown" in str(outcomes[0])
        assert str(outcomes[0]).startswith("cluster unavailable: ")
        assert type(outcomes[1]) is ClusterUnavailable
        redis_server.resume()
        await asyncio.sleep(0.3)
        assert (await client.publish("p", b"4")).offset == 3  # "2" did run after all; "3" never will
        await recorder.wait_messages(3)
        assert [m[3] for m in recorder.messages] == [b"1", b"2", b"4"]
        await client.close()

    run(body())


def test_killed_pubsub_connection_is_rebuilt_and_reported(redis_server):
    recorder = Recorder()

    async def body():
        client = await client_for(redis_server.url, recorder)
        await client.subscribe(["r1", "r2"])
        redis_server.client().client_kill_filter(_type="pubsub")
        await recorder.wait_rebuilt()
        assert sorted(recorder.rebuilt[0]) == ["r1", "r2"]
        await client.publish("r2", b"after")
        await recorder.wait_messages(1)
        assert client.status()["shards"][0]["rebuilds"] == 1
        await client.close()

    run(body())


def test_probe_rebuilds_a_connection_that_silently_stopped_delivering(redis_server, caplog):
    recorder = Recorder()
    caplog.set_level(logging.WARNING, logger="wsd.cluster")

    async def body():
        proxy = SilencingProxy(redis_server.port)
        await proxy.start()
        client = await client_for(proxy.url, recorder, probe_interval_s=0.2)
        await client.subscribe(["quiet"])
        assert proxy.silence_pubsub() == 1
        await client.publish("quiet", b"swallowed")  # Redis delivers it; the proxy drops it
        await recorder.wait_rebuilt(timeout=3)
        assert recorder.rebuilt[0] == ["quiet"] and recorder.messages == []
        position = StreamPosition((await client.position("quiet")).epoch, 0)
        assert [p.data for p in (await client.read_since("quiet", position)).publications] == [b"swallowed"]
        await client.publish("quiet", b"heard")
        await recorder.wait_messages(1)
        assert recorder.messages[0][3] == b"heard"
        shard = client.status()["shards"][0]
        assert shard["probe_failures"] == 1 and shard["probes"] >= 1
        await client.close()
        await proxy.close()

    run(body())
    assert any("stopped delivering" in r.getMessage() for r in caplog.records)


def test_redis_unreachable_at_start_then_appears(redis_factory, tmp_path):
    recorder = Recorder()

    async def body():
        from tests.cluster.redis_servers import RedisServer

        server = RedisServer(tmp_path / "late")
        client = ClusterClient([server.url], timeout_s=TIMEOUT, on_publication=recorder.publication)
        await client.start()
        with pytest.raises(ClusterUnavailable, match="^cluster unavailable: redis://127.0.0.1"):
            await client.publish("x", b"1")
        with pytest.raises(ClusterUnavailable):
            await client.subscribe(["x"])
        with pytest.raises(ClusterUnavailable):
            await client.history("x", None)
        server.start()
        try:
            assert await client.wait_up(5)
            await client.subscribe(["x"])
            assert (await client.publish("x", b"1")).offset == 1
            await recorder.wait_messages(1)
        finally:
            await client.close()
            server.kill()

    run(body())


def test_a_burst_of_subscribes_slower_to_confirm_than_the_timeout_succeeds_while_redis_answers(redis_server):
    # The clients of a restarted host subscribing to their own channels at once: reading each
    # confirmation takes the worker longer than the timeout in all, but Redis answers all along.
    # Every subscribe failed with "Redis did not confirm the subscription" before.
    recorder = Recorder()

    async def body():
        client = await client_for(redis_server.url, recorder, timeout_s=0.02)
        channels = [f"user:{i}" for i in range(10_000)]
        started = time.monotonic()
        results = await asyncio.gather(*(client.subscribe([ch]) for ch in channels), return_exceptions=True)
        took = time.monotonic() - started
        failures = [r for r in results if isinstance(r, Exception)]
        assert not failures, f"{len(failures)} failed, e.g. {failures[0]}"
        assert took > 0.02, "the burst must outlast the timeout for this test to mean anything"
        assert sum(numsub(redis_server, *channels[::1000])) == 10
        await client.close()

    run(body())


def test_a_subscribe_still_fails_in_the_timeout_when_redis_answers_nothing(redis_server):
    recorder = Recorder()

    async def body():
        client = await client_for(redis_server.url, recorder)
        redis_server.pause()
        try:
            started = time.monotonic()
            with pytest.raises(ClusterUnavailable, match="did not confirm"):
                await client.subscribe(["paused"])
            assert time.monotonic() - started < 3 * TIMEOUT
        finally:
            redis_server.resume()
        await client.close()

    run(body())
