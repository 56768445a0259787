"""The load generator's subscriber connection in Python: what one client process counts during a
phase (`PhaseRecorder`) and one picows listener per connection (`SubscriberListener`).

Two framings: wsd's JSON protocol (which the `ws` and `websockets` peers of bench/peers also speak)
and socket.io (engine.io v4 / socket.io packets over a raw WebSocket: `40` connect, `42["sub",C]`,
deliveries `42["msg",{...}]`, pings `2` answered `3`). harness/fastlisten.pyx is the same listener
in Cython, used when it builds; this one is its reference and fallback.
"""

from __future__ import annotations

import asyncio
import time
from array import array
from collections import Counter
from typing import Any

import orjson
from picows import WSFrame, WSListener, WSMsgType, WSTransport

# Every connection subscribes to this channel; with user channels also to its own user_channel(i).
SHARED_CHANNEL = "bench"

SOCKETIO_PING = b"2"
SOCKETIO_PONG = b"3"
DELIVERY_PREFIX_WSD = b'{"op":"msg",'
DELIVERY_PREFIX_SOCKETIO = b'42["msg",'
CHANNEL_KEY = b'"ch":"'
OFFSET_KEY = b'","off":'
STAMP_KEY = b'"t":'  # the publish time inside "data", in ns


def user_channel(index: int) -> str:
    """The channel only connection `index` (numbered over all client processes) subscribes to."""
    return f"user:{index}"


def subscribe_request(channel: str, socketio: bool) -> bytes:
    """The frame that subscribes a connection of either framing to `channel`."""
    if socketio:
        return b"42" + orjson.dumps(["sub", channel])
    return orjson.dumps({"op": "sub", "ch": channel, "id": 1})


class PhaseRecorder:
    """What one client process counts during a phase (burst, paced, targeted), shared by all its listeners."""

    def __init__(self) -> None:
        self.connections = 0
        self.on_complete: Any = None
        self.reset(0, False)

    def reset(self, expected_per_connection: int, record_latency: bool) -> None:
        self.expected_per_connection = expected_per_connection
        self.record_latency = record_latency
        self.received = 0
        self.complete_connections = 0
        self.out_of_order = 0
        self.first_offsets: Counter[int] = Counter()
        self.first_receive_ns = 0
        self.last_receive_ns = 0
        # Publish-to-receive latency in microseconds, one entry per delivery (8 bytes each).
        self.latencies_us = array("q")


def handle_control_frame(listener: Any, transport: WSTransport, payload: bytes) -> None:
    """A frame that is not a delivery: subscription acks, socket.io's connect and pings, errors.

    Shared by SubscriberListener and fastlisten.FastListener (its slow path)."""
    if listener.socketio:
        if not payload.startswith(b"42"):
            if payload == SOCKETIO_PING:
                transport.send(WSMsgType.TEXT, SOCKETIO_PONG)
            elif payload.startswith(b"40") and listener.connected is not None and not listener.connected.done():
                listener.connected.set_result(True)
            return
        event, message = orjson.loads(payload[2:])
        op = str(event)
    else:
        message = orjson.loads(payload)
        op = message["op"]
    if op == "ok":
        listener.acks += 1
    else:
        listener.error = str(message)[:200]


class SubscriberListener(WSListener):
    """One subscriber connection of either framing: counts deliveries, checks per-channel offset order."""

    def __init__(self, recorder: PhaseRecorder, socketio: bool) -> None:
        super().__init__()
        self.recorder = recorder
        self.socketio = socketio
        self.transport: WSTransport | None = None
        self.connected: asyncio.Future | None = None  # socket.io: set when the server answers "40"
        self.previous_offsets: dict[bytes, int] = {}
        self.count = 0
        self.acks = 0
        self.error: str | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        if self.socketio:
            self.connected = asyncio.get_running_loop().create_future()
            transport.send(WSMsgType.TEXT, b"40")  # connect to the main namespace

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if self.error is None:
            self.error = "disconnected"

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type != WSMsgType.TEXT:
            if frame.msg_type == WSMsgType.CLOSE:
                self.error = f"closed by server: {frame.get_close_code()} {frame.get_close_message()}"
                transport.disconnect()
            return
        now = time.time_ns()
        payload = frame.get_payload_as_bytes()
        # Fast path for deliveries, the bulk of the frames: every peer writes the keys in the same order
        # ({"op":"msg","ch":C,"off":O,"data":{"t":T,...}}, or socket.io's 42["msg",{"ch":C,"off":O,...}]),
        # so the channel, offset and publish time are sliced out without building the JSON objects.
        # The load generator shares the cores with the server: its cost per frame is in every number.
        if payload.startswith(DELIVERY_PREFIX_SOCKETIO if self.socketio else DELIVERY_PREFIX_WSD):
            channel_start = payload.index(CHANNEL_KEY) + len(CHANNEL_KEY)
            channel_end = payload.index(OFFSET_KEY, channel_start)
            offset_end = payload.index(b",", channel_end + len(OFFSET_KEY))
            self.on_delivery(
                now, payload[channel_start:channel_end], int(payload[channel_end + len(OFFSET_KEY) : offset_end]),
                payload, offset_end,
            )  # fmt: skip
            return
        handle_control_frame(self, transport, payload)

    def on_delivery(self, now: int, channel: bytes, offset: int, payload: bytes, data_at: int) -> None:
        recorder = self.recorder
        previous = self.previous_offsets.get(channel, -1)
        if previous >= 0 and offset != previous + 1:
            recorder.out_of_order += 1
        self.previous_offsets[channel] = offset
        self.count += 1
        recorder.received += 1
        if recorder.first_receive_ns == 0:
            recorder.first_receive_ns = now
        recorder.last_receive_ns = now
        if self.count == 1:
            recorder.first_offsets[offset] += 1
        if recorder.record_latency:
            stamp_start = payload.index(STAMP_KEY, data_at) + len(STAMP_KEY)
            stamp_end = payload.index(b",", stamp_start)
            recorder.latencies_us.append((now - int(payload[stamp_start:stamp_end])) // 1000)
        if self.count == recorder.expected_per_connection:
            recorder.complete_connections += 1
            if recorder.complete_connections == recorder.connections and recorder.on_complete:
                recorder.on_complete()
