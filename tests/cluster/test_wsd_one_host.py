"""`wsd serve --cluster` on one host (2 workers) against a real redis-server with a password: offsets
from Redis, one Redis subscription per channel for the whole host (taken before the `sub` is
answered, dropped after the last subscriber), history from the ring or from Redis (coalesced), the
`cluster` part of `ctl status`, rolling reloads and a killed role holder, and the settings."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time

import pytest

from harness.wsd_process import WSD, WsdProcess
from tests.cluster.conftest import run
from tests.cluster.redis_servers import MISSING, RedisServer
from tests.cluster.ws_client import Client, ResumingClient, check_sequence, wait_for
from tests.operations.helpers import http

PASSWORD = "s3cret-pw"


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    if MISSING:
        pytest.skip(MISSING)
    server = RedisServer(tmp_path_factory.mktemp("redis"), extra=["--requirepass", PASSWORD])
    server.client = lambda: __import__("redis").Redis(port=server.port, password=PASSWORD, socket_timeout=5,
                                                      protocol=2)  # fmt: skip
    server.start()
    yield server
    server.kill()


@pytest.fixture(scope="module")
def host(redis_server, tmp_path_factory):
    wsd = WsdProcess(tmp_path_factory.mktemp("wsd"), workers=2,
                     flags=["--cluster", f"redis://:{PASSWORD}@127.0.0.1:{redis_server.port}"])  # fmt: skip
    wsd.start()
    yield wsd
    wsd.kill()


def numsub(redis_server: RedisServer, channel: str) -> int:
    return redis_server.client().execute_command("PUBSUB", "NUMSUB", f"wsd:{{{channel}}}")[1]


def api_post(wsd: WsdProcess, path: str, payload, timeout: float = 10) -> tuple[int, dict]:
    """(status, JSON answer) of a POST to the publish API; error statuses are answers."""
    status, _headers, body = http(f"{wsd.api_url}{path}", json.dumps(payload).encode(),
                                  {"Content-Type": "application/json"}, timeout=timeout)  # fmt: skip
    return status, json.loads(body)


def api_publish(wsd: WsdProcess, channel: str, data) -> tuple[int, dict]:
    try:
        return api_post(wsd, "/api/publish", {"channel": channel, "data": data})
    except OSError as exc:  # the connection was reset (a killed worker held it)
        return 0, {"error": repr(exc)}


async def clients_on_both_workers(url: str, count: int, channel: str | None = None) -> list[Client]:
    """`count` clients, at least one on each worker (the kernel spreads connections over them)."""
    clients: list[Client] = []
    workers: set[int] = set()
    while len(clients) < count or len(workers) < 2:
        assert len(clients) < count + 40, "connections never reached both workers"
        client = await Client.open(url)
        reply = await client.sub(channel or f"probe-{os.getpid()}")
        workers.add(reply["worker"])
        client.worker = reply["worker"]
        clients.append(client)
    return clients


async def close_all(clients: list[Client]) -> None:
    await asyncio.gather(*(client.close() for client in clients), return_exceptions=True)


def test_every_message_reaches_every_subscriber_of_the_host_once_in_redis_offset_order(host, redis_server):
    channel = "one-host-order"

    async def body():
        subscribers = await clients_on_both_workers(host.url, 6, channel)
        publishers = await clients_on_both_workers(host.url, 2)
        loop = asyncio.get_running_loop()
        sent = []

        async def publish_ws(client: Client, index: int):
            for n in range(40):
                reply = await client.pub(channel, {"ws": index, "n": n})
                assert reply["op"] == "ok", reply
                sent.append(reply["off"])

        async def publish_api():
            for n in range(40):
                status, body = await loop.run_in_executor(None, api_publish, host, channel, {"api": n})
                assert status == 200, body
                sent.append(body["offset"])

        await asyncio.gather(*(publish_ws(c, i) for i, c in enumerate(publishers)), publish_api())
        total = 40 * (len(publishers) + 1)
        assert sorted(sent) == list(range(1, total + 1))  # Redis's offsets: global, no hole
        await wait_for(lambda: all(len(s.offsets(channel)) >= total for s in subscribers), 10, "every delivery")
        reference = subscribers[0].received[channel]
        for subscriber in subscribers:
            assert subscriber.offsets(channel) == list(range(1, total + 1))
            assert subscriber.received[channel] == reference  # the same messages in the same order everywhere
        assert numsub(redis_server, channel) == 1  # one Redis subscription for the host, not per worker
        await close_all(subscribers + publishers)

    run(body())


def test_the_host_subscribes_in_redis_before_answering_and_drops_it_after_the_last_subscriber(host, redis_server):
    async def body():
        clients = await clients_on_both_workers(host.url, 2)
        for attempt in range(10):
            channel = f"interest-{attempt}"
            assert numsub(redis_server, channel) == 0
            # Publish the moment the `ok` arrives: the message must not be missed.
            replies = await asyncio.gather(*(client.sub(channel) for client in clients))
            status, body = api_publish(host, channel, attempt)
            assert status == 200 and body["offset"] == replies[0]["off"] + 1
            await wait_for(lambda ch=channel: all(client.offsets(ch) for client in clients), 5, "the first message")
            assert numsub(redis_server, channel) == 1
        status, _ = api_publish(host, "nobody-here", 1)
        assert status == 200 and numsub(redis_server, "nobody-here") == 0  # no subscriber: no subscription
        await asyncio.gather(*(client.unsub("interest-0") for client in clients))
        left = time.monotonic()
        await wait_for(lambda: numsub(redis_server, "interest-0") == 0, 6, "the Redis subscription to go")
        assert time.monotonic() - left < 5.5
        assert numsub(redis_server, "interest-1") == 1
        await close_all(clients)  # connections closing count as leaving
        await wait_for(lambda: all(numsub(redis_server, f"interest-{n}") == 0 for n in range(10)), 6,
                       "every subscription to go")  # fmt: skip

    run(body())


def test_resume_uses_the_ring_when_it_holds_the_range_and_redis_otherwise(host, redis_server):
    async def body():
        # Published while the host has no subscriber: only Redis has these.
        offsets = [api_publish(host, "resume-far", n)[1]["offset"] for n in range(5)]
        first = await Client.open(host.url)
        reply = await first.sub("resume-far")
        assert reply["off"] == offsets[-1]
        epoch = reply["epoch"]
        redis_server.client().config_resetstat()
        again = await Client.open(host.url)
        resumed = await again.sub("resume-far", since=(1, epoch))
        assert resumed["recovered"] is True and resumed["off"] == 5
        await wait_for(lambda: again.offsets("resume-far") == [2, 3, 4, 5], 5, "the missed messages")
        assert redis_server.commandstats().get("evalsha", 0) == 1  # the ring had none of them: one read
        # Now the host is subscribed: new messages are in its ring, and a resume costs Redis nothing.
        for n in range(3):
            api_publish(host, "resume-far", n)
        await wait_for(lambda: first.offsets("resume-far") == [6, 7, 8], 5, "live messages")
        redis_server.client().config_resetstat()
        third = await Client.open(host.url)
        resumed = await third.sub("resume-far", since=(5, epoch))
        assert resumed["recovered"] is True
        await wait_for(lambda: third.offsets("resume-far") == [6, 7, 8], 5, "the replay from the ring")
        assert redis_server.commandstats().get("evalsha", 0) == 0
        stale = await third.sub("resume-other", since=(3, epoch + 1))
        assert stale["recovered"] is False
        await close_all([first, again, third])

    run(body())


def test_sixty_clients_resuming_one_channel_cost_at_most_five_redis_commands(host, redis_server):
    async def body():
        for n in range(20):
            api_publish(host, "mass-resume", n)  # nobody subscribed: the ring has none of them
        clients = [await Client.open(host.url) for _ in range(60)]
        epoch = redis_server.client().hget("wsd:{mass-resume}:m", "e")
        redis_server.client().config_resetstat()
        replies = await asyncio.gather(*(client.sub("mass-resume", since=(10, int(epoch))) for client in clients))
        assert all(r["recovered"] is True and r["off"] == 20 for r in replies), replies[:3]
        await wait_for(lambda: all(c.offsets("mass-resume") == list(range(11, 21)) for c in clients), 10,
                       "every replay")  # fmt: skip
        stats = redis_server.commandstats()
        assert stats.get("evalsha", 0) <= 5, stats
        await close_all(clients)

    run(body())


def test_ctl_status_shows_the_cluster_without_the_password(host):
    async def body():
        client = await Client.open(host.url)
        await client.sub("status-channel")
        await client.pub("status-channel", 1)
        await asyncio.sleep(0.7)  # a status tick
        status = host.status()
        await client.close()
        return status

    status = run(body())
    cluster = status["cluster"]
    assert cluster["state"] == "up" and cluster["mode"] == "instances"
    assert cluster["node_id"] and cluster["channels"] >= 1 and cluster["processes"] == 2
    (shard,) = cluster["shards"]
    assert shard["url"].endswith(f"127.0.0.1:{host.flags[1].rsplit(':', 1)[1]}/0")
    assert shard["state"] == "up" and shard["publish_rtt_ms"] > 0 and "catch_ups" in shard
    assert PASSWORD not in json.dumps(status) and PASSWORD not in host.ctl("status").stdout
    assert "cluster node" in host.ctl("status").stdout


class Publisher:
    """Publishes to channels through the API until stopped; remembers each channel's last offset."""

    def __init__(self, wsd: WsdProcess, channels: list[str]):
        self.wsd, self.channels = wsd, channels
        self.last: dict[str, int] = {}
        self.failures = 0
        self._stop = asyncio.Event()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        n = 0
        while not self._stop.is_set():
            for channel in self.channels:
                status, body = await loop.run_in_executor(None, api_publish, self.wsd, channel, n)
                if status == 200:
                    self.last[channel] = body["offset"]
                else:
                    self.failures += 1
            n += 1
            await asyncio.sleep(0.01)

    def stop(self) -> None:
        self._stop.set()


