"""Fan-out benchmark: N WebSocket subscribers spread over wsd's workers, one publisher.

Starts `wsd serve`, opens N subscriber connections from K load-generator processes (picows + uvloop,
one callback-driven listener per connection, no per-connection Task), subscribes them all to one
channel, then measures

1. bursts: M messages published back to back in one ``POST /api/publish_batch``; the time from
   the publish to the last delivery at the last subscriber gives deliveries/s = N*M/elapsed, and every
   subscriber is checked to have got exactly those M messages with consecutive offsets;
2. a paced phase: ``--rate`` messages/s over ``POST /api/publish``, each carrying its publish time
   (``time.time_ns()``), so every subscriber records publish-to-receive latency (same host clock).

Server CPU (all wsd processes, from psutil) is sampled over each burst, as is the load generator's,
so the report shows which side was the bottleneck. Prints a Markdown table and writes
``fanout-<tag>.json`` and ``fanout-<tag>.md`` under ``--out``.

    .venv/bin/python bench/fanout.py --subscribers 10000 --workers 2 --tag 2w-10k
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import multiprocessing
import multiprocessing.connection
import os
import platform
import shlex
import socket
import statistics
import sys
import tempfile
import time
from array import array
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import psutil
import uvloop
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
from tests.wsd_process import WsdProcess  # noqa: E402  (the repo root is only on the path from here)

CHANNEL = "bench"

# One source address has ~28,000 ephemeral ports towards one destination; staying well under that
# leaves room for TIME_WAIT sockets of earlier runs.
CONNECTIONS_PER_SOURCE_ADDRESS = 5000

# Linux socket option (not exported by the socket module): defer the port choice from bind() to
# connect(), so the port only has to be unique per 4-tuple rather than per source address.
IP_BIND_ADDRESS_NO_PORT = 24

# Handshakes in flight per load-generator process; more only deepens the server's accept backlog.
CONNECT_CONCURRENCY = 200

# A subscriber's frames are ~100-200 bytes; picows grows the buffer when a burst arrives in one read.
READ_BUFFER_INIT_SIZE = 2048

# How long a phase may take past its expected end before the load generator reports what it has.
PHASE_GRACE_SECONDS = 60.0


# --------------------------------------------------------------------------------------------------
# Load generator: runs in each of the K client processes.
# --------------------------------------------------------------------------------------------------


class PhaseRecorder:
    """What one client process counts during a phase (burst or paced), shared by all its listeners."""

    def __init__(self) -> None:
        self.connections = 0
        self.expected_per_connection = 0
        self.record_latency = False
        self.reset(0, False)
        self.on_complete: Any = None

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


class SubscriberListener(WSListener):
    """One subscriber connection: counts deliveries and checks that offsets are consecutive."""

    def __init__(self, recorder: PhaseRecorder) -> None:
        super().__init__()
        self.recorder = recorder
        self.transport: WSTransport | None = None
        self.previous_offset = -1
        self.count = 0
        self.subscribed = False
        self.error: str | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type != WSMsgType.TEXT:
            if frame.msg_type == WSMsgType.CLOSE:
                self.error = f"closed by server: {frame.get_close_code()} {frame.get_close_message()}"
                transport.disconnect()
            return
        now = time.time_ns()
        message = orjson.loads(frame.get_payload_as_memoryview())
        if message["op"] != "msg":
            if message["op"] == "ok":
                self.subscribed = True
            else:
                self.error = str(message)
            return
        recorder = self.recorder
        offset = message["off"]
        if self.previous_offset >= 0 and offset != self.previous_offset + 1:
            recorder.out_of_order += 1
        self.previous_offset = offset
        self.count += 1
        recorder.received += 1
        if recorder.first_receive_ns == 0:
            recorder.first_receive_ns = now
        recorder.last_receive_ns = now
        if self.count == 1:
            recorder.first_offsets[offset] += 1
        if recorder.record_latency:
            recorder.latencies_us.append((now - message["data"]["t"]) // 1000)
        if self.count == recorder.expected_per_connection:
            recorder.complete_connections += 1
            if recorder.complete_connections == recorder.connections and recorder.on_complete:
                recorder.on_complete()


class ClientProcess:
    """The event loop side of one load-generator process; commands arrive over a Pipe."""

    def __init__(
        self,
        commands: multiprocessing.connection.Connection,
        replies: multiprocessing.connection.Connection,
        url: str,
        source_addresses: list[str],
    ):
        # Two one-way pipes: the loop makes the descriptor it watches non-blocking, and a large reply
        # written to a non-blocking pipe fails half-way; replies go out on a pipe the loop never sees.
        self.commands = commands
        self.replies = replies
        self.url = url
        self.source_addresses = source_addresses
        self.recorder = PhaseRecorder()
        self.listeners: list[SubscriberListener] = []
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
            for listener in self.listeners:
                if listener.transport is not None:
                    listener.transport.disconnect()
            self.finished.set()

    async def connect(self, count: int, first_index: int) -> None:
        started = time.monotonic()
        workers: Counter[str] = Counter()
        failures: Counter[str] = Counter()
        next_index = iter(range(count))

        async def connector() -> None:
            for index in next_index:
                source = self.source_addresses[(first_index + index) // CONNECTIONS_PER_SOURCE_ADDRESS]
                try:
                    transport, listener = await ws_connect(
                        lambda: SubscriberListener(self.recorder),
                        self.url,
                        socket_factory=lambda _url, source=source: _bound_socket(source),
                        read_buffer_init_size=READ_BUFFER_INIT_SIZE,
                        use_aiofastnet=False,
                        websocket_handshake_timeout=30,
                    )
                except (TimeoutError, OSError, RuntimeError) as exc:
                    failures[f"{type(exc).__name__}: {exc}"[:120]] += 1
                    continue
                workers[transport.response.headers.get("X-Wsd-Worker", "?")] += 1
                self.listeners.append(listener)

        await asyncio.gather(*(connector() for _ in range(min(CONNECT_CONCURRENCY, count))))
        self.recorder.connections = len(self.listeners)
        self.replies.send(
            {
                "connected": len(self.listeners),
                "failed": sum(failures.values()),
                "failures": dict(failures.most_common(5)),
                "seconds": time.monotonic() - started,
                "workers": dict(workers),
            }
        )

    async def subscribe(self) -> None:
        started = time.monotonic()
        request = orjson.dumps({"op": "sub", "ch": CHANNEL, "id": 1})
        for listener in self.listeners:
            listener.transport.send(WSMsgType.TEXT, request)
        deadline = started + PHASE_GRACE_SECONDS
        while time.monotonic() < deadline:
            pending = sum(not listener.subscribed and listener.error is None for listener in self.listeners)
            if pending == 0:
                break
            await asyncio.sleep(0.05)
        errors = Counter(listener.error for listener in self.listeners if listener.error)
        self.replies.send(
            {
                "subscribed": sum(listener.subscribed for listener in self.listeners),
                "errors": dict(errors.most_common(5)),
                "seconds": time.monotonic() - started,
            }
        )

    def arm(self, expected_per_connection: int, record_latency: bool, timeout: float) -> None:
        """Start counting a phase; report when every connection has its messages, or at `timeout`."""
        for listener in self.listeners:
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
        counts = Counter(listener.count for listener in self.listeners)
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
                "disconnected": sum(listener.error is not None for listener in self.listeners),
                "latencies_us": recorder.latencies_us.tobytes(),
            }
        )


def _bound_socket(source_address: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
    sock.bind((source_address, 0))
    sock.setblocking(False)
    return sock


def client_process_main(
    commands: multiprocessing.connection.Connection,
    replies: multiprocessing.connection.Connection,
    url: str,
    source_addresses: list[str],
) -> None:
    """Entry point of one load-generator process."""
    uvloop.run(ClientProcess(commands, replies, url, source_addresses).run())


# --------------------------------------------------------------------------------------------------
# Coordinator: the parent process starts wsd and the clients, publishes, and reports.
# --------------------------------------------------------------------------------------------------


class LoadGenerator:
    """The K client processes, driven in lock-step over their pipes."""

    def __init__(self, url: str, processes: int, subscribers: int):
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
                target=client_process_main, args=(command_reader, reply_writer, url, source_addresses)
            )
            process.start()
            self.command_pipes.append(command_writer)
            self.pipes.append(reply_reader)
            self.processes.append(process)
        # Wait until every process has imported and runs its loop, so start-up is not timed as connecting.
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


class CpuSampler:
    """CPU seconds used by a set of processes between two snapshots."""

    def __init__(self, processes: dict[str, psutil.Process]):
        self.processes = processes
        self.started: dict[str, float] = {}
        self.started_wall = 0.0

    def start(self) -> None:
        self.started = {name: _cpu_seconds(p) for name, p in self.processes.items()}
        self.started_wall = time.monotonic()

    def stop(self) -> dict[str, dict[str, float]]:
        wall = time.monotonic() - self.started_wall
        used = {name: _cpu_seconds(p) - self.started[name] for name, p in self.processes.items()}
        return {name: {"cpu_seconds": seconds, "busy": seconds / wall} for name, seconds in used.items()}


def _cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


class Publisher:
    """Publishes over wsd's HTTP API on one keep-alive connection."""

    def __init__(self, api_port: int, payload_bytes: int):
        self.connection = http.client.HTTPConnection("127.0.0.1", api_port, timeout=60)
        self.padding = "x" * max(0, payload_bytes - len('{"t":1700000000000000000,"seq":0,"pad":""}'))

    def post(self, path: str, body: bytes) -> dict:
        self.connection.request("POST", path, body, {"Content-Type": "application/json"})
        response = self.connection.getresponse()
        payload = response.read()
        if response.status != 200:
            raise RuntimeError(f"POST {path} answered {response.status}: {payload[:300]!r}")
        return json.loads(payload)

    def publish_burst(self, messages: int) -> list[int]:
        # Stamped once for the whole batch: burst latency is not what this phase measures.
        now = time.time_ns()
        batch = [{"channel": CHANNEL, "data": {"t": now, "seq": i, "pad": self.padding}} for i in range(messages)]
        return self.post("/api/publish_batch", orjson.dumps(batch))["offsets"]

    def publish_one(self, seq: int) -> int:
        data = {"t": time.time_ns(), "seq": seq, "pad": self.padding}
        return self.post("/api/publish", orjson.dumps({"channel": CHANNEL, "data": data}))["offset"]


