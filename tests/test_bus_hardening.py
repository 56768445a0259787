"""The shared-memory bus under hostile or unlucky conditions, driven from outside a real `wsd serve`
(issue 9): sizes checked at publish time, a full channel table, crashes of the sequencing worker,
the shared memory itself, history honesty."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

from websockets.sync.client import connect


def post(url: str, body: bytes, timeout: float = 10) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_a_publish_too_large_for_the_ring_is_refused_at_once_and_the_bus_keeps_working(wsd_factory):
    # A 64 KiB ring carries entries of at most 16,376 bytes: 16,330 bytes of data fit as a publish
    # request (34-byte header) but not as the message (52-byte header) the owner would write.
    wsd = wsd_factory("--ring-size", "65536", "--max-message-size", "15000", workers=2)
    channels = [f"big{n}" for n in range(8)]
    with connect(wsd.url) as ws:
        for n, channel in enumerate(channels):
            ws.send(json.dumps({"op": "sub", "ch": channel, "id": n}))
            assert json.loads(ws.recv())["op"] == "ok"
        data = "x" * 16_328
        for channel in channels:
            started = time.monotonic()
            status, body = post(f"{wsd.api_url}/api/publish", json.dumps({"channel": channel, "data": data}).encode())
            assert status == 413, body
            assert "bytes" in body["error"]
            assert time.monotonic() - started < 2
        for channel in channels:
            assert wsd.publish(channel, {"ok": channel}) == 1
        got = sorted((m["ch"], m["off"]) for m in (json.loads(ws.recv(timeout=5)) for _ in channels))
        assert got == sorted((channel, 1) for channel in channels)
    workers = wsd.status()["workers"]
    assert all(w["bad_records"] == 0 for w in workers)
