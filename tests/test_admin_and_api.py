"""The admin socket (`wsd ctl`) and the publish API against a running server, as scripts use them."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import time
import urllib.error
import urllib.request

from websockets.asyncio.client import connect

from harness.wsd_process import WSD


def _post(wsd, path: str, body: bytes, content_type: str = "application/json") -> tuple[int, dict]:
    request = urllib.request.Request(f"{wsd.api_url}{path}", data=body, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_status_table_and_json(wsd_factory):
    wsd = wsd_factory(workers=2)
    table = wsd.ctl("status").stdout
    assert "running" in table and "total" in table
    status = wsd.status()
    assert len(status["workers"]) == 2
    for worker in status["workers"]:
        for key in ("pid", "connections", "channels", "rss_bytes", "cpu_percent", "msgs_in", "msgs_out", "bus_lag",
                    "overruns", "slow_disconnects"):
            assert key in worker, key
        assert worker["rss_bytes"] > 0
    assert status["totals"]["connections"] == 0
    mode = stat.S_IMODE(os.stat(wsd.admin_socket).st_mode)
    assert mode == 0o600


def test_status_counts_connections_channels_and_messages(wsd_factory):
    wsd = wsd_factory(workers=2)

    async def scenario():
        clients = [await connect(wsd.url) for _ in range(6)]
        for i, ws in enumerate(clients):
            await ws.send(json.dumps({"op": "sub", "ch": f"c{i % 3}", "id": 1}))
            await ws.recv()
        for i in range(3):
            wsd.publish(f"c{i}", i)
        for ws in clients:
            await ws.recv()
        await asyncio.sleep(0.7)
        totals = wsd.status()["totals"]
        assert totals["connections"] == 6
        assert 3 <= totals["channels"] <= 6  # a channel counts once per worker that has subscribers
        assert totals["msgs_out"] == 6
        for ws in clients:
            await ws.close()

    asyncio.run(scenario())


def test_ctl_publish_reaches_subscribers(wsd_factory):
    wsd = wsd_factory(workers=2)

    async def scenario():
        async with connect(wsd.url) as ws:
            await ws.send(json.dumps({"op": "sub", "ch": "news", "id": 1}))
            await ws.recv()
            result = await asyncio.to_thread(wsd.ctl, "publish", "news", '{"headline": "hi"}')
            assert "published to news at offset 1" in result.stdout
            assert json.loads(await ws.recv()) == {"op": "msg", "ch": "news", "off": 1, "data": {"headline": "hi"}}
            result = await asyncio.to_thread(wsd.ctl, "--json", "publish", "news", "2")
            assert json.loads(result.stdout)["offset"] == 2

    asyncio.run(scenario())


def test_ctl_errors_are_clear_and_nonzero(wsd_factory, tmp_path):
    wsd = wsd_factory(workers=1)
    bad_json = wsd.ctl("publish", "news", "{nope", check=False)
    assert bad_json.returncode != 0 and "JSON" in bad_json.stderr
    bad_channel = wsd.ctl("publish", "bad channel", "1", check=False)
    assert bad_channel.returncode != 0 and "channel name" in bad_channel.stderr
    unknown = subprocess.run(WSD + ["ctl", "--admin-socket", wsd.admin_socket, "frobnicate"],
                             capture_output=True, text=True)
    assert unknown.returncode != 0 and "frobnicate" in unknown.stderr
    missing = subprocess.run(WSD + ["ctl", "--admin-socket", str(tmp_path / "nope.sock"), "status"],
                             capture_output=True, text=True)
    assert missing.returncode != 0 and "cannot reach wsd" in missing.stderr


def test_publish_api_single_and_batch(wsd_factory):
    wsd = wsd_factory(workers=2)

    async def scenario():
        async with connect(wsd.url) as ws:
            for i, channel in enumerate(("x", "y")):
                await ws.send(json.dumps({"op": "sub", "ch": channel, "id": i}))
                await ws.recv()
            status, body = await asyncio.to_thread(_post, wsd, "/api/publish", b'{"channel": "x", "data": [1]}')
            assert (status, body) == (200, {"offset": 1})
            batch = json.dumps([{"channel": "y", "data": n} for n in range(5)] + [{"channel": "x", "data": "z"}])
            status, body = await asyncio.to_thread(_post, wsd, "/api/publish_batch", batch.encode())
            assert status == 200 and body == {"offsets": [1, 2, 3, 4, 5, 2]}
            got = [json.loads(await ws.recv()) for _ in range(7)]
            assert [(m["ch"], m["off"]) for m in got if m["ch"] == "y"] == [("y", n) for n in range(1, 6)]
            assert [m["data"] for m in got if m["ch"] == "x"] == [[1], "z"]

    asyncio.run(scenario())


def test_publish_api_errors_are_json(wsd_factory):
    wsd = wsd_factory(workers=1)
    for path, body, expected in [
        ("/api/publish", b"{not json", 400),
        ("/api/publish", b'{"channel": "a b", "data": 1}', 400),
        ("/api/publish", b'{"data": 1}', 400),
        ("/api/publish_batch", b"[]", 400),
        ("/api/nothing", b"{}", 404),
    ]:
        status, payload = _post(wsd, path, body)
        assert status == expected, (path, body, status, payload)
        assert isinstance(payload["error"], str) and payload["error"]
    status, payload = _post(wsd, "/api/publish", b'{"channel":"a","data":1}', content_type="text/html")
    assert status == 415 and payload["error"]


def test_healthz_and_demo_page(wsd_factory):
    wsd = wsd_factory(workers=1)
    assert wsd.http_get("/healthz") == (200, b"ok")
    status, body = wsd.http_get("/")
    assert status == 200 and b"<html" in body.lower()
    assert wsd.http_get("/no-such-page")[0] == 404


def _http_on(sock, path: str) -> int:
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed")
        head += chunk
    return int(head.split(b" ", 2)[1])


def test_api_connections_are_capped_and_idle_ones_closed(wsd_factory):
    import socket

    wsd = wsd_factory("--api-max-connections", "2", "--api-idle-timeout", "1", workers=2)  # 1 per worker
    held, statuses = [], []
    for _ in range(6):
        sock = socket.create_connection(("127.0.0.1", wsd.api_port), timeout=5)
        statuses.append(_http_on(sock, "/healthz"))
        held.append(sock)
    assert 1 <= statuses.count(200) <= 2 and statuses.count(503) >= 4, statuses
    for sock in held:
        sock.close()
    sock = socket.create_connection(("127.0.0.1", wsd.api_port), timeout=5)
    assert _http_on(sock, "/healthz") in (200, 503)
    sock.settimeout(5)
    started = time.monotonic()
    assert sock.recv(1) == b""  # the idle keep-alive connection is closed by the server
    assert time.monotonic() - started < 4
    sock.close()
