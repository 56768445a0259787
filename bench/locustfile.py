"""Locust load for wsd: many idle WebSocket subscribers, broadcasts to all of them, latency per delivery.

Each `WsdUser` owns `--wsd-connections-per-user` WebSocket connections to `/ws` (1 by default: one
User per connection). A connection subscribes to its own channel `user.<n>` and to the shared
channel `all`, answers pings, and reports every delivery's publish-to-receive latency as a Locust
request event (`WS broadcast`); handshakes and subscriptions are request events too (`WS handshake`,
`WS subscribe`), and failures are request events with an exception, so Locust's error table counts
them by kind.

Light on purpose, so one Locust worker process holds ~19,000 connections (its open-file limit is
20,000): a connection is a plain non-blocking socket driven by a gevent io watcher callback in the
hub, not a greenlet, and its state is one small `__slots__` object. The User's own greenlet only
opens its connections and then sleeps.

Source addresses: Locust worker i spreads its sockets over 127.0.0.(2 + 4i) ... 127.0.0.(5 + 4i) with
IP_BIND_ADDRESS_NO_PORT. One address has ~28,000 ephemeral ports towards wsd, but connect() looks at
one half of the range first (the other half is for bind()), and past ~14,000 connections per
address each connect() scans for a free port in the kernel: measured here, a run with 16,700 per
address stalled at 14,000 each with the load generator's CPU all in the system.

Distributed runs (`--processes N`) use custom messages: every worker sends a `wsd_gauge` each second
(connections open, per-broadcast receive counts); when `--wsd-api` is given the master drives a
scenario (wait for `--wsd-target` connections, hold, `--wsd-broadcasts` publishes to `all`, collect
each worker's latencies) and writes its result as JSON to `--wsd-result`, then quits. That is what
`bench/connections.py` runs; without `--wsd-api` this file is an ordinary Locust load.
"""

from __future__ import annotations

import _socket
import errno
import json
import logging
import os
import time
import urllib.request
from array import array
from base64 import b64encode
from urllib.parse import urlsplit

import gevent
import orjson
from gevent.lock import Semaphore
from locust import User, constant, events, task
from locust.runners import MasterRunner, WorkerRunner

log = logging.getLogger("wsd.locust")

# Linux socket option missing from the socket module: defer the port choice from bind() to
# connect(), so a port only has to be unique per 4-tuple rather than per source address.
IP_BIND_ADDRESS_NO_PORT = 24

# Source addresses per Locust worker process (see the module docstring): ~4,700 connections each.
SOURCE_ADDRESSES_PER_WORKER = 4

# Handshakes in flight per Locust worker process. More only overflows the server's accept queue
# and turns into 1 s SYN retransmits.
HANDSHAKES_IN_FLIGHT = 256

GAUGE_EVERY_S = 1.0
SHARED_CHANNEL = "all"

# The fixed request key and mask key: a load generator does not need fresh randomness per
# connection, and the server cannot tell the difference.
WS_KEY = b64encode(b"wsd-locust-key16").decode()
MASK_KEY = b"\x37\xfa\x21\x3d"

EV_READ = 1
EV_WRITE = 2

# Connection states.
CONNECTING, HANDSHAKING, SUBSCRIBING, OPEN, CLOSED = range(5)


class ConnectionStats:
    """What one Locust worker process knows about its connections (shared by all its Users)."""

    def __init__(self) -> None:
        self.opened = 0  # handshakes completed
        self.subscribed = 0  # both subscriptions confirmed
        self.open_now = 0
        self.closed = 0
        self.failed = 0
        self.errors: dict[str, int] = {}
        self.handshake_us = array("I")  # one per completed handshake
        self.first_handshake_at = 0.0  # epoch seconds of the first and last completed handshake
        self.last_handshake_at = 0.0
        # broadcast seq -> latencies in µs (publish time to receive time), one per delivery
        self.latency_by_seq: dict[int, array] = {}
        self.pings_answered = 0

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


STATS = ConnectionStats()
_handshake_slots: Semaphore | None = None


