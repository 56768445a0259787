"""The load generator shared by every peer of the fan-out comparison: picows + uvloop client
processes, one callback-driven listener per connection, driven in lock-step by the coordinator
(bench/peers/run.py) over pipes.

Each connection subscribes to the shared channel `bench` and to its own `user:<index>`. Two
framings: `wsd` (wsd's JSON protocol, which the `ws` and `websockets` peers also speak) and
`socketio` (engine.io v4 / socket.io packets over a raw WebSocket: `40` connect, `42["sub",C]`,
deliveries `42["msg",{...}]`, pings `2` answered `3`). Phase bookkeeping (counts, offset order,
latency) is bench/fanout.py's PhaseRecorder, so reports merge with its merge_phase().
"""

from __future__ import annotations

import asyncio
import importlib
import multiprocessing
import multiprocessing.connection
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import uvloop
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

PEERS_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(PEERS_DIR.parent))
sys.path.insert(0, str(PEERS_DIR))
from fanout import (  # noqa: E402  (bench/ is only on the path from here)
    CONNECT_CONCURRENCY,
    CONNECTIONS_PER_SOURCE_ADDRESS,
    PHASE_GRACE_SECONDS,
    READ_BUFFER_INIT_SIZE,
    PhaseRecorder,
    _bound_socket,
)

SHARED_CHANNEL = "bench"
SOCKETIO_PING = b"2"
SOCKETIO_PONG = b"3"
DELIVERY_PREFIX_WSD = b'{"op":"msg",'
DELIVERY_PREFIX_SOCKETIO = b'42["msg",'
CHANNEL_KEY = b'"ch":"'
OFFSET_KEY = b'","off":'
STAMP_KEY = b'"t":'  # the publish time inside "data", in ns


def user_channel(index: int) -> str:
    return f"user:{index}"


def handle_control_frame(listener: Any, transport: WSTransport, payload: bytes) -> None:
    """A frame that is not a delivery: subscription acks, socket.io's connect and pings, errors."""
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


