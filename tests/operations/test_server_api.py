"""The server API on the API port of a real server, and `wsd ctl`'s commands for it: counts for the
whole server (every worker is asked over the intercom sockets), clear errors for bad requests, and
with auth off (connections without a user) a 400 for what needs users."""

from __future__ import annotations

import json
import os
import signal
import stat
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from harness.wsd_process import WsdProcess
from tests.operations.helpers import NO_PINGS, api_json, clients_on_every_worker, http, wait_for

WORKERS = 2


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    wsd = WsdProcess(tmp_path_factory.mktemp("server-api"), workers=WORKERS, flags=NO_PINGS)
    wsd.start()
    yield wsd
    wsd.kill()


@pytest.fixture
def subscribers(server):
    """`room` has subscribers on every worker (two on worker 0), `solo` one on worker 1."""
    clients = sorted(clients_on_every_worker(server, WORKERS, per_worker=2), key=lambda c: c.worker)
    w0, w0b, w1, w1b = clients
    for client in (w0, w0b, w1):
        assert client.call(op="sub", ch="room")["op"] == "ok"
    w1b.call(op="sub", ch="solo")
    yield clients
    for client in clients:
        client.close()


def test_channels_counts_the_subscribers_of_every_worker(server, subscribers):
    status, body = api_json(server, "GET", "/api/channels")
    assert status == 200, body
    assert body == {"channels": [{"channel": "room", "subscribers": 3}, {"channel": "solo", "subscribers": 1}]}
    table = server.ctl("channels").stdout.split("\n")
    assert table[0].split() == ["CHANNEL", "SUBSCRIBERS"] and table[1].split() == ["room", "3"]
    assert json.loads(server.ctl("--json", "channels").stdout) == body


def test_one_channel_has_its_subscribers_offset_and_epoch(server, subscribers):
    epoch = subscribers[0].call(op="sub", ch="room")["epoch"]  # again: its position
    server.publish("room", 1)
    offset = server.publish("room", 2)
    status, body = api_json(server, "GET", "/api/channels/room")
    assert (status, body) == (200, {"channel": "room", "subscribers": 3, "offset": offset, "epoch": epoch})
    assert json.loads(server.ctl("--json", "channels", "room").stdout) == body
    assert server.ctl("channels", "room").stdout.strip() == f"room: 3 subscriber(s), offset {offset}, epoch {epoch}"
    status, nobody = api_json(server, "GET", "/api/channels/never-used")
    assert status == 200 and nobody["subscribers"] == 0 and nobody["offset"] == 0 and nobody["epoch"] > 0
    status, body = api_json(server, "GET", "/api/channels/bad%20name")
    assert status == 400 and "channel name must be" in body["error"] and "' ' at position 3" in body["error"]


def test_counts_follow_unsubscribes_and_closes(server, subscribers):
    subscribers[2].call(op="unsub", ch="room")
    subscribers[3].close()
    wait_for(lambda: api_json(server, "GET", "/api/channels")[1]
             == {"channels": [{"channel": "room", "subscribers": 2}]})  # fmt: skip


def test_disconnect_and_unsubscribe_by_user_need_auth(server, subscribers):
    for path, payload in (("/api/disconnect", {"user": "u1"}), ("/api/unsubscribe", {"user": "u1", "channel": "room"})):
        status, body = api_json(server, "POST", path, payload)
        assert status == 400
        assert body["error"].startswith("connections have no user while auth is off"), body
    result = server.ctl("disconnect", "u1", check=False)
    assert result.returncode == 1 and "connections have no user while auth is off" in result.stderr
    result = server.ctl("unsubscribe", "u1", "room", check=False)
    assert result.returncode == 1 and "auth is off" in result.stderr
    for client in subscribers:  # nobody was disconnected
        assert client.call(op="sub", ch="room")["op"] == "ok"


@pytest.mark.parametrize(
    "path, body, error",
    [
        ("/api/disconnect", b"", "request body is empty"),
        ("/api/disconnect", b"{nope", "request body is not valid JSON"),
        ("/api/disconnect", b"[]", "request body must be a JSON object"),
        ("/api/disconnect", b'{"user": "u", "why": 1}', "unknown field(s) ['why']"),
        ("/api/disconnect", b'{"user": 7}', '"user" must be a non-empty string'),
        ("/api/unsubscribe", b'{"user": "u"}', "missing field(s) ['channel']"),
        ("/api/unsubscribe", b'{"user": "u", "channel": "no spaces"}', "channel name must be"),
    ],
)
def test_bad_requests_get_a_clear_400(server, path, body, error):
    status, _, answer = http(f"{server.api_url}{path}", body, {"Content-Type": "application/json"})
    assert status == 400 and error in json.loads(answer)["error"], answer


def test_methods_and_content_types_are_checked(server):
    status, headers, answer = http(f"{server.api_url}/api/disconnect")  # GET
    assert status == 405 and headers["Allow"] == "POST"
    status, _, answer = http(f"{server.api_url}/api/disconnect", b'{"user": "u"}', {"Content-Type": "text/plain"})
    assert status == 415
    status, _, answer = http(f"{server.api_url}/api/channels", b"{}", {"Content-Type": "application/json"})
    assert status == 405
    status, _, answer = http(f"{server.api_url}/api/nothing-here")
    assert status == 404 and "/api/channels" in json.loads(answer)["error"]


def test_the_intercom_sockets_are_private(server):
    prefix = f"wsd-{server.status()['supervisor']['pid']}"
    directory = next(p for p in os.listdir("/tmp") if p.startswith(prefix))
    path = os.path.join("/tmp", directory)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o700
    sockets = sorted(os.listdir(path))
    assert sockets == [f"worker-{b}.sock" for b in range(WORKERS)]
    for name in sockets:
        assert stat.S_IMODE(os.stat(os.path.join(path, name)).st_mode) == 0o600


def test_a_frozen_worker_is_named_and_the_others_counted(server, subscribers):
    pid = next(w["pid"] for w in server.status()["workers"] if w["slot"] == 1)
    os.kill(pid, signal.SIGSTOP)
    try:

        def ask() -> tuple[float, int, dict] | None:
            started = time.monotonic()
            try:
                status, body = api_json(server, "GET", "/api/channels/room", timeout=7)
            except OSError:  # this connection landed on the frozen worker itself
                return None
            return time.monotonic() - started, status, body

        # Ten connections at once: the kernel puts about half of them on worker 0, which answers.
        with ThreadPoolExecutor(10) as pool:
            answers = [answer for answer in pool.map(lambda _: ask(), range(10)) if answer is not None]
        assert answers, "no connection reached worker 0"
        for took, status, body in answers:
            assert status == 503, body
            assert body["error"].startswith("worker 1 (bus slot 1) did not answer: no answer within 3 s"), body
            assert body["subscribers"] == 2  # what worker 0 has
            assert 3 <= took < 7  # the peer's timeout, not longer
        # `wsd ctl` asks the first serving worker (slot 0) to gather: the same error.
        result = server.ctl("channels", "room", check=False)
        assert result.returncode == 1 and "worker 1 (bus slot 1) did not answer" in result.stderr
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for(lambda: api_json(server, "GET", "/api/channels/room")[1]["subscribers"] == 3, timeout=10)
