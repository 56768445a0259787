"""Connections that misbehave or die are bounded, and healthy ones are left alone (issue 9, items 4,
5, 12, 15, 16): bursts, clients that stop reading, half-open links, limits that never leave a
handshake hanging."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
import time
import urllib.request

from websockets.asyncio.client import connect

from tests.raw_ws import RawWebSocket

HANDSHAKE = (
    "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def _publish_batch(wsd, channel: str, items: list) -> list[int]:
    body = json.dumps([{"channel": channel, "data": item} for item in items]).encode()
    request = urllib.request.Request(
        f"{wsd.api_url}/api/publish_batch", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())["offsets"]


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"not true after {timeout}s: {what}")


def _mask(payload: bytes) -> bytes:
    key = os.urandom(4)
    return key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


async def _raw_subscriber(port: int, channel: str):
    """A minimal client that subscribes, then only drains bytes (no parsing: as fast as reading)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(HANDSHAKE.format(key=base64.b64encode(os.urandom(16)).decode()).encode())
    await reader.readuntil(b"\r\n\r\n")
    request = json.dumps({"op": "sub", "ch": channel, "id": 1}).encode()
    writer.write(struct.pack("!BB", 0x81, 0x80 | len(request)) + _mask(request))
    return reader, writer


def test_a_burst_cuts_off_no_healthy_reader_but_a_reader_that_never_reads_is_cut_off(wsd_factory):
    # The default --slow-reader-timeout 5 and --write-buffer-limit 1 MiB. The readers only drain
    # bytes (they answer no ping): keepalive must not close them during the test.
    wsd = wsd_factory("--ping-interval", "600", workers=2)
    before = wsd.status()["totals"]["slow_disconnects"]
    stuck = RawWebSocket("127.0.0.1", wsd.port, rcvbuf=4096)
    for request_id, channel in enumerate(("burst", "stuck-only")):
        stuck.send_text(json.dumps({"op": "sub", "ch": channel, "id": request_id}))
        assert json.loads(stuck.recv_frame()[1])["op"] == "ok"

    async def scenario():
        readers = [await _raw_subscriber(wsd.port, "burst") for _ in range(300)]
        received = [0] * len(readers)
        closed = []

        async def drain(index, reader):
            last = b""
            while chunk := await reader.read(1 << 20):
                received[index] += len(chunk)
                last = chunk[-40:]
            closed.append((index, received[index], last))

        draining = [asyncio.create_task(drain(i, r)) for i, (r, _) in enumerate(readers)]
        await asyncio.sleep(1.0)  # every subscription is in place
        blob = "k" * 1000
        for batch in range(3):  # three batches of 1,000 x 1 KB in a row
            await asyncio.to_thread(_publish_batch, wsd, "burst", [{"b": batch, "blob": blob}] * 1000)
        expected = 3000 * 1000
        deadline = time.monotonic() + 30
        while min(received) < expected and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        # The burst may all fit the kernel's buffers of the stuck reader: keep feeding it alone
        # until it is over the limit for the slow-reader timeout.
        deadline = time.monotonic() + 20
        while wsd.status()["totals"]["slow_disconnects"] == before and time.monotonic() < deadline:
            await asyncio.to_thread(_publish_batch, wsd, "stuck-only", [blob] * 200)
            await asyncio.sleep(0.5)
        assert closed == [], f"{len(closed)} healthy readers were disconnected"
        assert min(received) >= expected
        for task in draining:
            task.cancel()
        for _, writer in readers:
            writer.close()

    asyncio.run(scenario())
    assert wsd.status()["totals"]["slow_disconnects"] == before + 1  # the stuck reader, and only it
    assert stuck.recv_close_code() == 1013


def test_a_client_that_stops_reading_and_then_closes_is_let_go(wsd_factory):
    # A limit so high that the slow-reader cut-off does not act first: the close must bound it.
    wsd = wsd_factory("--write-buffer-limit", str(256 << 20), "--slow-reader-timeout", "600", workers=1)
    client = RawWebSocket("127.0.0.1", wsd.port, rcvbuf=4096)
    client.send_text(json.dumps({"op": "sub", "ch": "pile", "id": 1}))
    assert json.loads(client.recv_frame()[1])["op"] == "ok"
    _publish_batch(wsd, "pile", ["p" * 2000] * 1000)  # 2 MB it will never read
    client.send_frame(0x8, struct.pack("!H", 1000))  # then a close frame, still not reading
    # Its subscriptions go at once: later messages pile up nowhere.
    _wait_for(lambda: wsd.status()["totals"]["channels"] == 0, 3, "its subscriptions to be dropped")
    started = time.monotonic()
    _wait_for(lambda: wsd.status()["totals"]["connections"] == 0, 10, "the closing connection to be let go")
    assert time.monotonic() - started < 8
    client.close()


