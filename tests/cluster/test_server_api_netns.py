"""Issue 12's server API across three hosts, each a network namespace with its own address and its
own `wsd serve --workers 2 --cluster --auth-secret-file ...`, on one Redis and on a 3-master Redis
Cluster (the requests and answers then go over sharded pub/sub): `/api/disconnect` on host 1
closes the user's connections on hosts 0 and 2 with 4000; `/api/unsubscribe` ends their
subscriptions (the `unsub` notice); `/api/channels` counts every host's subscribers; a host whose
workers are frozen is named in the answer within the timeout while the others still act."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from tests import auth_material
from tests.cluster.conftest import run
from tests.cluster.test_hosts_netns import Deployment, close_all, lab  # noqa: F401 (the lab fixture)
from tests.cluster.ws_client import wait_for

pytestmark = [pytest.mark.netns, pytest.mark.timeout(300)]


def token(user: str) -> str:
    return auth_material.hs256({"sub": user, "exp": 2_000_000_000, "subs": ["*"], "pubs": ["*"]})


@pytest.fixture(scope="module", params=["redis", "redis-cluster"])
def deployment(lab, request):  # noqa: F811 (lab: the fixture imported above)
    secret = auth_material.write(lab.workdir / "auth-secret", auth_material.SECRET)
    made = Deployment(lab, request.param, flags=("--auth-secret-file", str(secret)))
    try:
        made.start()
        wait_members(made, 6)
        yield made
    finally:
        made.stop()


def wait_members(deployment: Deployment, count: int, timeout: float = 15) -> None:
    """Every worker of every host has joined the members set (within a refresh of starting)."""
    deadline = time.monotonic() + timeout
    redis = deployment.redis if deployment.kind == "redis" else deployment.redis.node_of("#api")
    while len(redis.cli("ZRANGE", "wsd:{#api}:members", "0", "-1").split()) < 3 * count:  # 3 words a member
        assert time.monotonic() < deadline, redis.cli("ZRANGE", "wsd:{#api}:members", "0", "-1")
        time.sleep(0.2)


async def closed_with(client, code: int, timeout: float = 10) -> bool:
    await wait_for(lambda: client.closed, timeout, "the server to close the connection")
    return client.websocket.close_code == code


def test_disconnect_on_one_host_closes_the_users_connections_on_the_other_hosts(deployment):
    async def body():
        alice = [await deployment.client(host, token("alice")) for host in (0, 2, 2)]
        bob = await deployment.client(0, token("bob"))
        for client in (*alice, bob):
            assert (await client.request({"op": "ping"}))["op"] == "ok"
        api = deployment.api(1)
        assert await api.post("/api/disconnect", {"user": "alice"}) == (200, {"disconnected": 3})
        for client in alice:
            assert await closed_with(client, 4000)
        assert (await bob.request({"op": "ping"}))["op"] == "ok"
        assert await api.post("/api/disconnect", {"user": "nobody"}) == (200, {"disconnected": 0})
        api.close()
        await close_all([bob])

    run(body(), timeout=60)


def test_unsubscribe_and_channel_counts_cover_every_host(deployment):
    channel = "api-news"

    async def body():
        carol = [await deployment.client(host, token("carol")) for host in (0, 2)]
        dave = [await deployment.client(host, token("dave")) for host in (0, 1, 2)]
        for client in (*carol, *dave):
            assert (await client.sub(channel))["op"] == "ok"
        api = deployment.api(1)
        status, answer = await api.get(f"/api/channels/{channel}")
        assert status == 200 and answer["subscribers"] == 5, answer
        status, answer = await api.get("/api/channels")
        assert status == 200 and {"channel": channel, "subscribers": 5} in answer["channels"], answer
        status, answer = await api.post("/api/unsubscribe", {"user": "carol", "channel": channel})
        assert (status, answer) == (200, {"unsubscribed": 2})
        for client in carol:
            await wait_for(lambda client=client: client.notices, 5, "the unsub notice")
            assert client.notices == [{"op": "unsub", "ch": channel}]
        assert (await deployment.api(0).get(f"/api/channels/{channel}"))[1]["subscribers"] == 3
        api.close()
        await close_all(carol + dave)

    run(body(), timeout=60)


def test_a_frozen_host_is_named_within_the_timeout_and_the_others_still_act(deployment):
    async def body():
        erin = [await deployment.client(host, token("erin")) for host in (0, 1, 2)]
        for client in erin:
            assert (await client.request({"op": "ping"}))["op"] == "ok"
        frozen = deployment.hosts[2]
        pids = [worker["pid"] for worker in frozen.status()["workers"]]
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        try:
            api = deployment.api(1)
            started = time.monotonic()
            status, answer = await api.post("/api/disconnect", {"user": "erin"})
            took = time.monotonic() - started
        finally:
            for pid in pids:
                os.kill(pid, signal.SIGCONT)
        assert status == 503 and answer["disconnected"] == 2, answer
        node_id = frozen.status()["cluster"]["node_id"]
        assert f"host {node_id}: worker(s) at bus slot(s) 0, 1 did not answer within 2 s" in answer["error"], answer
        assert took < 4.5, took  # the cluster timeout (2 s) and the local round, not a hang
        for client in erin[:2]:
            assert await closed_with(client, 4000)
        api.close()
        await asyncio.sleep(0.5)
        await close_all(erin)

    run(body(), timeout=60)
