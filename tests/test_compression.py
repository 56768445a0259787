"""permessage-deflate against a real server: compressed deliveries for clients that negotiate it,
plain ones for the others on the same channel, inflated client messages, a zip bomb closed with
1009 while the worker's memory stays put, and `--compression off`."""

from __future__ import annotations

import asyncio
import json
import re
import zlib
from pathlib import Path

from websockets.asyncio.client import connect

from tests.raw_ws import RawWebSocket

OFFER = "permessage-deflate; client_max_window_bits"
TAIL = b"\x00\x00\xff\xff"
RSV1 = 4  # RawWebSocket.send_frame's rsv is the three RSV bits, RSV1 the highest
# A notification as a social network sends it (~1 KB of JSON).
NOTIFICATION = {
    "type": "comment",
    "id": "ntf_01HF3Q9X7K2M4P6R8T0V",
    "created_at": "2026-12-01T14:03:27.512Z",
    "actor": {"id": 48213, "name": "Alice Martin", "handle": "alice", "avatar": "https://cdn.example.com/a/48213/96.jpg",
              "verified": True},
    "post": {"id": 99120455, "title": "Our trip to the mountains", "url": "https://example.com/p/99120455",
             "thumbnail": "https://cdn.example.com/p/99120455/thumb.jpg"},
    "comment": {"id": 5512093, "text": "What a view! We went there last summer and the weather was just as good. "
                "Did you take the cable car up or walk the whole trail?", "reply_to": None},
    "counts": {"likes": 128, "comments": 17, "shares": 3},
    "recipients": [{"id": 1000 + i, "reason": "follower"} for i in range(6)],
    "links": {"self": "https://api.example.com/v1/notifications/ntf_01HF3Q9X7K2M4P6R8T0V",
              "read": "https://api.example.com/v1/notifications/ntf_01HF3Q9X7K2M4P6R8T0V/read"},
}  # fmt: skip


def extensions_header(raw: RawWebSocket) -> str | None:
    match = re.search(r"(?im)^sec-websocket-extensions:\s*(.*?)\r?$", raw.headers)
    return match.group(1) if match else None


def inflate(payload: bytes) -> bytes:
    return zlib.decompressobj(-15).decompress(payload + TAIL)


def client_deflate(message: bytes) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    return (compressor.compress(message) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]


def subscribe(raw: RawWebSocket, channel: str, compressed: bool = False) -> dict:
    request = json.dumps({"op": "sub", "ch": channel, "id": 1}).encode()
    if compressed:
        raw.send_frame(0x1, client_deflate(request), rsv=RSV1)
    else:
        raw.send_text(request)
    first, payload = raw.recv_raw_frame()
    reply = json.loads(inflate(payload) if first & 0x40 else payload)
    assert reply["op"] == "ok", reply
    return reply


def read_messages(raw: RawWebSocket, count: int) -> list[tuple[bool, dict]]:
    """(was it compressed, the msg event) of the next `count` frames."""
    out = []
    for _ in range(count):
        first, payload = raw.recv_raw_frame()
        assert first & 0x0F == 0x1 and first & 0x80, hex(first)
        compressed = bool(first & 0x40)
        out.append((compressed, json.loads(inflate(payload) if compressed else payload)))
    return out


def test_negotiating_clients_get_compressed_frames_and_the_others_plain_ones_with_the_same_offsets(wsd_factory):
    wsd = wsd_factory(workers=1)  # both clients on one worker: one hub serves both kinds
    deflating = RawWebSocket("127.0.0.1", wsd.port, headers=[("Sec-WebSocket-Extensions", OFFER)])
    plain = RawWebSocket("127.0.0.1", wsd.port)
    assert deflating.status == plain.status == 101
    assert extensions_header(deflating) == (
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
    )
    assert extensions_header(plain) is None
    subscribe(deflating, "user:42", compressed=True)  # a compressed request is inflated
    subscribe(plain, "user:42")
    offsets = [wsd.publish("user:42", NOTIFICATION), wsd.publish("user:42", {"small": True})]

    compressed_side = read_messages(deflating, 2)
    plain_side = read_messages(plain, 2)
    assert [c for c, _ in compressed_side] == [True, False]  # the small one is under the threshold
    assert [c for c, _ in plain_side] == [False, False]
    assert [m["off"] for _, m in compressed_side] == [m["off"] for _, m in plain_side] == offsets
    assert [m["data"] for _, m in compressed_side] == [NOTIFICATION, {"small": True}]
    assert compressed_side == [(True, plain_side[0][1]), (False, plain_side[1][1])]
    deflating.close()
    plain.close()


