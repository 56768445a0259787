"""Held connections with the fast load generator: server memory per idle connection, and how long a
broadcast takes to reach every one of them, and whose time that is.

For each server (`--servers wsd,node_ws`):

1. starts it (wsd: `wsd serve --workers W`, W auto from N unless given; Node `ws`: bench/peers/node_ws);
2. reads the memory of all its processes idle (RSS, USS, PSS from /proc/PID/smaps_rollup);
3. opens N connections with harness.loadgen (picows on uvloop, the Cython listener; K processes of at
   most 18,000 connections each, sources spread over 127.0.0.2, .3, ...), each subscribed to the
   shared channel and to its own user channel, and waits until every subscription is confirmed;
4. reads the memory again: RSS / N is the figure of issue 13 (the kernel's socket memory is not in
   it and is reported beside it: slab growth per connection pair, both ends on this host);
5. publishes `--broadcasts` messages to the shared channel, one at a time, each stamped when sent;
   every connection must receive each. Per broadcast: publish-to-receive p50/p99/max over all N
   deliveries (the load generator's clock), CPU seconds of the server and of the load generator
   while it lasted, and, for wsd, when its workers had written it to every subscriber (the
   publish-to-written histogram of /metrics, `wsd_publish_delivery_seconds`): the server's part.

    flock /tmp/wsd-bench.lock .venv/bin/python -m bench.held_connections --connections 19000 \\
        --workers 2 --servers wsd,node_ws --tag 19k

Writes bench/results/held-<tag>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shlex
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil

from bench.measure import RESULTS_DIR, command_line, cpu_model, cpu_seconds, percentile
from bench.peers.run import RunningPeer, peer_missing
from harness.listener import SHARED_CHANNEL
from harness.loadgen import PHASE_GRACE_SECONDS, LoadGenerator, merge_phase, phase_latencies_us
from harness.publisher import Publisher
from harness.wsd_process import WsdProcess

CONNECTIONS_PER_CLIENT_PROCESS = 18_000  # under the 20,000 open-file limit of a process
WSD_CONNECTIONS_PER_WORKER = 18_000  # --workers auto's share would be ~19,900: leave reuseport room
SETTLE_S = 3.0


def memory_of(processes: list[psutil.Process]) -> dict[str, int]:
    """RSS, USS and PSS summed over `processes` (smaps_rollup)."""
    total = {"rss": 0, "uss": 0, "pss": 0, "processes": 0}
    for process in processes:
        try:
            info = process.memory_full_info()
        except psutil.Error:
            continue
        total["rss"] += info.rss
        total["uss"] += info.uss
        total["pss"] += info.pss
        total["processes"] += 1
    return total


def slab_bytes() -> int:
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("Slab:"):
                return int(line.split()[1]) * 1024
    return 0


_METRIC = re.compile(rb"^wsd_publish_delivery_seconds_(sum|count|bucket)(\{[^}]*\})? ([0-9.e+-]+|\+Inf)$", re.M)


def metrics_text(api_url: str) -> bytes:
    with urllib.request.urlopen(f"{api_url}/metrics", timeout=30) as response:
        return response.read()


def delivery_histogram(text: bytes) -> dict[str, float]:
    """wsd's publish-to-written histogram in a /metrics text, summed over its workers: sum, count,
    and le buckets."""
    found: dict[str, float] = {}
    for kind, labels, value in _METRIC.findall(text):
        key = kind.decode()
        if kind == b"bucket":
            bound = re.search(rb'le="([^"]+)"', labels).group(1).decode()
            key = f"le {bound}"
        found[key] = found.get(key, 0.0) + float(value)
    return found


_DISCONNECTS = re.compile(rb'^wsd_disconnects_total\{code="([^"]+)"\} ([0-9.e+-]+)$', re.M)


def server_disconnects(text: bytes) -> dict[str, int]:
    """wsd's closed connections by close code in a /metrics text (wsd_disconnects_total), the codes
    seen only."""
    return {code.decode(): int(float(n)) for code, n in _DISCONNECTS.findall(text) if float(n)}


def server_part(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """What one broadcast added to wsd's histogram: deliveries, mean publish-to-written, the bucket
    the last worker's write fell in."""
    count = after.get("count", 0) - before.get("count", 0)
    mean = (after.get("sum", 0) - before.get("sum", 0)) / count if count else 0.0
    bounds = sorted(
        (float(k[3:]) if k[3:] != "+Inf" else math.inf, after[k] - before.get(k, 0))
        for k in after
        if k.startswith("le ")
    )
    last_bound = next((bound for bound, seen in bounds if seen >= count), math.inf) if count else 0.0
    return {"deliveries": int(count), "mean_written_ms": mean * 1000, "all_written_by_ms": last_bound * 1000}


