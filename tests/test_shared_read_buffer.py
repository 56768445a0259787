"""Idle connections of a worker share one read buffer (wsd.ext.connmem): a frame that arrives in
pieces is kept for its own connection while other connections read into the shared bytes, a
message larger than the shared buffer is read whole, and the connections go on working after."""

from __future__ import annotations

import os
import socket
import struct
import time

from tests.raw_ws import RawWebSocket


def _masked_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    mask = os.urandom(4)
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | size)
    elif size < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, size)
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def test_frames_arriving_in_pieces_on_many_connections_each_reach_their_own_connection(wsd_factory):
    wsd = wsd_factory("--echo-path", "/echo", workers=1)
    clients = [RawWebSocket("127.0.0.1", wsd.port, "/echo") for _ in range(20)]
    for client in clients:
        client.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    frames = [_masked_frame(f"message {i} of connection {i}: ".encode() * 3) for i in range(len(clients))]
    # Every connection's frame in 7-byte pieces, one piece per connection in turn: each piece is
    # its own read on the server, and between two pieces of one connection the others read.
    for start in range(0, max(len(f) for f in frames), 7):
        for client, frame in zip(clients, frames, strict=True):
            if start < len(frame):
                client.sock.sendall(frame[start : start + 7])
        time.sleep(0.01)
    for i, client in enumerate(clients):
        assert client.recv_frame() == (0x1, f"message {i} of connection {i}: ".encode() * 3)
    # Whole frames afterwards (back on the shared buffer), several in one read.
    for i, client in enumerate(clients):
        client.sock.sendall(_masked_frame(b"a") + _masked_frame(f"b{i}".encode()))
    for i, client in enumerate(clients):
        assert client.recv_frame() == (0x1, b"a")
        assert client.recv_frame() == (0x1, f"b{i}".encode())
    for client in clients:
        client.close()


def test_a_message_larger_than_the_shared_buffer_is_read_whole(wsd_factory):
    wsd = wsd_factory("--echo-path", "/echo", "--max-message-size", str(1 << 20), workers=1)
    big = RawWebSocket("127.0.0.1", wsd.port, "/echo")
    other = RawWebSocket("127.0.0.1", wsd.port, "/echo")
    payload = bytes(range(256)) * 1024  # 256 KiB, 4x the shared read buffer
    frame = _masked_frame(payload, opcode=0x2)
    # Half of it, then a small message on another connection, then the rest.
    big.sock.sendall(frame[: len(frame) // 2])
    time.sleep(0.1)
    other.send_text("between")
    assert other.recv_frame() == (0x1, b"between")
    big.sock.sendall(frame[len(frame) // 2 :])
    assert big.recv_frame() == (0x2, payload)
    big.send_text("after")
    assert big.recv_frame() == (0x1, b"after")
    big.close()
    other.close()