def merge_phase(reports: list[dict], expected_per_connection: int, first_offset: int | None) -> dict[str, Any]:
    """Combine the client processes' phase reports and check every delivery arrived, in order."""
    connections = sum(r["connections"] for r in reports)
    received = sum(r["received"] for r in reports)
    first_offsets: Counter[int] = Counter()
    for report in reports:
        first_offsets.update({int(k): v for k, v in report["first_offsets"].items()})
    wrong_start = sum(v for k, v in first_offsets.items() if first_offset is not None and k != first_offset)
    expected = connections * expected_per_connection
    return {
        "expected_deliveries": expected,
        "deliveries": received,
        "missing": max(0, expected - received),
        "extra": max(0, received - expected),
        "incomplete_connections": connections - sum(r["complete_connections"] for r in reports),
        "out_of_order": sum(r["out_of_order"] for r in reports),
        "wrong_first_offset": wrong_start,
        "disconnected": sum(r["disconnected"] for r in reports),
        "last_receive_ns": max(r["last_receive_ns"] for r in reports),
    }


def percentile(sorted_values: list[int], fraction: float) -> int:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return 0
    rank = max(0, min(len(sorted_values) - 1, int(round(fraction * len(sorted_values) + 0.5)) - 1))
    return sorted_values[rank]


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    import picows

    cpu_model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "uname": " ".join(platform.uname()),
        "cpu_model": cpu_model,
        "nproc": os.cpu_count(),
        "memory_bytes": psutil.virtual_memory().total,
        "python": platform.python_version(),
        "picows": picows.__version__,
        "uvloop": uvloop.__version__,
    }