def test_a_library_client_with_deflate_receives_across_workers(wsd_factory):
    wsd = wsd_factory(workers=2)

    async def run() -> None:
        # The kernel's reuseport hash may put 6 connections on one worker (1 time in 32): connect
        # until both workers hold some.
        clients = [await connect(wsd.url, compression="deflate") for _ in range(6)]
        while len({ws.response.headers["X-Wsd-Worker"] for ws in clients}) < 2 and len(clients) < 40:
            clients.append(await connect(wsd.url, compression="deflate"))
        plain = await connect(wsd.url, compression=None)
        for ws in [*clients, plain]:
            await ws.send(json.dumps({"op": "sub", "ch": "feed", "id": 1}))
            assert json.loads(await ws.recv())["op"] == "ok"
        assert {ws.response.headers["X-Wsd-Worker"] for ws in clients} == {"0", "1"}
        assert all(ws.response.headers["Sec-WebSocket-Extensions"].startswith("permessage-deflate") for ws in clients)
        assert "Sec-WebSocket-Extensions" not in plain.response.headers
        # A client's own compressed publish, fragmented, reaches everyone.
        big = {**NOTIFICATION, "comment": {"text": "x" * 5000}}
        request = json.dumps({"op": "pub", "ch": "feed", "data": big, "id": 2})
        await clients[0].send([request[i : i + 1000] for i in range(0, len(request), 1000)])
        # Its ok first (it may come after its own delivery): the API's publish must be sequenced
        # after it for the order checked below.
        early = []
        while True:
            reply = json.loads(await asyncio.wait_for(clients[0].recv(), 10))
            if reply["op"] == "msg":
                early.append(reply["data"])
            elif reply.get("id") == 2:
                assert reply["op"] == "ok", reply
                break
        await asyncio.to_thread(wsd.publish, "feed", NOTIFICATION)
        for ws in [*clients, plain]:
            got = early if ws is clients[0] else []
            while len(got) < 2:
                message = json.loads(await asyncio.wait_for(ws.recv(), 10))
                if message["op"] == "msg":
                    got.append(message["data"])
            assert got == [big, NOTIFICATION]
            await ws.close()

    asyncio.run(run())


def worker_peak_rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))


def test_a_zip_bomb_is_closed_with_1009_and_the_worker_never_holds_it(wsd_factory):
    wsd = wsd_factory(workers=1)  # the default --max-message-size, 65536
    (pid,) = wsd.worker_pids()
    before = worker_peak_rss_kib(pid)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    bomb = compressor.compress(bytes(100 << 20)) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert len(bomb) < 110_000  # 100 MB of zeros

    # One frame of 10 MB of zeros (10 KB on the wire, within the frame limit).
    small_compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    ten_mb = (small_compressor.compress(bytes(10 << 20)) + small_compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]
    single = RawWebSocket("127.0.0.1", wsd.port, headers=[("Sec-WebSocket-Extensions", OFFER)])
    single.send_frame(0x2, ten_mb, rsv=RSV1)
    assert single.recv_close_code() == 1009
    single.close()

    # 100 MB of zeros in 16 KB fragments: each frame is small, the message is not.
    fragmented = RawWebSocket("127.0.0.1", wsd.port, headers=[("Sec-WebSocket-Extensions", OFFER)])
    body = bomb[:-4]
    chunks = [body[i : i + 16384] for i in range(0, len(body), 16384)]
    try:
        for index, chunk in enumerate(chunks):
            last = index == len(chunks) - 1
            fragmented.send_frame(0x2 if index == 0 else 0x0, chunk, fin=last, rsv=RSV1 if index == 0 else 0)
    except (BrokenPipeError, ConnectionResetError):
        pass  # closed before the rest arrived: fine, the code is what counts
    assert fragmented.recv_close_code() == 1009
    fragmented.close()

    grown_mib = (worker_peak_rss_kib(pid) - before) / 1024
    assert grown_mib < 16, f"the worker's peak RSS grew by {grown_mib:.0f} MiB on a 64 KiB limit"
    # The worker is fine and still serves.
    healthy = RawWebSocket("127.0.0.1", wsd.port, headers=[("Sec-WebSocket-Extensions", OFFER)])
    subscribe(healthy, "still-here", compressed=True)
    healthy.close()


def test_rsv1_is_1002_without_negotiation_and_on_a_control_frame(wsd_factory):
    wsd = wsd_factory(workers=1)
    plain = RawWebSocket("127.0.0.1", wsd.port)
    plain.send_frame(0x1, client_deflate(b'{"op":"ping","id":1}'), rsv=RSV1)
    assert plain.recv_close_code() == 1002
    plain.close()
    negotiated = RawWebSocket("127.0.0.1", wsd.port, headers=[("Sec-WebSocket-Extensions", OFFER)])
    negotiated.send_frame(0x9, b"", rsv=RSV1)
    assert negotiated.recv_close_code() == 1002
    negotiated.close()


def test_compression_off_declines_the_offer(wsd_factory):
    wsd = wsd_factory("--compression", "off", workers=1)
    raw = RawWebSocket("127.0.0.1", wsd.port, headers=[("Sec-WebSocket-Extensions", OFFER)])
    assert raw.status == 101 and extensions_header(raw) is None
    subscribe(raw, "news")
    offset = wsd.publish("news", NOTIFICATION)
    assert read_messages(raw, 1) == [(False, {"op": "msg", "ch": "news", "off": offset, "data": NOTIFICATION})]
    raw.send_frame(0x1, client_deflate(b'{"op":"ping","id":1}'), rsv=RSV1)
    assert raw.recv_close_code() == 1002
    raw.close()


def test_an_invalid_offer_is_declined_and_the_handshake_still_succeeds(wsd_factory):
    wsd = wsd_factory(workers=1)
    for offer in (
        "permessage-deflate; server_max_window_bits=7",
        "permessage-deflate; foo",
        'permessage-deflate; a="b c"',
    ):
        raw = RawWebSocket("127.0.0.1", wsd.port, headers=[("Sec-WebSocket-Extensions", offer)])
        assert raw.status == 101 and extensions_header(raw) is None, offer
        subscribe(raw, "news")
        raw.close()
    # The second of two offers, when the first is invalid.
    raw = RawWebSocket(
        "127.0.0.1", wsd.port, headers=[("Sec-WebSocket-Extensions", "permessage-deflate; foo, " + OFFER)]
    )
    assert extensions_header(raw).startswith("permessage-deflate; server_no_context_takeover")
    raw.close()