class Server:
    """A started server under test: wsd (through WsdProcess) or a peer of bench/peers."""

    def __init__(self, name: str, workdir: Path, connections: int, workers: int | None, wsd_flags: list[str]):
        self.name = name
        self.wsd: WsdProcess | None = None
        self.peer: RunningPeer | None = None
        if name == "wsd":
            workers = workers or max(1, math.ceil(connections / WSD_CONNECTIONS_PER_WORKER))
            flags = ["--log-level", "warning", "--max-connections", str(int(connections * 1.1) + 100), *wsd_flags]
            self.wsd = WsdProcess(workdir, workers=workers, flags=flags)
            self.wsd.start(wait=False)
            self.wsd.wait_ready(timeout=120)
            self.urls, self.api_port = [self.wsd.url], self.wsd.api_port
            self.version = f"wsd, {workers} workers"
            self.workers = workers
        else:
            missing = peer_missing(name)
            if missing:
                raise RuntimeError(f"{name}: {missing}")
            self.peer = RunningPeer(name, workdir)
            self.peer.start(1)
            self.urls, self.api_port, self.version = self.peer.urls, self.peer.api_port, self.peer.version
            self.workers = 1

    def processes(self) -> list[psutil.Process]:
        if self.wsd is not None:
            return list(self.wsd.processes().values())
        return list(self.peer.processes().values())

    def stop(self) -> None:
        if self.wsd is not None:
            self.wsd.kill()
        if self.peer is not None:
            self.peer.stop()