def test_a_killed_role_holder_is_caught_up_for_the_other_worker(host):
    channels = [f"killed-{n}" for n in range(8)]  # channels of both roles

    async def body():
        clients = await clients_on_both_workers(host.url, 4)
        survivors = [c for c in clients if c.worker == 1]  # the holder of role 0 (worker 0) is killed
        for client in clients:
            for channel in channels:
                await client.sub(channel)
        publisher = Publisher(host, channels)
        task = asyncio.get_running_loop().create_task(publisher.run())
        await asyncio.sleep(0.5)
        victim = next(w for w in host.status()["workers"] if w["role"] == 0)
        os.kill(victim["pid"], signal.SIGKILL)
        await asyncio.sleep(3)
        publisher.stop()
        await task
        for client in survivors:
            for channel in channels:
                await wait_for(lambda c=client, ch=channel: (c.offsets(ch) or [0])[-1] >= publisher.last[ch], 10,
                               f"{channel} to catch up")  # fmt: skip
                assert check_sequence(client.received[channel], 1) == [], (channel, client.received[channel])
        assert not any(c.closed for c in survivors)
        await close_all(clients)
        host.wait_ready()

    run(body(), timeout=90)


def test_a_rolling_reload_loses_no_message_for_resuming_clients(redis_server, tmp_path):
    wsd = WsdProcess(tmp_path / "wsd", workers=2, flags=[
        "--cluster", f"redis://:{PASSWORD}@127.0.0.1:{redis_server.port}", "--drain-window", "2"])  # fmt: skip
    wsd.start()
    channels = [f"reload-{n}" for n in range(6)]

    async def body():
        clients = [ResumingClient(lambda: Client.open(wsd.url), channels) for _ in range(6)]
        for client in clients:
            await client.start()
        publisher = Publisher(wsd, channels)
        task = asyncio.get_running_loop().create_task(publisher.run())
        await asyncio.sleep(0.5)
        wsd.ctl("reload")
        await asyncio.sleep(1)
        await wait_for(lambda: wsd.status()["supervisor"]["state"] == "running", 60, "the reload", interval=0.3)
        await asyncio.sleep(1)
        publisher.stop()
        await task
        for client in clients:
            for channel in channels:
                await wait_for(lambda c=client, ch=channel: (c.offsets(ch) or [0])[-1] >= publisher.last[ch], 10,
                               f"{channel} to catch up")  # fmt: skip
                assert client.problems(channel) == [], (channel, client.received(channel))
                assert not [e for e in client.received(channel) if e[0] == "gap"]
            await client.stop()
        assert sum(client.reconnects for client in clients) >= len(clients)  # every one was moved once at least
        assert publisher.failures == 0

    try:
        run(body(), timeout=120)
    finally:
        wsd.kill()