def test_a_peer_that_does_not_answer_pings_is_closed_with_1011(wsd_factory):
    wsd = wsd_factory("--ping-interval", "1", "--ping-timeout", "0.5", workers=1)
    silent = RawWebSocket("127.0.0.1", wsd.port)  # never answers a ping
    started = time.monotonic()
    opcodes = []
    while True:
        opcode, payload = silent.recv_frame()
        opcodes.append(opcode)
        if opcode == 0x8:
            break
    assert 0x9 in opcodes, "it was pinged first"
    assert struct.unpack("!H", payload[:2])[0] == 1011 and payload[2:] == b"ping timeout"
    assert time.monotonic() - started < 4

    async def answering():  # websockets answers pings: it stays, over several intervals
        async with connect(wsd.url) as ws:
            await ws.send(json.dumps({"op": "sub", "ch": "alive", "id": 1}))
            await ws.recv()
            await asyncio.sleep(4)
            await asyncio.to_thread(wsd.publish, "alive", "still here")
            return json.loads(await asyncio.wait_for(ws.recv(), 5))["data"]

    assert asyncio.run(answering()) == "still here"


def test_ping_op_and_a_repeated_resume_replays_nothing_twice(wsd_factory):
    wsd = wsd_factory(workers=2)
    client = RawWebSocket("127.0.0.1", wsd.port)
    client.send_text(json.dumps({"op": "ping", "id": 7}))
    assert json.loads(client.recv_frame()[1]) == {"op": "ok", "id": 7}
    client.send_text(json.dumps({"op": "sub", "ch": "again", "id": 1}))
    first = json.loads(client.recv_frame()[1])
    for n in range(3):
        wsd.publish("again", n)
    got = [json.loads(client.recv_frame()[1])["off"] for _ in range(3)]
    assert got == [first["off"] + 1, first["off"] + 2, first["off"] + 3]
    since = {"off": first["off"], "epoch": first["epoch"]}
    for request_id in range(2, 12):  # a client repeating its resume must not get history again
        client.send_text(json.dumps({"op": "sub", "ch": "again", "id": request_id, "since": since}))
        reply = json.loads(client.recv_frame()[1])
        assert reply["op"] == "ok" and reply["id"] == request_id and reply["recovered"] is True
    wsd.publish("again", "next")
    assert json.loads(client.recv_frame()[1])["data"] == "next"  # nothing replayed in between


def test_at_the_connection_limit_handshakes_are_answered_not_left_hanging(wsd_factory):
    wsd = wsd_factory("--max-connections", "4", workers=2)
    held, answers = [], []
    for _ in range(12):
        sock = socket.create_connection(("127.0.0.1", wsd.port), timeout=3)
        sock.sendall(HANDSHAKE.format(key=base64.b64encode(os.urandom(16)).decode()).encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)  # a hang raises TimeoutError after 3 s
            assert chunk, "closed without an answer"
            head += chunk
        status = int(head.split(b" ", 2)[1])
        answers.append(status)
        if status == 101:
            held.append(sock)
        else:
            assert status == 503 and b"Retry-After" in head and b"server full" in head
            sock.close()
    assert set(answers) == {101, 503} and answers.count(101) <= 4, answers
    for sock in held:
        sock.close()


def test_a_worker_holds_at_most_max_worker_subscriptions(wsd_factory):
    wsd = wsd_factory("--max-worker-subscriptions", "3", workers=1)
    client = RawWebSocket("127.0.0.1", wsd.port)
    for n in range(3):
        client.send_text(json.dumps({"op": "sub", "ch": f"c{n}", "id": n}))
        assert json.loads(client.recv_frame()[1])["op"] == "ok"
    client.send_text(json.dumps({"op": "sub", "ch": "c3", "id": 3}))
    reply = json.loads(client.recv_frame()[1])
    assert reply["op"] == "err" and reply["code"] == "too_many_subscriptions" and "per worker" in reply["msg"]
    client.send_text(json.dumps({"op": "unsub", "ch": "c0", "id": 4}))
    assert json.loads(client.recv_frame()[1])["op"] == "ok"
    client.send_text(json.dumps({"op": "sub", "ch": "c3", "id": 5}))
    assert json.loads(client.recv_frame()[1])["op"] == "ok"  # room again


def _handshake_from(port: int, source: str) -> tuple[int, bytes, socket.socket]:
    sock = socket.socket()
    sock.settimeout(5)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    sock.sendall(HANDSHAKE.format(key=base64.b64encode(os.urandom(16)).decode()).encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        assert chunk, "closed without an answer"
        head += chunk
    return int(head.split(b" ", 2)[1]), head, sock


def test_connections_per_address_are_limited_for_the_whole_server(wsd_factory):
    wsd = wsd_factory("--max-connections-per-ip", "3", workers=2)
    held = []
    answers = []
    for _ in range(6):
        status, head, sock = _handshake_from(wsd.port, "127.0.0.1")
        answers.append(status)
        if status == 101:
            held.append(sock)
        else:
            assert status == 503 and b"too many connections from your address" in head
            sock.close()
    assert answers == [101, 101, 101, 503, 503, 503], answers  # over both workers together
    status, _, other = _handshake_from(wsd.port, "127.0.0.2")
    assert status == 101  # another address is not affected
    held.pop().close()
    time.sleep(0.3)
    status, _, sock = _handshake_from(wsd.port, "127.0.0.1")
    assert status == 101  # the closed connection gave its place back
    held.append(sock)
    for sock in (*held, other):
        sock.close()
