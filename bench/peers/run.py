"""Fan-out against the peers: the same workloads, the same load generator (harness.loadgen),
against wsd (2 workers), Node.js `ws`, socket.io 4 + Redis adapter on 2 processes, Python
`websockets` with broadcast(), and wsd as one host of a cluster (`wsd_cluster`: `--cluster` on a
local redis-server, every message through Redis). Each peer is installed by `--setup` (npm ci, pip, apt for Redis),
started here on free ports, measured, and stopped before the next one starts.

Workloads, with N subscribers each on the shared channel and on its own `user:<i>`:
  1. burst: M messages of P bytes back to back (one publish_batch) -> deliveries/s, server CPU
     per delivery (all the peer's processes, Redis included);
  2. paced: R messages/s for S seconds, for each rate -> publish-to-receive latency p50/p99/max;
  3. targeted: K messages to every user channel (publish_batch of 1000) -> messages/s;
  4. handshakes: H fresh connections opened at once by a second load generator (no subscriptions)
     -> handshakes/s and server CPU per handshake.
`--workloads` picks some of them (default all), `--peers` some peers, to keep a run short.
Writes peers-<tag>.json and peers-<tag>.md (wsd/peer ratios from the same run) under --out.

    flock /tmp/wsd-bench.lock .venv/bin/python -m bench.peers.run --setup --tag 2core-10k

(from the repository root; `make bench-peers` does the same).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import psutil

from bench.measure import RESULTS_DIR, CpuSampler, command_line, machine_info, percentile, spread
from harness.listener import user_channel
from harness.loadgen import (
    CONNECTIONS_PER_SOURCE_ADDRESS,
    PHASE_GRACE_SECONDS,
    LoadGenerator,
    merge_phase,
    phase_latencies_us,
)
from harness.net import free_port
from harness.publisher import Publisher
from harness.wsd_process import WsdProcess

PEERS_DIR = Path(__file__).resolve().parent
ALL_PEERS = ["wsd", "node_ws", "socketio", "websockets", "wsd_cluster"]
ALL_WORKLOADS = ["burst", "paced", "targeted", "handshakes"]
TARGETED_BATCH = 1000  # wsd's publish_batch limit
HANDSHAKE_FIRST_ADDRESS = 100  # the handshake rounds connect from 127.0.0.100, .101, ...
WEBSOCKETS_VERSION = "17.4"


# --------------------------------------------------------------------------------------------------
# Peers: set-up, start, stop.
# --------------------------------------------------------------------------------------------------


def setup_peers(peers: list[str]) -> None:
    """Install what the chosen peers need: npm packages from their lock files, websockets, Redis."""
    for name in ("node_ws", "socketio"):
        if name in peers and not (PEERS_DIR / name / "node_modules").is_dir():
            _run(["npm", "ci", "--no-audit", "--no-fund"], cwd=PEERS_DIR / name)
    if "websockets" in peers and importlib.util.find_spec("websockets") is None:
        _run([sys.executable, "-m", "pip", "install", "-q", f"websockets=={WEBSOCKETS_VERSION}"])
    if {"socketio", "wsd_cluster"} & set(peers) and shutil.which("redis-server") is None:
        if os.geteuid() != 0:
            raise RuntimeError("socket.io needs redis-server: apt-get install redis-server (as root)")
        _run(["apt-get", "update", "-q"])
        _run(
            ["apt-get", "install", "-y", "-q", "redis-server"], env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        )


def _run(command: list[str], **kwargs: Any) -> None:
    print(f"setup: {shlex.join(command)}", file=sys.stderr)
    subprocess.run(command, check=True, **kwargs)


def peer_missing(name: str) -> str | None:
    """Why a peer cannot run here (None if it can)."""
    if name in ("node_ws", "socketio"):
        if shutil.which("node") is None:
            return "node is not installed"
        if not (PEERS_DIR / name / "node_modules").is_dir():
            return f"bench/peers/{name}/node_modules missing (run with --setup)"
    if name in ("socketio", "wsd_cluster") and shutil.which("redis-server") is None:
        return "redis-server is not installed (run with --setup as root)"
    if name == "websockets" and importlib.util.find_spec("websockets") is None:
        return "Python websockets is not installed (run with --setup)"
    return None


class RunningPeer:
    """A started peer: where to connect, where to publish, which processes to charge CPU to."""

    def __init__(self, name: str, workdir: Path):
        self.name = name
        self.workdir = workdir
        self.children: list[subprocess.Popen] = []
        self.wsd: WsdProcess | None = None
        self.urls: list[str] = []
        self.api_port = 0
        self.socketio = name == "socketio"
        self.version = ""

    def start(self, workers: int) -> None:
        if self.name == "wsd":
            self.wsd = WsdProcess(self.workdir, workers=workers, flags=["--log-level", "warning"])
            self.wsd.start()
            self.urls, self.api_port = [self.wsd.url], self.wsd.api_port
            self.version = f"wsd {workers} workers"
        elif self.name == "wsd_cluster":
            # One host of a cluster: every message goes through Redis (its CPU is the server's too).
            redis_port = self._start_redis()
            flags = ["--log-level", "warning", "--cluster", f"redis://127.0.0.1:{redis_port}"]
            self.wsd = WsdProcess(self.workdir, workers=workers, flags=flags)
            self.wsd.start()
            self.urls, self.api_port = [self.wsd.url], self.wsd.api_port
            self.version = f"wsd {workers} workers --cluster, redis {_redis_version()}"
        elif self.name == "node_ws":
            port = free_port()
            self._spawn(["node", "server.js", str(port)], PEERS_DIR / "node_ws")
            self.urls, self.api_port = [f"ws://127.0.0.1:{port}/"], port
            self.version = "ws " + _node_package_version("node_ws", "ws") + ", node " + _node_version()
        elif self.name == "socketio":
            redis_port = self._start_redis()
            ports = [free_port() for _ in range(workers)]
            for port in ports:
                self._spawn(["node", "server.js", str(port), str(redis_port)], PEERS_DIR / "socketio")
            self.urls = [f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket" for port in ports]
            self.api_port = ports[0]
            self.version = (
                f"socket.io {_node_package_version('socketio', 'socket.io')}, "
                f"@socket.io/redis-adapter {_node_package_version('socketio', '@socket.io/redis-adapter')}, "
                f"{workers} processes, redis {_redis_version()}, node {_node_version()}"
            )
        elif self.name == "websockets":
            port, api_port = free_port(), free_port()
            self._spawn([sys.executable, "server.py", str(port), str(api_port)], PEERS_DIR / "websockets")
            self.urls, self.api_port = [f"ws://127.0.0.1:{port}/"], api_port
            import websockets

            self.version = f"websockets {websockets.__version__} (uvloop), broadcast()"
        else:
            raise ValueError(f"unknown peer {self.name!r}; known: {', '.join(ALL_PEERS)}")

    def _start_redis(self) -> int:
        port = free_port()
        self._spawn(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            self.workdir,
            ready=b"Ready to accept connections",
        )
        return port

    def _spawn(self, command: list[str], cwd: Path, ready: bytes = b"ready") -> None:
        log = open(self.workdir / f"{self.name}-{len(self.children)}.log", "wb+")
        process = subprocess.Popen(command, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
        self.children.append(process)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            log.seek(0)
            output = log.read()
            if ready in output:
                return
            if process.poll() is not None:
                raise RuntimeError(f"{shlex.join(command)} exited with {process.returncode}: {output[-2000:]!r}")
            time.sleep(0.05)
        raise TimeoutError(f"{shlex.join(command)} not ready after 30 s")

    def processes(self) -> dict[str, psutil.Process]:
        found = {f"{Path(p.args[0]).name}:{p.pid}": psutil.Process(p.pid) for p in self.children}
        if self.wsd is not None:
            found.update(self.wsd.processes())
        return found

    def stop(self) -> None:
        if self.wsd is not None:
            self.wsd.kill()
        for process in reversed(self.children):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def _node_version() -> str:
    return subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()


def _node_package_version(peer: str, package: str) -> str:
    return json.loads((PEERS_DIR / peer / "node_modules" / package / "package.json").read_text())["version"]


def _redis_version() -> str:
    output = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout
    return next((word.split("=")[1] for word in output.split() if word.startswith("v=")), "?")


# --------------------------------------------------------------------------------------------------
# Workloads.
# --------------------------------------------------------------------------------------------------


def run_burst(args: argparse.Namespace, load: LoadGenerator, publisher: Publisher, cpu: CpuSampler) -> dict:
    # The load generator's own CPU shows which side was the bottleneck (they share the cores).
    client_cpu = CpuSampler({f"client:{p.pid}": psutil.Process(p.pid) for p in load.processes})
    rounds = []
    for _ in range(args.rounds):
        load.arm(expected_per_connection=args.messages, record_latency=False, timeout=PHASE_GRACE_SECONDS)
        cpu.start()
        client_cpu.start()
        started_ns = time.time_ns()
        offsets = publisher.publish_burst(args.messages)
        reports = load.collect(PHASE_GRACE_SECONDS + 30)
        busy = cpu.stop()
        client_busy = client_cpu.stop()
        check = merge_phase(reports, args.messages, offsets[0])
        elapsed = (check.pop("last_receive_ns") - started_ns) / 1e9
        cpu_seconds = sum(p["cpu_seconds"] for p in busy.values())
        rounds.append(
            {
                "elapsed_seconds": elapsed,
                "deliveries_per_second": check["deliveries"] / elapsed if elapsed > 0 else 0.0,
                "server_cpu_us_per_delivery": cpu_seconds / max(1, check["deliveries"]) * 1e6,
                "server_busy": sum(p["busy"] for p in busy.values()),
                "load_generator_busy": sum(p["busy"] for p in client_busy.values()),
                **check,
            }
        )
        time.sleep(0.3)
    return {
        "messages": args.messages,
        "payload_bytes": args.payload_bytes,
        "deliveries_per_second": spread([r["deliveries_per_second"] for r in rounds]),
        "server_cpu_us_per_delivery": spread([r["server_cpu_us_per_delivery"] for r in rounds]),
        "server_busy_median": statistics.median(r["server_busy"] for r in rounds),
        "load_generator_busy_median": statistics.median(r["load_generator_busy"] for r in rounds),
        **_totals(rounds),
        "rounds": rounds,
    }


def run_paced(
    args: argparse.Namespace, load: LoadGenerator, publisher: Publisher, rate: float, cpu: CpuSampler
) -> dict:
    count = max(1, round(rate * args.paced_seconds))
    client_cpu = CpuSampler({f"client:{p.pid}": psutil.Process(p.pid) for p in load.processes})
    load.arm(expected_per_connection=count, record_latency=True, timeout=args.paced_seconds + PHASE_GRACE_SECONDS)
    cpu.start()
    client_cpu.start()
    started = time.monotonic()
    offsets = []
    for seq in range(count):
        time.sleep(max(0.0, started + seq / rate - time.monotonic()))
        offsets.append(publisher.publish_one(seq))
    reports = load.collect(args.paced_seconds + PHASE_GRACE_SECONDS + 30)
    server_seconds = sum(p["cpu_seconds"] for p in cpu.stop().values())
    client_seconds = sum(p["cpu_seconds"] for p in client_cpu.stop().values())
    check = merge_phase(reports, count, offsets[0])
    check.pop("last_receive_ns")
    latencies = phase_latencies_us(reports)
    return {
        "rate": rate,
        "seconds": args.paced_seconds,
        "messages": count,
        "latency_samples": len(latencies),
        "latency_us": {
            "p50": percentile(latencies, 0.50),
            "p99": percentile(latencies, 0.99),
            "max": latencies[-1] if latencies else 0,
        },
        # Where one message's fan-out spends its CPU (both sides share the cores).
        "server_cpu_us_per_delivery": server_seconds / max(1, check["deliveries"]) * 1e6,
        "load_generator_cpu_us_per_delivery": client_seconds / max(1, check["deliveries"]) * 1e6,
        **check,
    }


def run_targeted(args: argparse.Namespace, load: LoadGenerator, publisher: Publisher, cpu: CpuSampler) -> dict:
    rounds = []
    for _ in range(args.targeted_rounds):
        load.arm(expected_per_connection=args.targeted_messages, record_latency=False, timeout=PHASE_GRACE_SECONDS)
        cpu.start()
        started_ns = time.time_ns()
        items = [
            {"channel": user_channel(index), "data": {"t": started_ns, "seq": seq, "pad": publisher.padding}}
            for seq in range(args.targeted_messages)
            for index in range(load.subscribers)
        ]
        for first in range(0, len(items), TARGETED_BATCH):
            publisher.post("/api/publish_batch", orjson.dumps(items[first : first + TARGETED_BATCH]))
        reports = load.collect(PHASE_GRACE_SECONDS + 30)
        busy = cpu.stop()
        check = merge_phase(reports, args.targeted_messages, None)  # each user channel has its own offsets
        elapsed = (check.pop("last_receive_ns") - started_ns) / 1e9
        cpu_seconds = sum(p["cpu_seconds"] for p in busy.values())
        rounds.append(
            {
                "elapsed_seconds": elapsed,
                "messages_per_second": check["deliveries"] / elapsed if elapsed > 0 else 0.0,
                "server_cpu_us_per_message": cpu_seconds / max(1, check["deliveries"]) * 1e6,
                **check,
            }
        )
        time.sleep(0.3)
    return {
        "messages_per_subscriber": args.targeted_messages,
        "messages_per_second": spread([r["messages_per_second"] for r in rounds]),
        "server_cpu_us_per_message": spread([r["server_cpu_us_per_message"] for r in rounds]),
        **_totals(rounds),
        "rounds": rounds,
    }


def run_handshakes(args: argparse.Namespace, peer: RunningPeer, cpu: CpuSampler) -> dict:
    """Open `--handshakes` connections at once from a fresh load generator (every process at once,
    CONNECT_CONCURRENCY in flight each), without subscribing: handshakes/s over the connect phase
    and the peer's CPU per handshake; closed again after each round."""
    rounds = []
    per_round = -(-args.handshakes // CONNECTIONS_PER_SOURCE_ADDRESS)
    for number in range(args.handshake_rounds):
        # Source addresses of their own, fresh each round: the subscribers' addresses hold their
        # ports, and each round's closes leave TIME_WAIT sockets behind.
        first = HANDSHAKE_FIRST_ADDRESS + number * per_round
        addresses = [f"127.0.0.{first + i}" for i in range(per_round)]
        load = LoadGenerator(peer.urls, args.client_processes, args.handshakes, socketio=peer.socketio,
                             fast=args.listener == "cython", addresses=addresses)  # fmt: skip
        try:
            client_cpu = CpuSampler({f"client:{p.pid}": psutil.Process(p.pid) for p in load.processes})
            cpu.start()
            client_cpu.start()
            started = time.monotonic()
            replies = load.request("connect", [{"count": n, "first_index": sum(load.per_process[:i])}
                                               for i, n in enumerate(load.per_process)])  # fmt: skip
            seconds = time.monotonic() - started
            busy = cpu.stop()
            client_busy = client_cpu.stop()
        finally:
            load.close()
        connected = sum(r["connected"] for r in replies)
        server_seconds = sum(p["cpu_seconds"] for p in busy.values())
        client_seconds = sum(p["cpu_seconds"] for p in client_busy.values())
        rounds.append(
            {
                "connected": connected,
                "failed": sum(r["failed"] for r in replies),
                "seconds": seconds,
                "handshakes_per_second": connected / seconds,
                "server_cpu_us_per_handshake": server_seconds / max(1, connected) * 1e6,
                "load_generator_cpu_us_per_handshake": client_seconds / max(1, connected) * 1e6,
                "server_busy": sum(p["busy"] for p in busy.values()),
                "load_generator_busy": sum(p["busy"] for p in client_busy.values()),
            }
        )
        time.sleep(1.0)  # let the server see the closes before the next round
    return {
        "connections": args.handshakes,
        "handshakes_per_second": spread([r["handshakes_per_second"] for r in rounds]),
        "server_cpu_us_per_handshake": spread([r["server_cpu_us_per_handshake"] for r in rounds]),
        "load_generator_cpu_us_per_handshake": spread([r["load_generator_cpu_us_per_handshake"] for r in rounds]),
        "failed": sum(r["failed"] for r in rounds),
        "rounds": rounds,
    }


def _totals(rounds: list[dict]) -> dict[str, int]:
    keys = ("deliveries", "expected_deliveries", "missing", "extra", "out_of_order", "wrong_first_offset")
    return {key: sum(r[key] for r in rounds) for key in keys}


def run_peer(args: argparse.Namespace, name: str) -> dict[str, Any]:
    """Start one peer, run every workload against it, stop it."""
    peer = RunningPeer(name, Path(tempfile.mkdtemp(prefix=f"wsd-peers-{name}-")))
    load: LoadGenerator | None = None
    try:
        peer.start(args.workers)
        print(f"{name}: started ({peer.version}); connecting {args.subscribers:,}", file=sys.stderr)
        load = LoadGenerator(
            peer.urls, args.client_processes, args.subscribers, socketio=peer.socketio, user_channels=True,
            fast=args.listener == "cython",
        )  # fmt: skip
        connect = load.connect_all()
        cpu = CpuSampler(peer.processes())
        publisher = Publisher(peer.api_port, args.payload_bytes)
        result: dict[str, Any] = {"version": peer.version, "load_generator": f"picows, {load.listener_name}",
                                  "connect": connect}  # fmt: skip
        if "burst" in args.workloads:
            burst = result["burst"] = run_burst(args, load, publisher, cpu)
            print(f"{name}: burst {burst['deliveries_per_second']['median']:,.0f} deliveries/s", file=sys.stderr)
        if "paced" in args.workloads:
            paced = result["paced"] = [run_paced(args, load, publisher, rate, cpu) for rate in args.rates]
            print(f"{name}: paced p99 {[p['latency_us']['p99'] / 1000 for p in paced]} ms", file=sys.stderr)
        if "targeted" in args.workloads:
            targeted = result["targeted"] = run_targeted(args, load, publisher, cpu)
            print(f"{name}: targeted {targeted['messages_per_second']['median']:,.0f} messages/s", file=sys.stderr)
        if "handshakes" in args.workloads:
            handshakes = result["handshakes"] = run_handshakes(args, peer, cpu)
            print(f"{name}: handshakes {handshakes['handshakes_per_second']['median']:,.0f}/s", file=sys.stderr)
        result["server_rss_bytes"] = {key: p.memory_info().rss for key, p in peer.processes().items()}
        return result
    finally:
        if load is not None:
            load.close()
        peer.stop()


# --------------------------------------------------------------------------------------------------
# Report.
# --------------------------------------------------------------------------------------------------


def _ratio(ours: float, theirs: float) -> str:
    return f"{ours / theirs:.2f}×" if theirs else "-"


def burst_section(params: dict, measured: dict, wsd: dict | None) -> list[str]:
    lines = [
        "",
        f"## 1. Burst: {params['messages']} messages of {params['payload_bytes']} bytes back to back "
        f"(median of {params['rounds']})",
        "",
        "| peer | deliveries/s (min-max) | server CPU µs/delivery | busy cores: server / load gen | checked "
        "| wsd/peer |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in measured.items():
        b = r["burst"]
        rate = b["deliveries_per_second"]
        lines.append(
            f"| {name} | {rate['median']:,.0f} ({rate['min']:,.0f}-{rate['max']:,.0f}) "
            f"| {b['server_cpu_us_per_delivery']['median']:.2f} "
            f"| {b['server_busy_median']:.2f} / {b['load_generator_busy_median']:.2f} "
            f"| {b['deliveries']:,}/{b['expected_deliveries']:,}, {b['out_of_order']} out of order "
            f"| {_ratio(wsd['burst']['deliveries_per_second']['median'], rate['median']) if wsd else '-'} |"
        )
    return lines


def paced_section(params: dict, measured: dict, wsd: dict | None) -> list[str]:
    lines = [
        "",
        f"## 2. Paced: publish-to-receive latency over {params['paced_seconds']:g} s",
        "",
        "| peer | rate | p50 ms | p99 ms | max ms | CPU µs/delivery: server / load gen | checked | wsd/peer p99 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in measured.items():
        for index, p in enumerate(r["paced"]):
            latency = p["latency_us"]
            ours = wsd["paced"][index]["latency_us"]["p99"] if wsd else 0
            lines.append(
                f"| {name} | {p['rate']:g}/s | {latency['p50'] / 1000:.2f} | {latency['p99'] / 1000:.2f} "
                f"| {latency['max'] / 1000:.2f} "
                f"| {p['server_cpu_us_per_delivery']:.2f} / {p['load_generator_cpu_us_per_delivery']:.2f} "
                f"| {p['deliveries']:,}/{p['expected_deliveries']:,} "
                f"| {_ratio(ours, latency['p99']) if wsd else '-'} |"
            )
    return lines


def targeted_section(params: dict, measured: dict, wsd: dict | None) -> list[str]:
    lines = [
        "",
        f"## 3. Targeted: {params['targeted_messages']} messages to each subscriber's own channel "
        f"(publish_batch of {TARGETED_BATCH}; median of {params['targeted_rounds']})",
        "",
        "| peer | messages/s (min-max) | server CPU µs/message | checked | wsd/peer |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, r in measured.items():
        t = r["targeted"]
        rate = t["messages_per_second"]
        lines.append(
            f"| {name} | {rate['median']:,.0f} ({rate['min']:,.0f}-{rate['max']:,.0f}) "
            f"| {t['server_cpu_us_per_message']['median']:.2f} "
            f"| {t['deliveries']:,}/{t['expected_deliveries']:,}, {t['out_of_order']} out of order "
            f"| {_ratio(wsd['targeted']['messages_per_second']['median'], rate['median']) if wsd else '-'} |"
        )
    cluster, node = measured.get("wsd_cluster"), measured.get("node_ws")
    if cluster and node and "targeted" in cluster and "targeted" in node:
        ratio = _ratio(
            cluster["targeted"]["messages_per_second"]["median"], node["targeted"]["messages_per_second"]["median"]
        )
        lines += ["", f"wsd with `--cluster` (Redis) / node_ws: {ratio}"]
    return lines


def handshakes_section(params: dict, measured: dict, wsd: dict | None) -> list[str]:
    lines = [
        "",
        f"## 4. Handshakes: {params['handshakes']:,} new connections at once from {params['client_processes']} "
        f"load-generator processes (median of {params['handshake_rounds']})",
        "",
        "| peer | handshakes/s (min-max) | server CPU µs/handshake | load gen CPU µs/handshake | failed | wsd/peer |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in measured.items():
        h = r["handshakes"]
        rate = h["handshakes_per_second"]
        lines.append(
            f"| {name} | {rate['median']:,.0f} ({rate['min']:,.0f}-{rate['max']:,.0f}) "
            f"| {h['server_cpu_us_per_handshake']['median']:.1f} "
            f"| {h['load_generator_cpu_us_per_handshake']['median']:.1f} "
            f"| {h['failed']} "
            f"| {_ratio(wsd['handshakes']['handshakes_per_second']['median'], rate['median']) if wsd else '-'} |"
        )
    return lines


def markdown_report(report: dict[str, Any]) -> str:
    params, results = report["parameters"], report["results"]
    measured = {name: r for name, r in results.items() if "error" not in r}
    wsd = measured.get("wsd")
    lines = [
        f"# Fan-out against the peers: {params['tag']}",
        "",
        f"{params['subscribers']:,} subscribers, {params['client_processes']} load-generator processes (picows), "
        f"{params['workers']} server processes where the peer has several. Ratios are wsd / peer from this run.",
    ]
    workloads = params.get("workloads", ALL_WORKLOADS)
    wsd = wsd if wsd and all(w in wsd for w in workloads) else None
    if "burst" in workloads:
        lines += burst_section(params, measured, wsd)
    if "paced" in workloads:
        lines += paced_section(params, measured, wsd)
    if "targeted" in workloads:
        lines += targeted_section(params, measured, wsd)
    if "handshakes" in workloads:
        lines += handshakes_section(params, measured, wsd)
    lines += ["", "## Peers", ""]
    for name, r in results.items():
        lines.append(f"- {name}: {r.get('version', '')} {('— FAILED: ' + r['error']) if 'error' in r else ''}".rstrip())
    machine = report["machine"]
    lines += [
        "",
        f"Command: `{report['command']}`",
        "",
        f"Machine: {machine['cpu_model']}, {machine['nproc']} CPUs shared by server, Redis and load generator, "
        f"{machine['memory_bytes'] / 2**30:.1f} GiB; Python {machine['python']}, picows {machine['picows']}, "
        f"uvloop {machine['uvloop']}; `{machine['uname']}`. Started {report['started']}.",
        "",
        "Server CPU counts every process of the peer (wsd: supervisor and workers; socket.io: both Node "
        "processes and Redis). Latency = receive time - publish time stamped just before the HTTP request.",
    ]
    return "\n".join(lines) + "\n"


def write_plot(report: dict[str, Any], path: Path) -> bool:
    """Three bar charts (burst deliveries/s, paced p99 per rate, targeted messages/s); False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    measured = {name: r for name, r in report["results"].items() if "error" not in r}
    names = list(measured)
    wanted = report["parameters"].get("workloads", ALL_WORKLOADS)
    workloads = [w for w in wanted if all(w in measured[n] for n in names)]
    if not names or not workloads:
        return False
    figure, axes = plt.subplots(1, len(workloads), figsize=(4.7 * len(workloads), 4), squeeze=False)
    axes = dict(zip(workloads, axes[0], strict=True))
    if "burst" in axes:
        axes["burst"].bar(names, [measured[n]["burst"]["deliveries_per_second"]["median"] for n in names])
        axes["burst"].set_title("burst: deliveries/s (higher is better)")
        axes["burst"].set_yscale("log")
    if "paced" in axes:
        rates = report["parameters"]["rates"]
        width = 0.8 / max(1, len(rates))
        for index, rate in enumerate(rates):
            positions = [i + index * width for i in range(len(names))]
            values = [measured[n]["paced"][index]["latency_us"]["p99"] / 1000 for n in names]
            axes["paced"].bar(positions, values, width, label=f"{rate:g} msg/s")
        axes["paced"].set_xticks([i + width * (len(rates) - 1) / 2 for i in range(len(names))], names)
        axes["paced"].set_title("paced: p99 latency, ms (lower is better)")
        axes["paced"].set_yscale("log")
        axes["paced"].legend()
    if "targeted" in axes:
        axes["targeted"].bar(names, [measured[n]["targeted"]["messages_per_second"]["median"] for n in names])
        axes["targeted"].set_title("targeted: messages/s (higher is better)")
    if "handshakes" in axes:
        axes["handshakes"].bar(names, [measured[n]["handshakes"]["handshakes_per_second"]["median"] for n in names])
        axes["handshakes"].set_title("handshakes/s (higher is better)")
    figure.suptitle(f"{report['parameters']['subscribers']:,} subscribers, {report['machine']['nproc']} CPUs, same run")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return True


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.peers.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", default=",".join(ALL_PEERS), help=f"comma-separated (default {','.join(ALL_PEERS)})")
    parser.add_argument("--setup", action="store_true", help="install the peers first (npm ci, pip, apt)")
    parser.add_argument("--subscribers", type=int, default=10000)
    parser.add_argument("--workers", type=int, default=2, help="wsd workers / socket.io processes (default 2)")
    parser.add_argument("--client-processes", type=int, default=2)
    parser.add_argument("--messages", type=int, default=100, help="messages per burst (default 100)")
    parser.add_argument("--rounds", type=int, default=5, help="bursts (default 5)")
    parser.add_argument("--payload-bytes", type=int, default=64)
    parser.add_argument("--rates", default="1,5", help="paced rates, messages/s (default 1,5)")
    parser.add_argument("--paced-seconds", type=float, default=10.0)
    parser.add_argument("--targeted-messages", type=int, default=5, help="per subscriber per round (default 5)")
    parser.add_argument("--targeted-rounds", type=int, default=3)
    parser.add_argument("--handshakes", type=int, default=10000, help="connections per handshake round (default 10000)")
    parser.add_argument("--handshake-rounds", type=int, default=3)
    parser.add_argument(
        "--workloads", default=",".join(ALL_WORKLOADS), help=f"comma-separated (default {','.join(ALL_WORKLOADS)})"
    )
    parser.add_argument(
        "--listener", choices=("cython", "python"), default="cython",
        help="the load generator's listener: harness/fastlisten.pyx (default) or its Python reference",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="results folder (default bench/results)")
    parser.add_argument("--tag", default="")
    args = parser.parse_args(argv)
    args.peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    args.rates = [float(r) for r in args.rates.split(",")]
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown_workloads = set(args.workloads) - set(ALL_WORKLOADS)
    if unknown_workloads:
        parser.error(f"unknown workloads {sorted(unknown_workloads)}; known: {', '.join(ALL_WORKLOADS)}")
    unknown = set(args.peers) - set(ALL_PEERS)
    if unknown:
        parser.error(f"unknown peers {sorted(unknown)}; known: {', '.join(ALL_PEERS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.tag = args.tag or time.strftime("%Y%m%d-%H%M%S")
    if args.setup:
        setup_peers(args.peers)
    report: dict[str, Any] = {
        "benchmark": "peers-fanout",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": command_line(),
        "parameters": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": {**machine_info(), "hostname": socket.gethostname()},
        "results": {},
    }
    failed = False
    for name in args.peers:
        missing = peer_missing(name)
        if missing:
            report["results"][name] = {"error": f"not run: {missing}"}
            failed = True
            continue
        try:
            report["results"][name] = run_peer(args, name)
        except Exception as exc:  # one peer failing must not lose the others' numbers
            report["results"][name] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
            failed = True
            print(f"{name}: FAILED {exc}", file=sys.stderr)
    markdown = markdown_report(report)
    print(markdown)
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / f"peers-{args.tag}.json"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    json_path.with_suffix(".md").write_text(markdown)
    write_plot(report, json_path.with_suffix(".png"))
    print(f"wrote {json_path} and {json_path.with_suffix('.md')}", file=sys.stderr)
    for result in report["results"].values():
        for phase in [result.get("burst"), result.get("targeted"), *result.get("paced", [])]:
            if phase and (phase["missing"] or phase["out_of_order"]):
                failed = True
        if result.get("handshakes", {}).get("failed"):
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