def test_bad_cluster_settings_are_refused_with_the_reason(tmp_path):
    result = subprocess.run(WSD + ["serve", "--cluster", "http://127.0.0.1:1", "--admin-socket",
                                   str(tmp_path / "s")], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 2 and "cluster" in result.stderr and "http" in result.stderr
    result = subprocess.run(WSD + ["serve", "--cluster", "redis://127.0.0.1:1", "--cluster-timeout", "0"],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 2 and "cluster_timeout" in result.stderr


def test_the_cluster_table_of_the_config_file_is_read(tmp_path):
    from wsd.server.control.config import ConfigError, build_config, load_toml

    path = tmp_path / "wsd.toml"
    path.write_text('[cluster]\nredis = ["redis://10.0.0.5:6379/0", "redis://10.0.0.6:6379/0"]\ntimeout = 1.5\n')
    config = build_config(load_toml(str(path)), {})
    assert config.cluster == ["redis://10.0.0.5:6379/0", "redis://10.0.0.6:6379/0"] and config.cluster_timeout == 1.5
    assert build_config(load_toml(str(path)), {"cluster": ["redis://h:1"]}).cluster == ["redis://h:1"]  # flags win
    path.write_text('[cluster]\nredis = "redis://10.0.0.5:6379"\n')
    assert build_config(load_toml(str(path)), {}).cluster == ["redis://10.0.0.5:6379"]
    path.write_text('[cluster]\nhosts = ["redis://10.0.0.5"]\n')
    with pytest.raises(ConfigError, match="unknown setting 'hosts' in \\[cluster\\]"):
        load_toml(str(path))
    path.write_text('[cluster]\nredis = [1]\n')
    with pytest.raises(ConfigError, match="list of strings"):
        load_toml(str(path))
    assert build_config({}, {}).cluster == []  # the default: one host


def test_a_client_publish_carries_its_user_through_redis_live_and_in_redis_history(redis_server, tmp_path):
    from websockets.sync.client import connect

    from tests.auth_material import SECRET, hs256

    wsd = WsdProcess(tmp_path / "wsd", workers=2, flags=[
        "--cluster", f"redis://:{PASSWORD}@127.0.0.1:{redis_server.port}", "--auth-secret", SECRET])  # fmt: skip
    wsd.start()

    def token(sub: str, **claims) -> str:
        return hs256({"sub": sub, "exp": int(time.time()) + 120, **claims})

    def call(ws, message: dict) -> dict:
        ws.send(json.dumps(message))
        while (reply := json.loads(ws.recv(timeout=10)))["op"] == "msg":
            pass
        return reply

    try:
        alice = token("alice", pubs=["from:*"])
        # Published while the host has no subscriber: only Redis has these, and their user.
        for n in range(3):
            with connect(f"{wsd.url}?token={alice}", open_timeout=10) as ws:
                assert call(ws, {"op": "pub", "ch": "from:redis", "data": n, "id": 1})["op"] == "ok"
        api_publish(wsd, "from:redis", "api")
        with connect(f"{wsd.url}?token={token('bob', subs=['from:*'])}", open_timeout=10) as reader:
            reply = call(reader, {"op": "sub", "ch": "from:redis", "since": {"off": 0, "epoch": 0}, "id": 1})
            epoch = reply["epoch"]
            reply = call(reader, {"op": "sub", "ch": "from:live", "id": 2})
            assert reply["op"] == "ok"
            # Live: from publishers on both workers (the kernel spreads the connections).
            workers = set()
            for n in range(6):
                with connect(f"{wsd.url}?token={alice}", open_timeout=10) as ws:
                    workers.add(ws.response.headers["X-Wsd-Worker"])
                    assert call(ws, {"op": "pub", "ch": "from:live", "data": n, "id": 1})["op"] == "ok"
            api_publish(wsd, "from:live", "api")
            live = [json.loads(reader.recv(timeout=10)) for _ in range(7)]
        assert [m.get("from") for m in live] == ["alice"] * 6 + [None] and [m["off"] for m in live] == list(range(1, 8))
        with connect(f"{wsd.url}?token={token('bob', subs=['from:*'])}", open_timeout=10) as again:
            reply = call(again, {"op": "sub", "ch": "from:redis", "since": {"off": 0, "epoch": epoch}, "id": 1})
            assert reply["recovered"] is True
            replayed = [json.loads(again.recv(timeout=10)) for _ in range(4)]
        assert [(m["off"], m.get("from")) for m in replayed] == [(1, "alice"), (2, "alice"), (3, "alice"), (4, None)]
    finally:
        wsd.kill()


def api_publish_batch(wsd: WsdProcess, items: list[tuple[str, object]]) -> tuple[int, dict]:
    return api_post(wsd, "/api/publish_batch", [{"channel": channel, "data": data} for channel, data in items], 20)


def test_an_api_batch_is_published_through_redis_in_the_batchs_order_per_channel(host):
    # The broker sends the whole batch to Redis pipelined (ClusterBroker.publish_batch): Redis's
    # offsets, and what subscribers on both workers receive, follow the batch item by item.
    channels = [f"batch-{os.getpid()}-{name}" for name in "abc"]
    items = [(channels[i % 3], {"i": i}) for i in range(300)]

    async def body():
        subscribers = await clients_on_both_workers(host.url, 4, channels[0])
        for subscriber in subscribers:
            for channel in channels[1:]:
                assert (await subscriber.sub(channel))["op"] == "ok"
        status, answer = await asyncio.get_running_loop().run_in_executor(None, api_publish_batch, host, items)
        assert status == 200, answer
        for channel in channels:
            assert [off for off, (ch, _) in zip(answer["offsets"], items, strict=True) if ch == channel] == list(
                range(1, 101)
            )
        await wait_for(lambda: all(len(s.offsets(ch)) >= 100 for s in subscribers for ch in channels), 10,
                       "every delivery")  # fmt: skip
        for subscriber in subscribers:
            for channel in channels:
                assert subscriber.offsets(channel) == list(range(1, 101))
                assert subscriber.data(channel) == [data for ch, data in items if ch == channel]
        await close_all(subscribers)

    run(body())


def test_an_api_batch_redis_does_not_answer_is_refused_naming_its_first_item(tmp_path):
    # Redis stopped (SIGSTOP): the pipelined batch gets no reply within --cluster-timeout; the
    # answer is 503 for item 0, and says the items after it were sent too (Redis runs them once
    # it goes on: they may have been published).
    if MISSING:
        pytest.skip(MISSING)
    redis_server = RedisServer(tmp_path / "redis")
    redis_server.start()
    wsd = WsdProcess(tmp_path / "wsd", workers=2,
                     flags=["--cluster", redis_server.url, "--cluster-timeout", "0.5"])  # fmt: skip
    wsd.start()
    try:
        channel = "stopped-redis-batch"
        assert api_publish_batch(wsd, [(channel, 0)]) == (200, {"offsets": [1]})
        redis_server.proc.send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            status, answer = api_publish_batch(wsd, [(channel, n) for n in range(1, 6)])
            assert time.monotonic() - started < 10
        finally:
            redis_server.proc.send_signal(signal.SIGCONT)
        assert status == 503, answer
        assert answer["offsets"] == []
        assert "batch item 0" in answer["error"] and "may or may not have been published" in answer["error"]
        # Redis went on with what it had been sent: the batch was published after all, once.
        assert api_publish_batch(wsd, [(channel, 6)]) == (200, {"offsets": [7]})
    finally:
        wsd.kill()
        redis_server.kill()
