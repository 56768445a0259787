"""Issue 12's server API across hosts with `--cluster`, against a real Redis: two `wsd serve` on one
box sharing it (each its own supervisor, so its own node id: two hosts as far as wsd can tell).
`/api/disconnect` and `/api/unsubscribe` on one host act on the user's connections on every worker
of both; `/api/channels` counts both; a frozen host is named in the answer within the timeout while
the other still acts; a dead worker's successor replaces it; a killed server API connection is
rebuilt; with Redis down the answer is this host's, and says the others could not be asked.
(tests/cluster/test_server_api_netns.py runs the same across network namespaces.)"""

from __future__ import annotations

import os
import signal
import time

import pytest

from harness.wsd_process import WsdProcess
from tests import auth_material
from tests.cluster.redis_servers import MISSING, RedisServer
from tests.operations.helpers import NO_PINGS, Client, api_json, clients_on_every_worker, wait_for

WORKERS = 2
API_KEY = "api-key-for-cluster-api-0123456789"
AUTHORIZED = {"Authorization": f"Bearer {API_KEY}"}


def token(user: str) -> str:
    return auth_material.hs256({"sub": user, "exp": 2_000_000_000, "subs": ["*"], "pubs": ["*"]})


@pytest.fixture(scope="module")
def hosts(tmp_path_factory):
    """Two hosts on one Redis, for the whole module (the last test kills the Redis)."""
    if MISSING:
        pytest.skip(MISSING)
    tmp_path = tmp_path_factory.mktemp("server-api-hosts")
    redis_server = RedisServer(tmp_path / "redis")
    redis_server.start()
    secret = auth_material.write(tmp_path / "secret", auth_material.SECRET)
    api_key = auth_material.write(tmp_path / "api-key", API_KEY)
    flags = ["--cluster", redis_server.url, "--auth-secret-file", secret, "--api-key-file", api_key, *NO_PINGS]
    servers = [WsdProcess(tmp_path / f"host{index}", workers=WORKERS, flags=flags) for index in range(2)]
    try:
        for server in servers:
            server.start()
        wait_members(redis_server, 2 * WORKERS)
        yield servers, redis_server
    finally:
        for server in servers:
            server.kill()
        redis_server.kill()


def wait_members(redis_server, count: int, timeout: float = 15) -> None:
    """Every worker of both hosts is in the members set (they join as they start)."""
    deadline = time.monotonic() + timeout
    while True:
        members = redis_server.client().zrange("wsd:{#api}:members", 0, -1)
        if len(members) >= count:
            return
        assert time.monotonic() < deadline, members
        time.sleep(0.1)


def test_disconnect_on_one_host_closes_the_users_connections_on_every_host(hosts):
    (a, b), _ = hosts
    alice = clients_on_every_worker(a, WORKERS, token=token("alice")) + [Client(b, token=token("alice"))]
    bob = Client(b, token=token("bob"))
    assert bob.call(op="sub", ch="room")["op"] == "ok"
    status, body = api_json(a, "POST", "/api/disconnect", {"user": "alice"}, headers=AUTHORIZED)
    assert (status, body) == (200, {"disconnected": len(alice)})
    for client in alice:
        assert client.ws.recv_close_code() == 4000
    assert bob.call(op="ping")["op"] == "ok"
    assert api_json(b, "POST", "/api/disconnect", {"user": "nobody"}, headers=AUTHORIZED) == (
        200, {"disconnected": 0})  # fmt: skip
    assert a.ctl("disconnect", "bob").stdout.strip() == "1 connection(s) closed with 4000"  # wsd ctl too
    assert bob.ws.recv_close_code() == 4000
    # ctl status adds up the workers' status pages, each written on its own tick: wait for all of them.
    server_api = wait_for(lambda: (s := b.status()["cluster"]["server_api"])["requests_answered"] >= 2
                          and s["listening"] == WORKERS and s)  # fmt: skip
    assert (server_api["listening"], server_api["processes"], server_api["error"]) == (WORKERS, WORKERS, "")


def test_unsubscribe_and_channel_counts_cover_every_host(hosts):
    (a, b), _ = hosts
    carol = [Client(a, token=token("carol")), Client(b, token=token("carol"))]
    dave = [Client(b, token=token("dave")) for _ in range(2)]
    for client in (*carol, *dave):
        assert client.call(op="sub", ch="news")["op"] == "ok"
    assert carol[0].call(op="sub", ch="sport")["op"] == "ok"
    assert api_json(b, "GET", "/api/channels/news", headers=AUTHORIZED)[1]["subscribers"] == 4
    status, body = api_json(a, "GET", "/api/channels", headers=AUTHORIZED)
    assert (status, body) == (200, {"channels": [{"channel": "news", "subscribers": 4},
                                                 {"channel": "sport", "subscribers": 1}]})  # fmt: skip
    status, body = api_json(b, "POST", "/api/unsubscribe", {"user": "carol", "channel": "news"}, headers=AUTHORIZED)
    assert (status, body) == (200, {"unsubscribed": 2})
    for client in carol:
        assert client.message() == {"op": "unsub", "ch": "news"}
    status, body = api_json(a, "GET", "/api/channels/news", headers=AUTHORIZED)
    assert status == 200 and body["subscribers"] == 2, body
    for client in (*carol, *dave):
        client.close()


