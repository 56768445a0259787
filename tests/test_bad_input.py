"""Bad input gets a clear answer and disturbs nobody else: every case runs while a watcher client
keeps receiving a stream, and the watcher must end with the complete, ordered stream."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import orjson
import pytest
from websockets.asyncio.client import connect

from tests.raw_ws import RawWebSocket


class Watcher:
    """A well-behaved client subscribed to `watch`, receiving a message every 20 ms."""

    def __init__(self, wsd):
        self.wsd = wsd
        self.offsets: list[int] = []
        self.published = 0
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self.thread.start()
        assert self.ready.wait(10)

    async def _run(self) -> None:
        async with connect(self.wsd.url) as ws:
            await ws.send(json.dumps({"op": "sub", "ch": "watch", "id": 1}))
            self.start = json.loads(await ws.recv())["off"]
            self.ready.set()
            reader = asyncio.create_task(self._read(ws))
            while not self.stop.is_set():
                await asyncio.to_thread(self.wsd.publish, "watch", {"n": self.published})
                self.published += 1
                await asyncio.sleep(0.02)
            deadline = time.monotonic() + 10
            while len(self.offsets) < self.published and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            reader.cancel()

    async def _read(self, ws) -> None:
        async for raw in ws:
            self.offsets.append(json.loads(raw)["off"])

    def finish(self) -> None:
        deadline = time.monotonic() + 10
        while self.published < 10 and time.monotonic() < deadline:
            time.sleep(0.02)  # the stream must overlap the bad client's activity
        self.stop.set()
        self.thread.join(20)
        expected = list(range(self.start + 1, self.start + 1 + self.published))
        assert self.published > 5
        assert self.offsets == expected, "the watcher lost or reordered messages"


@pytest.fixture
def wsd_with_watcher(wsd_factory):
    wsd = wsd_factory("--max-message-size", "4096", "--write-buffer-limit", "262144", workers=2)
    watcher = Watcher(wsd)
    yield wsd
    watcher.finish()
    status = wsd.status()
    assert all(w["restarts"] == 0 for w in status["workers"]), "a worker crashed"


ERROR_CASES = [
    (b"{not json", "bad_json"),
    (b"[1, 2]", "bad_request"),
    (b'"just a string"', "bad_request"),
    (b'{"op": "sub", "id": 3}', "bad_request"),
    (b'{"op": "dance", "ch": "a", "id": 4}', "unknown_op"),
    (b'{"ch": "a", "id": 5}', "bad_request"),
    (b'{"op": "pub", "ch": "a", "id": 6}', "bad_request"),
    (b'{"op": "sub", "ch": "", "id": 7}', "bad_channel"),
    (b'{"op": "sub", "ch": "has space", "id": 8}', "bad_channel"),
    (b'{"op": "sub", "ch": "' + b"x" * 129 + b'", "id": 9}', "bad_channel"),
    (b'{"op": "sub", "ch": 42, "id": 10}', "bad_channel"),
    (b'{"op": "sub", "ch": "caf\xc3\xa9", "id": 11}', "bad_channel"),
    (b'{"op": "sub", "ch": "a", "since": 5, "id": 12}', "bad_since"),
    # Nesting past 64 levels, and integers outside 64 bits: refused, never changed (issue 9, item 3).
    (b'{"op": "pub", "ch": "a", "id": 13, "data": ' + b"[" * 300 + b"]" * 300 + b"}", "bad_request"),
    (b'{"op": "pub", "ch": "a", "id": 14, "data": ' + b"[" * 65 + b"]" * 65 + b"}", "bad_request"),
    (b'{"op": "pub", "ch": "a", "id": 15, "data": {"n": 123456789012345678901234567890}}', "bad_request"),
    (b'{"op": "pub", "ch": "a", "id": 16, "data": -9223372036854775809}', "bad_request"),
    # An op nested 1,000 deep: within orjson's limit, past the interpreter's for str() (found by fuzzing).
    (b'{"op": ' + b"[" * 1000 + b"]" * 1000 + b', "ch": "a", "id": 17}', "unknown_op"),
    (b'{"op": "sub", "ch": "a", "x": ' + b"[" * 1100 + b"]" * 1100 + b"}", "bad_request"),  # past orjson's own
]


def test_malformed_requests_get_err_replies_and_the_connection_stays_open(wsd_with_watcher):
    wsd = wsd_with_watcher
    client = RawWebSocket("127.0.0.1", wsd.port)
    for payload, code in ERROR_CASES:
        client.send_text(payload)
        opcode, reply = client.recv_frame()
        message = json.loads(reply)
        assert opcode == 0x1 and message["op"] == "err", (payload, message)
        assert message["code"] == code, (payload, message)
        assert message["msg"], "an error says what was wrong"
        if b'"id"' in payload and payload.startswith(b"{"):
            assert message["id"] == orjson.loads(payload)["id"]  # (the standard library stops at ~1,000 levels)
    # Still open and working.
    client.send_text(json.dumps({"op": "sub", "ch": "after-errors", "id": 99}))
    assert json.loads(client.recv_frame()[1])["op"] == "ok"
    client.close()


@pytest.mark.parametrize(
    "send, expected_code",
    [
        (lambda c: c.send_text(b"x" * 5000), 1009),
        (lambda c: (c.send_frame(0x1, b"x" * 3000, fin=False), c.send_frame(0x0, b"y" * 3000)), 1009),
        (lambda c: c.send_frame(0x2, b"\x00\x01binary"), 1003),
        (lambda c: c.send_frame(0x1, b'{"op":"sub","ch":"\xff\xfe"}'), 1007),
        (lambda c: c.send_frame(0x3, b"reserved opcode"), 1002),
        (lambda c: c.send_frame(0x1, b"{}", rsv=0b100), 1002),
        (lambda c: c.send_frame(0x0, b"continuation without a start"), 1002),
        (lambda c: c.send_frame(0x9, b"p" * 126), 1002),
        (lambda c: c.send_frame(0x8, b"\x03\xe7"), 1002),  # close code 999 is invalid
    ],
    ids=["oversized", "oversized-fragmented", "binary", "invalid-utf8", "reserved-opcode", "rsv-bit",
         "stray-continuation", "oversized-ping", "bad-close-code"],
)
def test_protocol_violations_close_with_the_right_code(wsd_with_watcher, send, expected_code):
    wsd = wsd_with_watcher
    client = RawWebSocket("127.0.0.1", wsd.port)
    send(client)
    assert client.recv_close_code() == expected_code
    client.close()


def test_peer_close_is_answered_with_its_code(wsd_with_watcher):
    client = RawWebSocket("127.0.0.1", wsd_with_watcher.port)
    client.send_frame(0x8, (1000).to_bytes(2, "big") + b"bye")
    assert client.recv_close_code() == 1000
    client.close()


def test_slow_reader_is_cut_off_with_1013_and_counted(wsd_with_watcher):
    wsd = wsd_with_watcher
    slow = RawWebSocket("127.0.0.1", wsd.port, rcvbuf=4096)
    slow.send_text(json.dumps({"op": "sub", "ch": "firehose", "id": 1}))
    assert json.loads(slow.recv_frame()[1])["op"] == "ok"
    before = wsd.status()["totals"]["slow_disconnects"]
    blob = "z" * 3000
    # Publish far more than the 256 KiB write-buffer limit plus the kernel buffers, never reading.
    import urllib.request

    body = json.dumps([{"channel": "firehose", "data": blob}] * 250).encode()
    for _ in range(8):
        request = urllib.request.Request(
            f"{wsd.api_url}/api/publish_batch", data=body, headers={"Content-Type": "application/json"}
        )
        urllib.request.urlopen(request, timeout=10).read()
    deadline = time.monotonic() + 10
    while wsd.status()["totals"]["slow_disconnects"] == before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert wsd.status()["totals"]["slow_disconnects"] == before + 1
    # Now read: the data already queued, then the 1013 close.
    assert slow.recv_close_code() == 1013
    slow.close()


def test_data_within_the_json_limits_is_published_and_delivered(wsd_with_watcher):
    wsd = wsd_with_watcher
    client = RawWebSocket("127.0.0.1", wsd.port)
    client.send_text(json.dumps({"op": "sub", "ch": "limits", "id": 1}))
    assert json.loads(client.recv_frame()[1])["op"] == "ok"
    nested: object = "leaf"
    for _ in range(50):  # 50 levels are fine
        nested = [nested]
    cases = [nested, 2**64 - 1, -(2**63), {"big": 1e15}]
    for n, data in enumerate(cases):
        client.send_text(json.dumps({"op": "pub", "ch": "limits", "id": 10 + n, "data": data}))
    got = [json.loads(client.recv_frame()[1]) for _ in range(2 * len(cases))]
    assert [m["op"] for m in got if m.get("id") is not None] == ["ok"] * len(cases), got
    assert [m["data"] for m in got if m["op"] == "msg"] == cases
    client.close()