def server_processes(wsd: WsdProcess) -> dict[str, psutil.Process]:
    """The supervisor and each worker, named by role and pid."""
    supervisor = psutil.Process(wsd.proc.pid)
    processes = {f"supervisor:{supervisor.pid}": supervisor}
    for worker in wsd.status()["workers"]:
        processes[f"worker:{worker['pid']}"] = psutil.Process(worker["pid"])
    return processes


def rss_bytes(processes: dict[str, psutil.Process]) -> dict[str, int]:
    return {name: process.memory_info().rss for name, process in processes.items()}


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Start wsd and the load generator, run the phases, and return the report."""
    flags = ["--log-level", "warning"]
    if args.write_buffer_limit:
        flags += ["--write-buffer-limit", str(args.write_buffer_limit)]
    workdir = Path(tempfile.mkdtemp(prefix="wsd-fanout-"))
    wsd = WsdProcess(workdir, workers=args.workers, flags=flags)
    wsd.start()
    load: LoadGenerator | None = None
    try:
        servers = server_processes(wsd)
        load = LoadGenerator(wsd.url, args.client_processes, args.subscribers)
        clients = {f"client:{p.pid}": psutil.Process(p.pid) for p in load.processes}
        clients[f"coordinator:{os.getpid()}"] = psutil.Process()
        server_cpu, client_cpu = CpuSampler(servers), CpuSampler(clients)

        # Connect: all processes at once, so the server sees the combined handshake rate.
        started = time.monotonic()
        first_indexes = [sum(load.per_process[:i]) for i in range(len(load.per_process))]
        connect_replies = load.request(
            "connect", [{"count": n, "first_index": f} for n, f in zip(load.per_process, first_indexes, strict=True)]
        )
        connect_seconds = time.monotonic() - started
        print(f"connect: {[r['connected'] for r in connect_replies]} in {connect_seconds:.2f}s", file=sys.stderr)
        connected = sum(r["connected"] for r in connect_replies)
        per_worker: Counter[str] = Counter()
        for reply in connect_replies:
            per_worker.update(reply["workers"])
        failures = [r["failures"] for r in connect_replies if r["failed"]]
        if connected < args.subscribers:
            raise RuntimeError(f"only {connected} of {args.subscribers} subscribers connected: {failures}")

        started = time.monotonic()
        subscribe_replies = load.request("subscribe")
        subscribe_seconds = time.monotonic() - started
        subscribed = sum(r["subscribed"] for r in subscribe_replies)
        if subscribed < connected:
            errors = [r["errors"] for r in subscribe_replies]
            raise RuntimeError(f"only {subscribed} of {connected} subscribers got their ok: {errors}")
        rss_subscribed = rss_bytes(servers)

        publisher = Publisher(wsd.api_port, args.payload_bytes)
        rounds = []
        for round_index in range(args.rounds):
            load.request(
                "arm",
                {"expected_per_connection": args.messages, "record_latency": False, "timeout": PHASE_GRACE_SECONDS},
            )
            server_cpu.start()
            client_cpu.start()
            publish_started_ns = time.time_ns()
            offsets = publisher.publish_burst(args.messages)
            publish_returned_ns = time.time_ns()
            reports = [load.reply(i, PHASE_GRACE_SECONDS + 30) for i in range(len(load.pipes))]
            server_busy, client_busy = server_cpu.stop(), client_cpu.stop()
            check = merge_phase(reports, args.messages, offsets[0])
            elapsed = (check["last_receive_ns"] - publish_started_ns) / 1e9
            server_seconds = sum(p["cpu_seconds"] for p in server_busy.values())
            rounds.append(
                {
                    "round": round_index + 1,
                    "elapsed_seconds": elapsed,
                    "publish_request_seconds": (publish_returned_ns - publish_started_ns) / 1e9,
                    "deliveries_per_second": check["deliveries"] / elapsed if elapsed > 0 else 0.0,
                    "server_cpu_seconds": server_seconds,
                    "server_cpu_us_per_delivery": server_seconds / max(1, check["deliveries"]) * 1e6,
                    "server_processes": server_busy,
                    "load_generator_processes": client_busy,
                    "first_offset": offsets[0],
                    **{k: v for k, v in check.items() if k != "last_receive_ns"},
                }
            )
            print(
                f"round {round_index + 1}: {rounds[-1]['deliveries_per_second']:,.0f} deliveries/s "
                f"in {elapsed:.3f}s, missing {check['missing']}, out of order {check['out_of_order']}",
                file=sys.stderr,
            )
            time.sleep(0.5)
        rss_after_bursts = rss_bytes(servers)

        # Paced: one message every 1/rate s, each stamped just before its request is sent.
        paced_messages = max(1, round(args.rate * args.paced_seconds))
        load.request(
            "arm",
            {
                "expected_per_connection": paced_messages,
                "record_latency": True,
                "timeout": args.paced_seconds + PHASE_GRACE_SECONDS,
            },
        )
        paced_started = time.monotonic()
        paced_offsets = []
        for seq in range(paced_messages):
            due = paced_started + seq / args.rate
            time.sleep(max(0.0, due - time.monotonic()))
            paced_offsets.append(publisher.publish_one(seq))
        reports = [load.reply(i, PHASE_GRACE_SECONDS + 30) for i in range(len(load.pipes))]
        paced_check = merge_phase(reports, paced_messages, paced_offsets[0])
        latencies: list[int] = []
        for report in reports:
            samples = array("q")
            samples.frombytes(report["latencies_us"])
            latencies.extend(samples)
        latencies.sort()
        paced = {
            "messages": paced_messages,
            "rate": args.rate,
            "seconds": args.paced_seconds,
            **{k: v for k, v in paced_check.items() if k != "last_receive_ns"},
            "latency_samples": len(latencies),
            "latency_us": {
                "p50": percentile(latencies, 0.50),
                "p90": percentile(latencies, 0.90),
                "p99": percentile(latencies, 0.99),
                "p999": percentile(latencies, 0.999),
                "max": latencies[-1] if latencies else 0,
                "min": latencies[0] if latencies else 0,
            },
        }
        return {
            "connect": {
                "subscribers": connected,
                "seconds": connect_seconds,
                "per_second": connected / connect_seconds,
                "per_worker": dict(per_worker),
                "failed": sum(r["failed"] for r in connect_replies),
            },
            "subscribe": {"seconds": subscribe_seconds, "subscribed": subscribed},
            "server_rss_bytes": {"after_subscribe": rss_subscribed, "after_bursts": rss_after_bursts},
            "rounds": rounds,
            "burst": summarize_bursts(rounds),
            "paced": paced,
        }
    finally:
        if load is not None:
            load.close()
        wsd.kill()


def summarize_bursts(rounds: list[dict]) -> dict[str, Any]:
    """Medians and spread over rounds, plus the totals that must be zero."""
    return {
        "deliveries_per_second": spread([r["deliveries_per_second"] for r in rounds]),
        "elapsed_seconds": spread([r["elapsed_seconds"] for r in rounds]),
        "server_cpu_us_per_delivery": spread([r["server_cpu_us_per_delivery"] for r in rounds]),
        "deliveries": sum(r["deliveries"] for r in rounds),
        "expected_deliveries": sum(r["expected_deliveries"] for r in rounds),
        "missing": sum(r["missing"] for r in rounds),
        "extra": sum(r["extra"] for r in rounds),
        "out_of_order": sum(r["out_of_order"] for r in rounds),
        "wrong_first_offset": sum(r["wrong_first_offset"] for r in rounds),
        "busy_median": {
            role: statistics.median(
                sum(p["busy"] for name, p in r[key].items() if name.startswith(role)) for r in rounds
            )
            for key, role in (
                ("server_processes", "worker"),
                ("server_processes", "supervisor"),
                ("load_generator_processes", "client"),
                ("load_generator_processes", "coordinator"),
            )
        },
    }


def markdown_report(report: dict[str, Any]) -> str:
    """A short table of the headline numbers, then how they were made."""
    params, burst, paced, connect = report["parameters"], report["burst"], report["paced"], report["connect"]
    rate = burst["deliveries_per_second"]
    latency = paced["latency_us"]
    busy = burst["busy_median"]
    rss = report["server_rss_bytes"]["after_bursts"]
    rows = [
        (
            "subscribers / workers / client processes",
            f"{params['subscribers']:,} / {params['workers']} / {params['client_processes']}",
        ),
        (
            "connect",
            f"{connect['seconds']:.2f} s ({connect['per_second']:,.0f} conn/s); per worker {connect['per_worker']}",
        ),
        (
            f"burst deliveries/s (median of {params['rounds']}, min-max)",
            f"{rate['median']:,.0f} ({rate['min']:,.0f} - {rate['max']:,.0f})",
        ),
        (
            f"burst time, {params['messages']} msgs x {params['subscribers']:,} subs (median)",
            f"{burst['elapsed_seconds']['median'] * 1000:.0f} ms",
        ),
        (
            "deliveries checked (missing / out of order / wrong start)",
            f"{burst['deliveries']:,} of {burst['expected_deliveries']:,} "
            f"({burst['missing']} / {burst['out_of_order']} / {burst['wrong_first_offset']})",
        ),
        ("server CPU per delivery (median)", f"{burst['server_cpu_us_per_delivery']['median']:.2f} µs"),
        (
            "busy during burst (CPU-s per wall-s, summed per role)",
            f"workers {busy['worker']:.2f}, supervisor {busy['supervisor']:.2f}, "
            f"load generator {busy['client']:.2f}, coordinator {busy['coordinator']:.2f}",
        ),
        (
            f"paced latency, {paced['rate']:g} msg/s x {paced['seconds']:g} s, {paced['latency_samples']:,} samples",
            f"p50 {latency['p50'] / 1000:.2f} ms, p99 {latency['p99'] / 1000:.2f} ms, "
            f"max {latency['max'] / 1000:.2f} ms",
        ),
        (
            "paced deliveries (missing / out of order)",
            f"{paced['deliveries']:,} of {paced['expected_deliveries']:,} "
            f"({paced['missing']} / {paced['out_of_order']})",
        ),
        ("server RSS after bursts", ", ".join(f"{name} {value / 2**20:.0f} MiB" for name, value in rss.items())),
    ]
    machine = report["machine"]
    lines = [
        f"# wsd fan-out benchmark: {params['tag']}",
        "",
        "| metric | value |",
        "| --- | --- |",
        *(f"| {name} | {value} |" for name, value in rows),
        "",
        f"Command: `{report['command']}`",
        "",
        f"Machine: {machine['cpu_model']}, {machine['nproc']} CPUs (shared by server and load generator), "
        f"Python {machine['python']}, picows {machine['picows']}, uvloop {machine['uvloop']}; "
        f"`{machine['uname']}`",
        "",
        f"Publisher: HTTP API (bursts: one `POST /api/publish_batch` of {params['messages']} messages; "
        f"paced: one `POST /api/publish` per message). Latency = receive time - publish time stamped "
        f"just before the request, same host clock. Started {report['started']}.",
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=10000, help="subscriber connections (default 10000)")
    parser.add_argument("--workers", type=int, default=2, help="wsd worker processes (default 2)")
    parser.add_argument("--client-processes", type=int, default=2, help="load-generator processes (default 2)")
    parser.add_argument("--messages", type=int, default=100, help="messages per burst (default 100, max 1000)")
    parser.add_argument("--rounds", type=int, default=5, help="bursts to run (default 5)")
    parser.add_argument("--payload-bytes", type=int, default=64, help="size of each message's data (default 64)")
    parser.add_argument("--rate", type=float, default=5.0, help="messages/s in the paced phase (default 5)")
    parser.add_argument("--paced-seconds", type=float, default=10.0, help="length of the paced phase (default 10)")
    parser.add_argument("--write-buffer-limit", type=int, default=0, help="pass to wsd serve (default: its own)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results", help="results folder")
    parser.add_argument("--tag", default="", help="name of the result files (default: a timestamp)")
    args = parser.parse_args(argv)
    if not 1 <= args.messages <= 1000:
        parser.error("--messages must be 1-1000 (one publish_batch request carries at most 1000)")
    if args.subscribers < args.client_processes:
        parser.error("--subscribers must be at least --client-processes")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.tag = args.tag or time.strftime("%Y%m%d-%H%M%S")
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    results = run_benchmark(args)
    report = {
        "benchmark": "fanout",
        "started": started,
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "parameters": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "publisher": "http: POST /api/publish_batch for bursts, POST /api/publish for the paced phase",
        "machine": machine_info(),
        **results,
    }
    markdown = markdown_report(report)
    print(markdown)
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / f"fanout-{args.tag}.json"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    (args.out / f"fanout-{args.tag}.md").write_text(markdown)
    print(f"wrote {json_path} and {json_path.with_suffix('.md')}", file=sys.stderr)
    failed = report["burst"]["missing"] + report["burst"]["out_of_order"] + report["burst"]["wrong_first_offset"]
    failed += report["paced"]["missing"] + report["paced"]["out_of_order"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