def test_a_frozen_host_is_named_within_the_timeout_and_the_other_still_acts(hosts):
    (a, b), _ = hosts
    here = Client(a, token=token("erin"))
    there = Client(b, token=token("erin"))
    pids = b.worker_pids()
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        status, body = api_json(a, "POST", "/api/disconnect", {"user": "erin"}, headers=AUTHORIZED)
        took = time.monotonic() - started
        assert status == 503 and body["disconnected"] == 1, body
        assert "worker(s) at bus slot(s) 0, 1 did not answer within 2 s" in body["error"], body
        assert took < 4.5, took  # the cluster timeout (2 s), not a hang
        assert here.ws.recv_close_code() == 4000
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    there.close()


def test_a_worker_that_died_is_not_waited_for_once_its_successor_joined(hosts):
    (a, b), redis_server = hosts
    redis = redis_server.client()
    node_id = b.status()["cluster"]["node_id"]

    def members_of_b() -> set[bytes]:
        return {m for m in redis.zrange("wsd:{#api}:members", 0, -1) if m.startswith(f"{node_id} ".encode())}

    before = members_of_b()
    assert len(before) == WORKERS, before
    os.kill(b.worker_pids()[0], signal.SIGKILL)
    # The supervisor respawns it on the same bus slot; joining, it drops its dead predecessor (which
    # would otherwise be expected, and named as not answering, until its entry expires in 10 s).
    wait_for(lambda: len(members_of_b() - before) == 1, timeout=20, what="the successor to join")
    assert len(members_of_b()) == WORKERS, members_of_b()
    status, body = api_json(a, "POST", "/api/disconnect", {"user": "nobody"}, headers=AUTHORIZED)
    assert (status, body) == (200, {"disconnected": 0})


def test_a_killed_server_api_connection_is_rebuilt_and_the_hosts_answer_again(hosts):
    (a, b), redis_server = hosts
    redis = redis_server.client()
    killed = [client["id"] for client in redis.client_list() if client["name"].endswith(":api")]
    assert len(killed) == 2 * WORKERS, redis.client_list()
    for client_id in killed:
        redis.client_kill_filter(_id=client_id)
    gina = Client(b, token=token("gina"))

    def disconnected() -> bool:
        return api_json(a, "POST", "/api/disconnect", {"user": "gina"}, headers=AUTHORIZED) == (
            200, {"disconnected": 1})  # fmt: skip

    wait_for(disconnected, timeout=10, every=0.2, what="the hosts answering again")
    assert gina.ws.recv_close_code() == 4000
    assert len([client for client in redis.client_list() if client["name"].endswith(":api")]) == 2 * WORKERS


def test_a_host_that_stops_leaves_the_members_set_at_once(hosts, tmp_path):
    (a, _), redis_server = hosts
    third = WsdProcess(tmp_path / "host2", workers=1, flags=a.flags)
    third.start()
    node_id = third.status()["cluster"]["node_id"]
    redis = redis_server.client()

    def members_of_third() -> list[bytes]:
        return [m for m in redis.zrange("wsd:{#api}:members", 0, -1) if m.startswith(f"{node_id} ".encode())]

    wait_for(lambda: len(members_of_third()) == 1, timeout=10, what="the third host to join")
    third.kill()  # a clean stop (SIGINT)
    assert members_of_third() == []
    assert api_json(a, "GET", "/api/channels", headers=AUTHORIZED)[0] == 200  # nobody expected who left


def test_with_redis_down_the_answer_is_this_hosts_and_says_the_others_were_not_asked(hosts):
    (a, b), redis_server = hosts
    here = [Client(a, token=token("frank")) for _ in range(2)]
    for client in here:
        assert client.call(op="sub", ch="live")["op"] == "ok"
    redis_server.kill()
    time.sleep(0.5)
    started = time.monotonic()
    status, body = api_json(a, "GET", "/api/channels", headers=AUTHORIZED)
    assert status == 503 and body["channels"] == [{"channel": "live", "subscribers": 2}], body
    assert "the other hosts could not be asked" in body["error"], body
    status, body = api_json(a, "POST", "/api/disconnect", {"user": "frank"}, headers=AUTHORIZED)
    assert status == 503 and body["disconnected"] == 2 and "could not be asked" in body["error"], body
    assert time.monotonic() - started < 10
    for client in here:
        assert client.ws.recv_close_code() == 4000