def run_server(args: argparse.Namespace, name: str) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix=f"wsd-held-{name}-"))
    server = Server(
        name, workdir, args.connections, args.workers if name == "wsd" else None, shlex.split(args.wsd_flags)
    )
    load: LoadGenerator | None = None
    try:
        time.sleep(1.0)
        idle = memory_of(server.processes())
        slab_before = slab_bytes()
        client_processes = args.client_processes or max(1, math.ceil(args.connections / CONNECTIONS_PER_CLIENT_PROCESS))
        print(
            f"{name}: {server.version}; {args.connections:,} connections from {client_processes} processes", flush=True
        )
        started = time.monotonic()
        # A handshake the server cuts (its 5 s handshake timeout, with 2 cores shared by 25 processes) is
        # tried again, as a real client would.
        load = LoadGenerator(server.urls, client_processes, args.connections, user_channels=True, connect_attempts=10)
        connect = load.connect_all(timeout=max(300.0, args.connections / 100))
        print(
            f"{name}: connected and subscribed in {time.monotonic() - started:.1f} s "
            f"({connect['connects_per_second']:,.0f} handshakes/s)",
            flush=True,
        )
        time.sleep(SETTLE_S)
        held = memory_of(server.processes())
        slab_after = slab_bytes()
        clients = [psutil.Process(p.pid) for p in load.processes]
        client_rss = sum(p.memory_info().rss for p in clients)
        n = args.connections
        memory = {
            "idle": idle,
            "held": held,
            "per_connection": {k: held[k] / n for k in ("rss", "uss", "pss")},
            "per_connection_over_idle": {k: (held[k] - idle[k]) / n for k in ("rss", "uss", "pss")},
            "kernel_slab_per_connection_pair": (slab_after - slab_before) / n,
            "load_generator_rss_per_connection": client_rss / n,
        }
        per = memory["per_connection"]
        print(
            f"{name}: RSS {held['rss'] / 2**20:,.1f} MiB = {per['rss']:,.0f} B/conn "
            f"(USS {per['uss']:,.0f}, PSS {per['pss']:,.0f}); idle {idle['rss'] / 2**20:,.1f} MiB",
            flush=True,
        )
        publisher = Publisher(server.api_port, args.payload_bytes, channel=SHARED_CHANNEL, timeout=120)
        broadcasts = []
        server_processes = server.processes()
        for seq in range(args.broadcasts):
            load.arm(expected_per_connection=1, record_latency=True, timeout=args.broadcast_timeout)
            histogram_before = delivery_histogram(metrics_text(server.wsd.api_url)) if server.wsd else {}
            server_cpu, client_cpu = cpu_seconds(server_processes), cpu_seconds(clients)
            offset = publisher.publish_one(seq)
            reports = load.collect(args.broadcast_timeout + 30)
            server_cpu, client_cpu = cpu_seconds(server_processes) - server_cpu, cpu_seconds(clients) - client_cpu
            check = merge_phase(reports, 1, offset)
            check.pop("last_receive_ns")
            latencies = phase_latencies_us(reports)
            entry = {
                "seq": seq,
                **check,
                "p50_ms": percentile(latencies, 0.50) / 1000,
                "p99_ms": percentile(latencies, 0.99) / 1000,
                "max_ms": (latencies[-1] if latencies else 0) / 1000,
                "server_cpu_s": server_cpu,
                "load_generator_cpu_s": client_cpu,
            }
            if server.wsd:
                time.sleep(0.6)  # the workers write their stats twice a second
                metrics = metrics_text(server.wsd.api_url)
                entry["server"] = server_part(histogram_before, delivery_histogram(metrics))
                entry["server_disconnects"] = server_disconnects(metrics)
            broadcasts.append(entry)
            lost = ""
            if check["disconnected"]:
                lost = f"{check['disconnected']:,} disconnected {check['disconnect_reasons']}, "
            print(
                f"{name}: broadcast {seq}: {check['deliveries']:,}/{check['expected_deliveries']:,}, {lost}"
                f"p50 {entry['p50_ms']:.0f} p99 {entry['p99_ms']:.0f} max {entry['max_ms']:.0f} ms; "
                f"CPU server {server_cpu:.2f} s, load generator {client_cpu:.2f} s"
                + (
                    f"; wsd wrote all by {entry['server']['all_written_by_ms']:.0f} ms (mean "
                    f"{entry['server']['mean_written_ms']:.0f})"
                    if server.wsd
                    else ""
                ),
                flush=True,
            )
            time.sleep(args.pause)
        return {
            "version": server.version,
            "workers": server.workers,
            "client_processes": client_processes,
            "connect": connect,
            "memory": memory,
            "broadcasts": broadcasts,
        }
    finally:
        if load is not None:
            load.close()
        server.stop()