def _mask(payload: bytes) -> bytes:
    """Client-to-server payloads are masked (RFC 6455 5.3): XOR with the repeated mask key."""
    key = (MASK_KEY * (len(payload) // 4 + 1))[: len(payload)]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(len(payload), "big")


def client_frame(opcode: int, payload: bytes) -> bytes:
    """One masked, unfragmented client frame (payloads here are always under 64 KiB)."""
    length = len(payload)
    if length < 126:
        header = bytes((0x80 | opcode, 0x80 | length))
    else:
        header = bytes((0x80 | opcode, 0x80 | 126)) + length.to_bytes(2, "big")
    return header + MASK_KEY + _mask(payload)


class WsConnection:
    """One WebSocket client connection, driven entirely by io-watcher callbacks in the gevent hub."""

    __slots__ = ("sock", "watcher", "state", "buf", "started_ns", "channel", "oks", "request")

    def __init__(self, host: str, port: int, path: str, source_address: str, channel: str) -> None:
        self.channel = channel
        self.state = CONNECTING
        self.buf = b""
        self.oks = 0
        self.started_ns = time.perf_counter_ns()
        self.request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        # The C-level socket, not gevent's patched one: the callbacks below must never block.
        sock = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
        self.sock = sock
        sock.setblocking(False)
        sock.setsockopt(_socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
        self.watcher = gevent.get_hub().loop.io(sock.fileno(), EV_WRITE)
        try:
            sock.bind((source_address, 0))
            code = sock.connect_ex((host, port))
        except OSError as exc:
            self.fail(f"connect: {errno.errorcode.get(exc.errno, exc.errno)}")
            return
        if code not in (0, errno.EINPROGRESS):
            self.fail(f"connect: {errno.errorcode.get(code, code)}")
            return
        self.watcher.start(self.on_writable)

    # -- callbacks --

    def on_writable(self) -> None:
        self.watcher.stop()
        code = self.sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_ERROR)
        if code:
            self.fail(f"connect: {errno.errorcode.get(code, code)}")
            return
        try:
            self.sock.send(self.request)  # ~150 bytes: a fresh socket's buffer always takes them
        except OSError as exc:
            self.fail(f"send: {errno.errorcode.get(exc.errno, exc.errno)}")
            return
        self.request = None
        self.state = HANDSHAKING
        self.watcher = gevent.get_hub().loop.io(self.sock.fileno(), EV_READ)
        self.watcher.start(self.on_readable)

    def on_readable(self) -> None:
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError as exc:
            self.fail(f"recv: {errno.errorcode.get(exc.errno, exc.errno)}")
            return
        if not data:
            self.fail("closed by server" if self.state == OPEN else "closed by server during handshake")
            return
        buf = self.buf + data if self.buf else data
        if self.state == HANDSHAKING:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return
            status_line = buf[: buf.find(b"\r\n")]
            if not status_line.startswith(b"HTTP/1.1 101"):
                self.fail(f"handshake: {status_line.decode(errors='replace')[:40]}")
                return
            elapsed_ms = (time.perf_counter_ns() - self.started_ns) / 1e6
            STATS.opened += 1
            STATS.open_now += 1
            STATS.handshake_us.append(int(elapsed_ms * 1000))
            STATS.last_handshake_at = time.time()
            if not STATS.first_handshake_at:
                STATS.first_handshake_at = STATS.last_handshake_at
            events.request.fire(
                request_type="WS", name="handshake", response_time=elapsed_ms, response_length=end + 4,
                exception=None, context=None,
            )  # fmt: skip
            self._release_handshake_slot()
            buf = buf[end + 4 :]
            self.state = SUBSCRIBING
            self.started_ns = time.perf_counter_ns()
            self.sock.send(
                client_frame(0x1, b'{"op":"sub","ch":"%s","id":1}' % self.channel.encode())
                + client_frame(0x1, b'{"op":"sub","ch":"%s","id":2}' % SHARED_CHANNEL.encode())
            )
        self.buf = self._frames(buf)

    def _frames(self, buf: bytes) -> bytes:
        """Handle every complete frame in `buf`; return the incomplete rest."""
        pos = 0
        size = len(buf)
        while size - pos >= 2:
            opcode = buf[pos] & 0x0F
            length = buf[pos + 1] & 0x7F
            header = 2
            if length == 126:
                if size - pos < 4:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                header = 4
            elif length == 127:
                if size - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                header = 10
            if size - pos < header + length:
                break
            payload = buf[pos + header : pos + header + length]
            pos += header + length
            if opcode == 0x1:
                self._on_text(payload)
            elif opcode == 0x9:
                self.sock.send(client_frame(0xA, payload))
                STATS.pings_answered += 1
            elif opcode == 0x8:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                self.fail(f"close {code} from server")
                return b""
        return buf[pos:] if pos < size else b""

    def _on_text(self, payload: bytes) -> None:
        received_ns = time.time_ns()
        message = orjson.loads(payload)
        op = message.get("op")
        if op == "msg":
            data = message.get("data")
            if isinstance(data, dict) and "ts" in data:
                latency_us = max(0, (received_ns - data["ts"]) // 1000)
                seq = data.get("seq", -1)
                samples = STATS.latency_by_seq.get(seq)
                if samples is None:
                    samples = STATS.latency_by_seq[seq] = array("I")
                samples.append(min(latency_us, 0xFFFFFFFF))
                events.request.fire(
                    request_type="WS", name="broadcast", response_time=latency_us / 1000,
                    response_length=len(payload), exception=None, context=None,
                )  # fmt: skip
        elif op == "ok":
            self.oks += 1
            if self.oks == 2:
                STATS.subscribed += 1
                self.state = OPEN
                events.request.fire(
                    request_type="WS", name="subscribe",
                    response_time=(time.perf_counter_ns() - self.started_ns) / 1e6,
                    response_length=len(payload), exception=None, context=None,
                )  # fmt: skip
        elif op == "err":
            self.fail(f"server error {message.get('code')}")

    # -- ending --

    def fail(self, kind: str) -> None:
        if self.state == CLOSED:
            return
        if self.state in (CONNECTING, HANDSHAKING):
            self._release_handshake_slot()
            STATS.failed += 1
        else:
            STATS.open_now -= 1
            STATS.closed += 1
        self.state = CLOSED
        STATS.error(kind)
        events.request.fire(
            request_type="WS", name="connection", response_time=0, response_length=0,
            exception=ConnectionError(kind), context=None,
        )  # fmt: skip
        self.close()

    def close(self) -> None:
        self.watcher.stop()
        self.sock.close()
        if self.state != CLOSED:
            STATS.open_now -= 1
            STATS.closed += 1
            self.state = CLOSED

    def _release_handshake_slot(self) -> None:
        if _handshake_slots is not None and self.request is not False:
            self.request = False  # released once, whichever way the handshake ends
            _handshake_slots.release()


def _source_address(environment, connection_number: int) -> str:
    """Locust worker i uses 127.0.0.(2 + 4i + n % 4) for its n-th connection (worker 0 standalone)."""
    runner = environment.runner
    index = 2 + max(getattr(runner, "worker_index", 0), 0) * SOURCE_ADDRESSES_PER_WORKER
    index += connection_number % SOURCE_ADDRESSES_PER_WORKER
    return f"127.0.{index // 256}.{index % 256}"


class WsdUser(User):
    """Holds `--wsd-connections-per-user` subscribed WebSocket connections until the test stops."""

    wait_time = constant(3600)
    _next_user = 0

    def on_start(self) -> None:
        global _handshake_slots
        if _handshake_slots is None:
            _handshake_slots = Semaphore(HANDSHAKES_IN_FLIGHT)
        options = self.environment.parsed_options
        per_user = max(1, getattr(options, "wsd_connections_per_user", 1) if options else 1)
        url = urlsplit(self.host or "ws://127.0.0.1:8080/ws")
        runner = self.environment.runner
        worker = max(getattr(runner, "worker_index", 0), 0)
        self.connections: list[WsConnection] = []
        for _ in range(per_user):
            _handshake_slots.acquire()
            WsdUser._next_user += 1
            channel = f"user.{worker}.{WsdUser._next_user}"
            source = _source_address(self.environment, WsdUser._next_user)
            self.connections.append(WsConnection(url.hostname, url.port or 80, url.path or "/ws", source, channel))

    @task
    def hold(self) -> None:
        # Deliveries arrive in io-watcher callbacks; the User itself has nothing to do.
        gevent.sleep(3600)

    def on_stop(self) -> None:
        for connection in self.connections:
            connection.close()


# --------------------------------------------------------------------------------------------------
# Options, the worker gauge and the master's scenario
# --------------------------------------------------------------------------------------------------


@events.init_command_line_parser.add_listener
def _add_options(parser) -> None:
    group = parser.add_argument_group("wsd")
    group.add_argument("--wsd-connections-per-user", type=int, default=1, help="WebSocket connections per User")
    group.add_argument("--wsd-api", default="", help="publish API base URL; enables the scenario (master)")
    group.add_argument("--wsd-target", type=int, default=0, help="connections to reach before the hold")
    group.add_argument("--wsd-ramp-timeout", type=float, default=300.0, help="seconds to reach the target")
    group.add_argument("--wsd-hold", type=float, default=10.0, help="seconds to hold the connections idle")
    group.add_argument("--wsd-broadcasts", type=int, default=5, help="broadcasts to the shared channel")
    group.add_argument("--wsd-broadcast-timeout", type=float, default=60.0, help="seconds per broadcast")
    group.add_argument("--wsd-result", default="", help="where the master writes the scenario's JSON")
    group.add_argument("--wsd-progress", default="", help="where the master writes its progress every 0.5 s")


@events.init.add_listener
def _on_init(environment, **_kwargs) -> None:
    runner = environment.runner
    if isinstance(runner, WorkerRunner):
        runner.register_message("wsd_report_request", lambda msg, **kw: _send_report(runner))
        gevent.spawn(_gauge_loop, runner)
    elif isinstance(runner, MasterRunner):
        scenario = Scenario(environment)
        runner.register_message("wsd_gauge", scenario.on_gauge)
        runner.register_message("wsd_report", scenario.on_report)
        if environment.parsed_options and environment.parsed_options.wsd_api:
            environment.events.test_start.add_listener(lambda **kw: gevent.spawn(scenario.run))


def _gauge(runner) -> dict:
    return {
        "worker": runner.worker_index,
        "pid": os.getpid(),
        "opened": STATS.opened,
        "subscribed": STATS.subscribed,
        "open_now": STATS.open_now,
        "closed": STATS.closed,
        "failed": STATS.failed,
        "handshake_window": [STATS.first_handshake_at, STATS.last_handshake_at] if STATS.opened else None,
        "received": {str(seq): len(samples) for seq, samples in STATS.latency_by_seq.items()},
    }


def _gauge_loop(runner) -> None:
    while True:
        gevent.sleep(GAUGE_EVERY_S)
        try:
            runner.send_message("wsd_gauge", _gauge(runner))
        except Exception:  # noqa: BLE001 - the master may be gone at the end; keep the worker quiet
            log.debug("gauge not sent", exc_info=True)


def _send_report(runner) -> None:
    report = _gauge(runner)
    report["errors"] = STATS.errors
    report["pings_answered"] = STATS.pings_answered
    report["handshake_us"] = STATS.handshake_us.tolist()
    report["latency_us"] = {str(seq): samples.tolist() for seq, samples in STATS.latency_by_seq.items()}
    runner.send_message("wsd_report", report)


class Scenario:
    """Master side: ramp, hold, broadcast, collect; then write the result and quit."""

    def __init__(self, environment) -> None:
        self.environment = environment
        self.gauges: dict[str, dict] = {}
        self.reports: dict[str, dict] = {}
        self.timeline: list[dict] = []  # (time, connections) as the master saw them
        self.phase = "ramp"

    def on_gauge(self, msg, **_kwargs) -> None:
        self.gauges[msg.node_id] = msg.data

    def on_report(self, msg, **_kwargs) -> None:
        self.reports[msg.node_id] = msg.data

    def total(self, key: str) -> int:
        return sum(g[key] for g in self.gauges.values())

    def received(self, seq: int) -> int:
        return sum(g["received"].get(str(seq), 0) for g in self.gauges.values())

    def run(self) -> None:
        options = self.environment.parsed_options
        result: dict = {"target": options.wsd_target, "phases": {}}
        progress = gevent.spawn(self._progress_loop, options.wsd_progress) if options.wsd_progress else None
        try:
            self._run(options, result)
        except Exception as exc:  # noqa: BLE001 - the result file must say what went wrong
            log.exception("scenario failed")
            result["error"] = repr(exc)
        finally:
            if progress is not None:
                progress.kill()
            self._write(options, result)
            self.environment.runner.quit()

    def _progress_loop(self, path: str) -> None:
        while True:
            state = {"phase": self.phase, "connections": self.total("subscribed") - self.total("closed"),
                     "open": self.total("open_now"), "failed": self.total("failed"), "time": time.time()}  # fmt: skip
            with open(path + ".tmp", "w") as handle:
                json.dump(state, handle)
            os.replace(path + ".tmp", path)
            gevent.sleep(0.5)

    def _mark(self, phase: str) -> None:
        self.phase = phase
        self.timeline.append({"t": time.time(), "phase": phase, "connections": self.total("subscribed")})

    def _run(self, options, result: dict) -> None:
        start = time.time()
        self._mark("ramp")
        target = options.wsd_target
        # Ramp: until every target connection is subscribed, or nothing moved for 30 s, or timeout.
        last_count, last_change = -1, time.time()
        while time.time() - start < options.wsd_ramp_timeout:
            gevent.sleep(0.5)
            count = self.total("subscribed") - self.total("closed")
            if count != last_count:
                last_count, last_change = count, time.time()
            if count >= target or (self.total("subscribed") + self.total("failed") >= target):
                break
            if time.time() - last_change > 30:
                break
        ramp_end = time.time()
        result["phases"]["ramp"] = {"start": start, "end": ramp_end, "connections": last_count}
        self._mark("hold")
        gevent.sleep(options.wsd_hold)
        result["phases"]["hold"] = {"start": ramp_end, "end": time.time(), "connections": self.total("open_now")}
        self._mark("broadcast")
        broadcasts = []
        for seq in range(options.wsd_broadcasts):
            expected = self.total("open_now")
            published_ns = time.time_ns()
            self._publish(options.wsd_api, {"ts": published_ns, "seq": seq})
            deadline = time.time() + options.wsd_broadcast_timeout
            while time.time() < deadline and self.received(seq) < expected:
                gevent.sleep(0.25)
            broadcasts.append({"seq": seq, "published_ns": published_ns, "expected": expected})
            gevent.sleep(1.0)  # let the gauges settle before the next one
        result["phases"]["broadcast"] = {"start": broadcasts[0]["published_ns"] / 1e9 if broadcasts else None,
                                         "end": time.time()}  # fmt: skip
        result["broadcasts"] = broadcasts
        # Collect every worker's samples.
        for client_id in list(self.gauges):
            self.environment.runner.send_message("wsd_report_request", None, client_id=client_id)
        deadline = time.time() + 60
        while time.time() < deadline and len(self.reports) < len(self.gauges):
            gevent.sleep(0.25)
        self._mark("end")

    def _publish(self, api: str, data: dict) -> None:
        body = json.dumps({"channel": SHARED_CHANNEL, "data": data}).encode()
        request = urllib.request.Request(f"{api}/api/publish", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()

    def _write(self, options, result: dict) -> None:
        result["workers"] = list(self.reports.values()) or list(self.gauges.values())
        result["timeline"] = self.timeline
        stats = self.environment.runner.stats
        result["locust_stats"] = {
            f"{entry.method} {entry.name}": {
                "requests": entry.num_requests,
                "failures": entry.num_failures,
                "p50_ms": entry.get_response_time_percentile(0.5),
                "p99_ms": entry.get_response_time_percentile(0.99),
                "max_ms": entry.max_response_time,
            }
            for entry in stats.entries.values()
        }
        result["locust_errors"] = [
            {"name": e.name, "error": e.error, "occurrences": e.occurrences} for e in stats.errors.values()
        ]
        if options.wsd_result:
            with open(options.wsd_result, "w") as handle:
                json.dump(result, handle)