def build_fast_listener() -> bool:
    """Compile bench/peers/fastlisten.pyx in place if needed; False if it cannot be built here."""
    try:
        import fastlisten  # noqa: F401

        return True
    except ImportError:
        pass
    result = subprocess.run(
        [sys.executable, "-m", "Cython.Build.Cythonize", "-i", "-3", "-q", str(PEERS_DIR / "fastlisten.pyx")],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        print(f"fastlisten.pyx did not build; using the Python listener:\n{result.stderr[-2000:]}", file=sys.stderr)
        return False
    importlib.invalidate_caches()
    try:
        import fastlisten  # noqa: F401
    except ImportError as exc:
        print(f"fastlisten did not import ({exc}); using the Python listener", file=sys.stderr)
        return False
    return True


class PeerListener(WSListener):
    """One subscriber connection of either framing: counts deliveries, checks per-channel order."""

    def __init__(self, recorder: PhaseRecorder, socketio: bool) -> None:
        super().__init__()
        self.recorder = recorder
        self.socketio = socketio
        self.transport: WSTransport | None = None
        self.connected: asyncio.Future | None = None  # socket.io: set when the server answers "40"
        self.previous_offsets: dict[str, int] = {}
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


class PeerClientProcess:
    """The event-loop side of one load-generator process; commands arrive over a pipe."""

    def __init__(
        self,
        commands: multiprocessing.connection.Connection,
        replies: multiprocessing.connection.Connection,
        urls: list[str],
        socketio: bool,
        source_addresses: list[str],
        fast: bool,
    ):
        self.commands = commands
        self.replies = replies
        self.urls = urls
        self.socketio = socketio
        self.source_addresses = source_addresses
        if fast:
            from fastlisten import FastListener, FastRecorder

            self.recorder: Any = FastRecorder()
            self.new_listener = lambda: FastListener(self.recorder, socketio, handle_control_frame)
        else:
            self.recorder = PhaseRecorder()
            self.new_listener = lambda: PeerListener(self.recorder, socketio)
        self.listeners: list[tuple[int, PeerListener]] = []  # (global index, listener)
        self.finished = asyncio.Event()
        self.phase_deadline: asyncio.TimerHandle | None = None

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_reader(self.commands.fileno(), self.on_command)
        self.replies.send({"ready": os.getpid()})
        await self.finished.wait()
        loop.remove_reader(self.commands.fileno())

    def on_command(self) -> None:
        command, args = self.commands.recv()
        if command == "connect":
            asyncio.ensure_future(self.connect(**args))
        elif command == "subscribe":
            asyncio.ensure_future(self.subscribe())
        elif command == "arm":
            self.arm(**args)
        elif command == "close":
            for _index, listener in self.listeners:
                if listener.transport is not None:
                    listener.transport.disconnect()
            self.finished.set()

    async def connect(self, count: int, first_index: int) -> None:
        started = time.monotonic()
        failures: Counter[str] = Counter()
        next_index = iter(range(first_index, first_index + count))

        async def connector() -> None:
            for index in next_index:
                source = self.source_addresses[index // CONNECTIONS_PER_SOURCE_ADDRESS]
                url = self.urls[index % len(self.urls)]  # several server processes: spread evenly
                try:
                    _transport, listener = await ws_connect(
                        self.new_listener,
                        url,
                        socket_factory=lambda _url, source=source: _bound_socket(source),
                        read_buffer_init_size=READ_BUFFER_INIT_SIZE,
                        use_aiofastnet=False,
                        websocket_handshake_timeout=30,
                    )
                    if listener.connected is not None:
                        await asyncio.wait_for(listener.connected, 30)
                except (TimeoutError, OSError, RuntimeError) as exc:
                    failures[f"{type(exc).__name__}: {exc}"[:120]] += 1
                    continue
                self.listeners.append((index, listener))

        await asyncio.gather(*(connector() for _ in range(min(CONNECT_CONCURRENCY, count))))
        self.recorder.connections = len(self.listeners)
        self.replies.send(
            {
                "connected": len(self.listeners),
                "failed": sum(failures.values()),
                "failures": dict(failures.most_common(5)),
                "seconds": time.monotonic() - started,
            }
        )

    def _sub_request(self, channel: str) -> bytes:
        if self.socketio:
            return b"42" + orjson.dumps(["sub", channel])
        return orjson.dumps({"op": "sub", "ch": channel, "id": 1})

    async def subscribe(self) -> None:
        """Subscribe every connection to the shared channel and to its own user channel."""
        started = time.monotonic()
        shared = self._sub_request(SHARED_CHANNEL)
        for index, listener in self.listeners:
            listener.transport.send(WSMsgType.TEXT, shared)
            listener.transport.send(WSMsgType.TEXT, self._sub_request(user_channel(index)))
        deadline = started + PHASE_GRACE_SECONDS
        while time.monotonic() < deadline:
            if all(listener.acks >= 2 or listener.error for _index, listener in self.listeners):
                break
            await asyncio.sleep(0.05)
        errors = Counter(listener.error for _index, listener in self.listeners if listener.error)
        self.replies.send(
            {
                "subscribed": sum(listener.acks >= 2 for _index, listener in self.listeners),
                "errors": dict(errors.most_common(5)),
                "seconds": time.monotonic() - started,
            }
        )

    def arm(self, expected_per_connection: int, record_latency: bool, timeout: float) -> None:
        """Start counting a phase; report when every connection has its messages, or at `timeout`."""
        for _index, listener in self.listeners:
            listener.count = 0
        self.recorder.reset(expected_per_connection, record_latency)
        self.recorder.on_complete = self.report_phase
        self.phase_deadline = asyncio.get_running_loop().call_later(timeout, self.report_phase)
        self.replies.send({"armed": True})

    def report_phase(self) -> None:
        recorder = self.recorder
        recorder.on_complete = None
        if self.phase_deadline is not None:
            self.phase_deadline.cancel()
            self.phase_deadline = None
        counts = Counter(listener.count for _index, listener in self.listeners)
        self.replies.send(
            {
                "connections": recorder.connections,
                "received": recorder.received,
                "complete_connections": recorder.complete_connections,
                "count_histogram": dict(counts.most_common(5)),
                "out_of_order": recorder.out_of_order,
                "first_offsets": dict(recorder.first_offsets.most_common(5)),
                "first_receive_ns": recorder.first_receive_ns,
                "last_receive_ns": recorder.last_receive_ns,
                "disconnected": sum(listener.error is not None for _index, listener in self.listeners),
                "latencies_us": recorder.latencies_us.tobytes(),
            }
        )


def client_process_main(
    commands: multiprocessing.connection.Connection,
    replies: multiprocessing.connection.Connection,
    urls: list[str],
    socketio: bool,
    source_addresses: list[str],
    fast: bool,
) -> None:
    """Entry point of one load-generator process."""
    uvloop.run(PeerClientProcess(commands, replies, urls, socketio, source_addresses, fast).run())


class PeerLoadGenerator:
    """The K client processes, driven in lock-step over their pipes."""

    def __init__(self, urls: list[str], socketio: bool, processes: int, subscribers: int, fast: bool = True):
        self.subscribers = subscribers
        self.fast = fast and build_fast_listener()
        self.per_process = [subscribers // processes + (i < subscribers % processes) for i in range(processes)]
        address_count = -(-subscribers // CONNECTIONS_PER_SOURCE_ADDRESS)
        source_addresses = [f"127.0.0.{2 + i}" for i in range(address_count)]
        context = multiprocessing.get_context("spawn")
        self.command_pipes: list[multiprocessing.connection.Connection] = []
        self.pipes: list[multiprocessing.connection.Connection] = []
        self.processes: list[multiprocessing.Process] = []
        for _ in range(processes):
            command_reader, command_writer = context.Pipe(duplex=False)
            reply_reader, reply_writer = context.Pipe(duplex=False)
            process = context.Process(
                target=client_process_main,
                args=(command_reader, reply_writer, urls, socketio, source_addresses, self.fast),
            )
            process.start()
            self.command_pipes.append(command_writer)
            self.pipes.append(reply_reader)
            self.processes.append(process)
        for index in range(processes):
            self.reply(index, timeout=60)

    def request(self, command: str, args: list[dict] | dict | None = None, timeout: float = 300) -> list[dict]:
        """Send `command` to every process (per-process args if a list) and collect their replies."""
        for index, pipe in enumerate(self.command_pipes):
            pipe.send((command, args[index] if isinstance(args, list) else (args or {})))
        return [self.reply(index, timeout) for index in range(len(self.pipes))]

    def reply(self, index: int, timeout: float) -> dict:
        if not self.pipes[index].poll(timeout):
            raise TimeoutError(f"load-generator process {index} did not answer within {timeout}s")
        return self.pipes[index].recv()

    def connect_all(self) -> dict[str, Any]:
        """Connect every subscriber (every process at once) and subscribe it to its two channels."""
        first_indexes = [sum(self.per_process[:i]) for i in range(len(self.per_process))]
        started = time.monotonic()
        replies = self.request(
            "connect", [{"count": n, "first_index": f} for n, f in zip(self.per_process, first_indexes, strict=True)]
        )
        connect_seconds = time.monotonic() - started
        connected = sum(r["connected"] for r in replies)
        if connected < self.subscribers:
            failures = [r["failures"] for r in replies if r["failed"]]
            raise RuntimeError(f"only {connected} of {self.subscribers} subscribers connected: {failures}")
        started = time.monotonic()
        sub_replies = self.request("subscribe")
        subscribed = sum(r["subscribed"] for r in sub_replies)
        if subscribed < connected:
            raise RuntimeError(
                f"only {subscribed} of {connected} subscribers got both oks: {[r['errors'] for r in sub_replies]}"
            )
        return {
            "subscribers": connected,
            "connect_seconds": connect_seconds,
            "connects_per_second": connected / connect_seconds,
            "subscribe_seconds": time.monotonic() - started,
        }

    def close(self) -> None:
        for pipe in self.command_pipes:
            try:
                pipe.send(("close", {}))
            except OSError:
                pass
        for process in self.processes:
            process.join(30)
            if process.is_alive():
                process.kill()
