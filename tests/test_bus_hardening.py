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
    assert all(w["bad_entries"] == 0 for w in workers)


def test_status_shows_each_rings_history_horizon_and_warns_when_it_is_below_the_ttl(wsd_factory):
    wsd = wsd_factory("--ring-size", "65536", "--max-message-size", "15000", "--history-ttl", "300", workers=2)
    status = wsd.status()
    for worker in status["workers"]:
        assert worker["history_horizon_s"] is None  # nothing written yet
        assert worker["table_size"] == 65536 and worker["table_used"] == 0
    # 300 KB through two 64 KiB rings: each laps several times within a second (a request body is
    # at most one ring entry, 16 KiB here: batches of 12).
    for first in range(0, 300, 12):
        batch = [{"channel": f"lap{n % 16}", "data": "y" * 1000} for n in range(first, first + 12)]
        status_code, body = post(f"{wsd.api_url}/api/publish_batch", json.dumps(batch).encode())
        assert status_code == 200, body
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        workers = wsd.status()["workers"]
        if "less than --history-ttl" in wsd.read_log() and all(w["history_horizon_s"] is not None for w in workers):
            break
        time.sleep(0.2)
    assert "less than --history-ttl" in wsd.read_log()
    for worker in workers:
        assert 0 <= worker["history_horizon_s"] < 300
        assert 0 <= worker["table_used"] <= 16
    assert sum(w["table_used"] for w in workers) == 16
    text = wsd.ctl("status").stdout
    assert "HISTORY" in text and "TABLE" in text