def markdown_report(report: dict[str, Any]) -> str:
    n = report["parameters"]["connections"]
    lines = [
        f"# Held connections: {n:,} idle subscribers, one broadcast at a time",
        "",
        "| server | RSS / connection | USS | PSS | RSS over idle | server RSS idle → held | kernel slab / pair | "
        "load generator RSS / conn | handshakes/s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for result in report["servers"].values():
        memory = result["memory"]
        per, over = memory["per_connection"], memory["per_connection_over_idle"]
        lines.append(
            f"| {result['version']} | **{per['rss'] / 1024:.2f} KiB** ({per['rss']:,.0f} B) "
            f"| {per['uss'] / 1024:.2f} KiB "
            f"| {per['pss'] / 1024:.2f} KiB | {over['rss'] / 1024:.2f} KiB | {memory['idle']['rss'] / 2**20:,.1f} → "
            f"{memory['held']['rss'] / 2**20:,.1f} MiB ({memory['held']['processes']} processes) "
            f"| {memory['kernel_slab_per_connection_pair'] / 1024:.2f} KiB "
            f"| {memory['load_generator_rss_per_connection'] / 1024:.2f} KiB "
            f"| {result['connect']['connects_per_second']:,.0f} |"
        )
    lines += [
        "",
        "Broadcasts (publish → each delivery, over all connections; CPU while it lasted):",
        "",
        "| server | # | delivered | p50 ms | p99 ms | max ms | server CPU s | load generator CPU s | "
        "wsd: all written by (mean) | disconnected (why) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, result in report["servers"].items():
        for b in result["broadcasts"]:
            written = ""
            if "server" in b:
                written = f"≤ {b['server']['all_written_by_ms']:,.0f} ms ({b['server']['mean_written_ms']:,.0f})"
            why = f" {b['disconnect_reasons']}; server's close codes {b.get('server_disconnects', {})}"
            lines.append(
                f"| {name} | {b['seq']} | {b['deliveries']:,} / {b['expected_deliveries']:,} | {b['p50_ms']:,.0f} "
                f"| {b['p99_ms']:,.0f} | {b['max_ms']:,.0f} | {b['server_cpu_s']:.2f} "
                f"| {b['load_generator_cpu_s']:.2f} "
                f"| {written} | {b['disconnected']:,}" + (why if b["disconnected"] else "") + " |"
            )
    machine = report["machine"]
    lines += [
        "",
        "RSS counts a page shared between processes once in each (the interpreter's libraries, the bus's "
        "shared memory); PSS divides it among them. The kernel's socket memory is in neither.",
        "wsd's 'all written by' is the bucket of its publish-to-written histogram (`wsd_publish_delivery_seconds`) "
        "that the last worker's write fell in: when the server had handed the frame to every socket.",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Machine: {machine['cpu']}, {machine['cpus']} CPUs shared by the servers and the load generator, "
        f"{machine['memory_bytes'] / 2**30:.0f} GiB, Linux {machine['kernel']}, Python {machine['python']}. "
        f"Started {report['started']}.",
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.held_connections",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--connections", type=int, default=19_000)
    parser.add_argument("--servers", default="wsd", help="comma list: wsd, node_ws, websockets")
    parser.add_argument("--workers", type=int, default=0, help="wsd workers (0: one per 18,000 connections)")
    parser.add_argument("--client-processes", type=int, default=0, help="load-generator processes (0: N / 18,000)")
    parser.add_argument("--broadcasts", type=int, default=3)
    parser.add_argument("--broadcast-timeout", type=float, default=PHASE_GRACE_SECONDS)
    parser.add_argument("--pause", type=float, default=1.0, help="seconds between broadcasts")
    parser.add_argument("--payload-bytes", type=int, default=64)
    parser.add_argument("--wsd-flags", default="", help="extra `wsd serve` flags")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument("--tag", default="")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tag = args.tag or f"{args.connections // 1000}k"
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    servers = {name: run_server(args, name) for name in args.servers.split(",")}
    report = {
        "parameters": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "command": command_line(),
        "started": started,
        "machine": {
            "cpu": cpu_model(),
            "cpus": os.cpu_count(),
            "memory_bytes": psutil.virtual_memory().total,
            "kernel": platform.release(),
            "python": platform.python_version(),
        },
        "servers": servers,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    markdown = markdown_report(report)
    (args.out / f"held-{tag}.json").write_text(json.dumps(report, indent=1))
    (args.out / f"held-{tag}.md").write_text(markdown)
    print(markdown)
    missing = sum(b["missing"] for r in servers.values() for b in r["broadcasts"])
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
