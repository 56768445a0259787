"""The server API with auth on: connections carry their token's `sub`, so `/api/disconnect` and
`/api/unsubscribe` act on a user's connections on every worker; with an API key, `/metrics` and
the server API need it (`/readyz` does not)."""

from __future__ import annotations

import json

import pytest

from harness.wsd_process import WsdProcess
from tests import auth_material
from tests.operations.helpers import NO_PINGS, Client, api_json, clients_on_every_worker, http, scrape, wait_for

WORKERS = 2
API_KEY = "api-key-for-operations-0123456789"
AUTHORIZED = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    directory = tmp_path_factory.mktemp("server-api-users")
    secret = auth_material.write(directory / "secret", auth_material.SECRET)
    api_key = auth_material.write(directory / "api-key", API_KEY)
    wsd = WsdProcess(directory / "wsd", workers=WORKERS,
                     flags=["--auth-secret-file", secret, "--api-key-file", api_key, *NO_PINGS])  # fmt: skip
    wsd.start()
    yield wsd
    wsd.kill()


def token(user: str) -> str:
    return auth_material.hs256({"sub": user, "exp": 2_000_000_000, "subs": ["*"], "pubs": ["*"]})


def test_disconnect_closes_every_connection_of_the_user_on_every_worker_with_4000(server):
    alice = clients_on_every_worker(server, WORKERS, per_worker=2, token=token("alice"))
    bob = Client(server, token=token("bob"))
    assert bob.call(op="sub", ch="room")["op"] == "ok"
    assert {client.worker for client in alice} == set(range(WORKERS))
    status, body = api_json(server, "POST", "/api/disconnect", {"user": "alice"}, headers=AUTHORIZED)
    assert (status, body) == (200, {"disconnected": len(alice)})
    for client in alice:
        assert client.ws.recv_close_code() == 4000
    assert bob.call(op="sub", ch="room")["op"] == "ok"  # bob is still there
    assert api_json(server, "POST", "/api/disconnect", {"user": "nobody"}, headers=AUTHORIZED) == (
        200, {"disconnected": 0})  # fmt: skip
    wait_for(lambda: scrape(server, AUTHORIZED).value("wsd_disconnects_total", code="4000") >= len(alice))
    bob_again = Client(server, token=token("bob"))
    assert server.ctl("disconnect", "bob").stdout.strip() == "2 connection(s) closed with 4000"
    assert bob.ws.recv_close_code() == 4000 and bob_again.ws.recv_close_code() == 4000


def test_unsubscribe_ends_the_users_subscription_on_every_worker(server):
    carol = clients_on_every_worker(server, WORKERS, per_worker=1, token=token("carol"))
    dave = Client(server, token=token("dave"))
    for client in (*carol, dave):
        assert client.call(op="sub", ch="news")["op"] == "ok"
    status, body = api_json(server, "POST", "/api/unsubscribe", {"user": "carol", "channel": "news"},
                            headers=AUTHORIZED)  # fmt: skip
    assert (status, body) == (200, {"unsubscribed": len(carol)})
    for client in carol:
        assert client.message() == {"op": "unsub", "ch": "news"}
    assert api_json(server, "GET", "/api/channels/news", headers=AUTHORIZED)[1]["subscribers"] == 1  # dave
    status, _, _ = http(f"{server.api_url}/api/publish", json.dumps({"channel": "news", "data": 1}).encode(),
                        {"Content-Type": "application/json", **AUTHORIZED})  # fmt: skip
    assert status == 200
    assert dave.message()["data"] == 1
    for client in carol:  # no more messages of news: the next frame is the reply to this ping
        assert client.call(op="ping")["op"] == "ok" and client.messages == []
    assert server.ctl("unsubscribe", "dave", "news").stdout.strip() == "1 subscription(s) ended"
    for client in (*carol, dave):
        client.close()


def test_metrics_and_the_server_api_need_the_api_key_and_readyz_does_not(server):
    for path in ("/metrics", "/api/channels", "/api/channels/news"):
        status, headers, _ = http(f"{server.api_url}{path}")
        assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer"), path
        assert http(f"{server.api_url}{path}", headers=AUTHORIZED)[0] == 200, path
    status, _, _ = http(f"{server.api_url}/api/disconnect", b'{"user": "x"}', {"Content-Type": "application/json"})
    assert status == 401
    assert http(f"{server.api_url}/readyz")[0] == 200
    assert http(f"http://127.0.0.1:{server.port}/readyz")[0] == 200
