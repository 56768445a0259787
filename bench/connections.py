"""Connection benchmark: how many idle WebSocket clients wsd holds, at what memory, and how fast
a broadcast reaches all of them. Server and load generator (Locust) share this machine.

1. starts `wsd serve --workers auto --max-connections M` (M = N plus headroom, because the kernel's
   SO_REUSEPORT hash does not split connections exactly evenly over the workers);
2. starts Locust headless in distributed mode (`--processes P`, each worker process below the
   20,000 open-file limit) with bench/locustfile.py: N connections, each subscribed to its own
   channel and to `all`;
3. ramps to N, holds them idle, publishes `--broadcasts` messages to `all`, and checks every
   connection received each one;
4. samples, every second, the server's memory (RSS, and USS/PSS from psutil's memory_full_info:
   workers map the bus's shared memory, which RSS counts in every process that touched it), the
   kernel's TCP memory (/proc/net/sockstat), and the CPU of wsd and Locust;
5. prints progress, then a Markdown table, and writes connections-<tag>.json / .md / .png to --out.

    flock /tmp/wsd-bench.lock .venv/bin/python -m bench.connections --connections 200000

(from the repository root; `make bench-connections N=200000` does the same).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from bench.measure import RESULTS_DIR, command_line, cpu_model
from harness.wsd_process import WsdProcess

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
LOCUST = Path(sys.executable).parent / "locust"

# Connections per Locust worker process: under the 20,000 open-file limit with room for the
# process's own files and sockets in TIME_WAIT-free reuse.
CONNECTIONS_PER_LOCUST_PROCESS = 18_000
# Server connection limit over N: reuseport spreads connections by hash, not round-robin.
SERVER_HEADROOM = 1.10
SAMPLE_EVERY_S = 1.0
FULL_MEMORY_EVERY = 5
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


# --------------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------------


def process_tree(root_pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(root_pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


# TCP counters that explain slow or failed handshakes (/proc/net/netstat, system-wide).
TCP_COUNTERS = ("ListenOverflows", "ListenDrops", "TCPReqQFullDoCookies", "TCPReqQFullDrop", "TCPSynRetrans")


def tcp_counters() -> dict[str, int]:
    with open("/proc/net/netstat") as handle:
        lines = handle.read().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], (int(v) for v in values.split()[1:]), strict=False))
            return {name: table.get(name, 0) for name in TCP_COUNTERS}
    return {}


def kernel_socket_memory() -> dict[str, int]:
    """TCP sockets in use and the pages charged to TCP buffers (/proc/net/sockstat); all slab memory."""
    fields: dict[str, int] = {}
    with open("/proc/net/sockstat") as handle:
        for line in handle:
            label, _, rest = line.partition(":")
            values = rest.split()
            for name, value in zip(values[::2], values[1::2], strict=False):
                fields[f"{label.lower()}_{name}"] = int(value)
    slab = 0
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("Slab:"):
                slab = int(line.split()[1]) * 1024
    return {
        # Socket structures live in the kernel's slab caches; sockstat's "mem" counts only buffers.
        "slab_bytes": slab,
        "tcp_inuse": fields.get("tcp_inuse", 0),
        "tcp_mem_bytes": fields.get("tcp_mem", 0) * PAGE_SIZE,
        "sockets_used": fields.get("sockets_used", 0),
    }


class Sampler(threading.Thread):
    """Every second: wsd's and Locust's memory and CPU, kernel socket memory, Locust's progress."""

    def __init__(self, wsd_pid: int, progress_path: Path) -> None:
        super().__init__(daemon=True)
        self.wsd_pid = wsd_pid
        self.locust_pid: int | None = None
        self.progress_path = progress_path
        self.samples: list[dict[str, Any]] = []
        self.started = time.time()
        self._stop_event = threading.Event()
        self._cpu_seen: dict[str, dict[int, float]] = {}
        self._count = 0

    def stop(self) -> None:
        self._stop_event.set()
        self.join(5)

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.samples.append(self.sample())
            self._stop_event.wait(SAMPLE_EVERY_S)

    def _cpu_total(self, group: str, processes: list[psutil.Process]) -> float:
        # Per group, the last value of every process ever seen: processes that exit keep their
        # share, so the total never goes backwards.
        seen = self._cpu_seen.setdefault(group, {})
        for process in processes:
            try:
                times = process.cpu_times()
                seen[process.pid] = times.user + times.system
            except psutil.Error:
                pass
        return sum(seen.values())

    def sample(self, force_full: bool = False) -> dict[str, Any]:
        # Time and CPU first: the memory readings below take long enough to skew a rate.
        now = time.time()
        wsd = process_tree(self.wsd_pid)
        locust = process_tree(self.locust_pid) if self.locust_pid else []
        wsd_cpu = self._cpu_total("wsd", wsd)
        locust_cpu = self._cpu_total("locust", locust)
        # USS and PSS walk every mapped page (smaps_rollup): ~1 s of CPU for 13 processes holding
        # 200k connections. Taken every FULL_MEMORY_EVERY samples and on request; RSS every time.
        self._count += 1
        full = force_full or self._count % FULL_MEMORY_EVERY == 1 or not self.samples
        memory = {"rss": 0, "uss": 0, "pss": 0}
        for process in wsd:
            try:
                if full:
                    info = process.memory_full_info()
                    memory["uss"] += info.uss
                    memory["pss"] += info.pss
                else:
                    info = process.memory_info()
            except psutil.Error:
                continue
            memory["rss"] += info.rss
        if not full:  # carry the last full reading forward
            last = self.samples[-1]
            memory["uss"], memory["pss"] = last["wsd_uss"], last["wsd_pss"]
        locust_rss = 0
        for process in locust:
            try:
                locust_rss += process.memory_info().rss
            except psutil.Error:
                pass
        sample = {
            "t": round(now - self.started, 3),
            "time": now,
            "wsd_processes": len(wsd),
            "wsd_rss": memory["rss"],
            "wsd_uss": memory["uss"],
            "wsd_pss": memory["pss"],
            "full_memory": full,
            "wsd_cpu_s": round(wsd_cpu, 3),
            "locust_processes": len(locust),
            "locust_rss": locust_rss,
            "locust_cpu_s": round(locust_cpu, 3),
            **kernel_socket_memory(),
            "tcp_counters": tcp_counters(),
            "host_cpu_percent": psutil.cpu_percent(),
        }
        try:
            progress = json.loads(self.progress_path.read_text())
            sample["connections"] = progress["connections"]
            sample["phase"] = progress["phase"]
        except (OSError, ValueError, KeyError):
            sample["connections"] = 0
            sample["phase"] = "starting"
        return sample


def print_progress(sample: dict[str, Any], previous: dict[str, Any] | None) -> None:
    connections = sample["connections"]
    rate = 0.0
    cpu_wsd = cpu_locust = 0.0
    if previous is not None and sample["t"] > previous["t"]:
        span = sample["t"] - previous["t"]
        rate = (connections - previous["connections"]) / span
        cpu_wsd = 100 * (sample["wsd_cpu_s"] - previous["wsd_cpu_s"]) / span
        cpu_locust = 100 * (sample["locust_cpu_s"] - previous["locust_cpu_s"]) / span
    per_connection = f"{sample['wsd_rss'] / connections / 1024:6.2f} KiB/conn" if connections else " " * 15
    print(
        f"[{sample['t']:7.1f}s] {sample['phase']:<9} {connections:>8,} conns {rate:>8,.0f}/s | "
        f"wsd RSS {sample['wsd_rss'] / 2**20:7.1f} MiB {per_connection} USS {sample['wsd_uss'] / 2**20:7.1f} MiB | "
        f"tcp mem {sample['tcp_mem_bytes'] / 2**20:6.1f} MiB | CPU wsd {cpu_wsd:4.0f}% locust {cpu_locust:4.0f}%",
        flush=True,
    )


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    import picows
    import uvloop

    try:
        import locust

        locust_version = locust.__version__
    except ImportError:
        locust_version = None
    return {
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "memory_bytes": psutil.virtual_memory().total,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "picows": picows.__version__,
        "uvloop": uvloop.__version__,
        "locust": locust_version,
    }


def locust_command(
    args: argparse.Namespace, wsd: WsdProcess, processes: int, result: Path, progress: Path
) -> list[str]:
    users = math.ceil(args.connections / args.connections_per_user)
    return [
        str(LOCUST), "-f", str(LOCUSTFILE), "--headless", "--processes", str(processes),
        "--users", str(users), "--spawn-rate", str(args.spawn_rate), "--host", wsd.url,
        "--only-summary", "--loglevel", "WARNING", "--stop-timeout", "5",
        "--wsd-connections-per-user", str(args.connections_per_user), "--wsd-api", wsd.api_url,
        "--wsd-target", str(args.connections), "--wsd-ramp-timeout", str(args.ramp_timeout),
        "--wsd-hold", str(args.hold), "--wsd-broadcasts", str(args.broadcasts),
        "--wsd-broadcast-timeout", str(args.broadcast_timeout), "--wsd-result", str(result),
        "--wsd-progress", str(progress),
    ]  # fmt: skip


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    processes = args.processes or max(1, math.ceil(args.connections / CONNECTIONS_PER_LOCUST_PROCESS))
    workdir = Path(tempfile.mkdtemp(prefix="wsd-connections-"))
    max_connections = math.ceil(args.connections * SERVER_HEADROOM)
    wsd = WsdProcess(
        workdir, workers=args.workers,
        flags=["--max-connections", str(max_connections), "--log-level", "warning", *shlex.split(args.wsd_flags)],
    )  # fmt: skip
    result_path = workdir / "locust-result.json"
    progress_path = workdir / "locust-progress.json"
    locust_log = workdir / "locust.log"
    locust_proc: subprocess.Popen | None = None
    sampler: Sampler | None = None
    wsd.start(wait=False)
    try:
        status = wsd.wait_ready(timeout=60)
        workers = len(status["workers"])
        print(f"wsd: {workers} workers, up to {max_connections:,} connections; Locust: {processes} worker processes")
        time.sleep(1.0)
        sampler = Sampler(wsd.proc.pid, progress_path)
        idle = sampler.sample()
        sampler.start()
        command = locust_command(args, wsd, processes, result_path, progress_path)
        print("locust:", shlex.join(command), flush=True)
        with open(locust_log, "wb") as log_file:
            locust_proc = subprocess.Popen(
                command, stdout=log_file, stderr=subprocess.STDOUT, cwd=workdir, start_new_session=True
            )
            sampler.locust_pid = locust_proc.pid
            deadline = (
                time.monotonic() + args.ramp_timeout + args.hold + args.broadcasts * (args.broadcast_timeout + 2) + 180
            )
            shown = 0
            while locust_proc.poll() is None:
                if time.monotonic() > deadline:
                    print("locust did not finish in time: stopping it", flush=True)
                    os.killpg(locust_proc.pid, signal.SIGTERM)
                    try:
                        locust_proc.wait(20)
                    except subprocess.TimeoutExpired:
                        os.killpg(locust_proc.pid, signal.SIGKILL)
                    break
                time.sleep(0.5)
                samples = sampler.samples
                if len(samples) >= shown + args.progress_every:
                    previous = samples[shown - 1] if shown else None
                    shown = len(samples)
                    print_progress(samples[-1], previous)
        final_status = wsd.status()
        sampler.stop()
        if not result_path.exists():
            raise RuntimeError(f"Locust wrote no result; its log:\n{locust_log.read_text(errors='replace')[-6000:]}")
        locust_result = json.loads(result_path.read_text())
        report = build_report(args, workers, processes, idle, sampler.samples, locust_result, final_status)
        report["locust_summary"] = locust_log.read_text(errors="replace")[-8000:]
        return report
    finally:
        if sampler is not None and sampler.is_alive():
            sampler.stop()
        if locust_proc is not None and locust_proc.poll() is None:
            os.killpg(locust_proc.pid, signal.SIGKILL)
            locust_proc.wait()
        wsd.kill()


# --------------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------------


def percentile(sorted_values: list[int], fraction: float) -> int:
    if not sorted_values:
        return 0
    return sorted_values[min(len(sorted_values) - 1, int(fraction * len(sorted_values)))]


def latency_summary(values_us: list[int]) -> dict[str, float]:
    values = sorted(values_us)
    return {
        "count": len(values),
        "p50_ms": percentile(values, 0.50) / 1000,
        "p99_ms": percentile(values, 0.99) / 1000,
        "max_ms": (values[-1] if values else 0) / 1000,
    }


def sample_at(samples: list[dict], when: float) -> dict:
    """The last sample taken at or before `when` (epoch seconds)."""
    chosen = samples[0]
    for sample in samples:
        if sample["time"] <= when:
            chosen = sample
    return chosen


def cpu_between(samples: list[dict], start: float, end: float) -> dict[str, float]:
    first, last = sample_at(samples, start), sample_at(samples, end)
    span = max(last["time"] - first["time"], 1e-9)
    return {
        "seconds": round(span, 2),
        "wsd_cores": round((last["wsd_cpu_s"] - first["wsd_cpu_s"]) / span, 3),
        "locust_cores": round((last["locust_cpu_s"] - first["locust_cpu_s"]) / span, 3),
    }


def build_report(
    args: argparse.Namespace,
    workers: int,
    processes: int,
    idle: dict,
    samples: list[dict],
    locust: dict,
    final_status: dict,
) -> dict[str, Any]:
    phases = locust.get("phases", {})
    ramp, hold = phases.get("ramp", {}), phases.get("hold", {})
    broadcast_phase = phases.get("broadcast", {})
    locust_workers = locust.get("workers", [])

    # Ramp: from the first to the last completed handshake, measured by each Locust worker.
    handshake_windows = [w["handshake_window"] for w in locust_workers if w.get("handshake_window")]
    first_handshake = min((w[0] for w in handshake_windows), default=ramp.get("start", 0))
    last_handshake = max((w[1] for w in handshake_windows), default=ramp.get("end", 0))
    opened = sum(w.get("opened", 0) for w in locust_workers)
    ramp_seconds = max(last_handshake - first_handshake, 1e-9)
    peak_rate = 0.0
    for before, after in zip(samples, samples[1:], strict=False):
        span = after["time"] - before["time"]
        if span > 0:
            peak_rate = max(peak_rate, (after["connections"] - before["connections"]) / span)

    # Memory at the end of the hold: every connection open and idle.
    held_at = hold.get("end", samples[-1]["time"])
    # The last sample with a full memory reading (USS, PSS) taken while every connection was idle.
    held_from = hold.get("start", samples[0]["time"])
    full_in_hold = [x for x in samples if x.get("full_memory") and held_from <= x["time"] <= held_at]
    held_sample = full_in_hold[-1] if full_in_hold else sample_at(samples, held_at)
    server_connections = sum(w["connections"] for w in final_status.get("workers", []))
    held = hold.get("connections", 0)
    per = max(held, 1)
    memory = {
        "connections": held,
        "idle_server": {"rss": idle["wsd_rss"], "uss": idle["wsd_uss"], "pss": idle["wsd_pss"]},
        "held_server": {k: held_sample[f"wsd_{k}"] for k in ("rss", "uss", "pss")},
        "per_connection_bytes": {
            "rss": round(held_sample["wsd_rss"] / per, 1),
            "uss": round(held_sample["wsd_uss"] / per, 1),
            "pss": round(held_sample["wsd_pss"] / per, 1),
            "rss_over_idle": round((held_sample["wsd_rss"] - idle["wsd_rss"]) / per, 1),
            "uss_over_idle": round((held_sample["wsd_uss"] - idle["wsd_uss"]) / per, 1),
        },
        "kernel_tcp_bytes": held_sample["tcp_mem_bytes"],
        "kernel_tcp_bytes_idle": idle["tcp_mem_bytes"],
        "kernel_slab_bytes": held_sample["slab_bytes"],
        "kernel_slab_per_connection_pair": round((held_sample["slab_bytes"] - idle["slab_bytes"]) / per, 1),
        "tcp_sockets_in_use": held_sample["tcp_inuse"],
        "locust_rss": held_sample["locust_rss"],
        "locust_rss_per_connection": round(held_sample["locust_rss"] / per, 1),
    }

    # Broadcasts: every delivery's publish-to-receive latency, per broadcast and over all.
    broadcasts = []
    all_latencies: list[int] = []
    for entry in locust.get("broadcasts", []):
        seq = str(entry["seq"])
        latencies: list[int] = []
        for worker in locust_workers:
            latencies.extend(worker.get("latency_us", {}).get(seq, []))
        all_latencies.extend(latencies)
        summary = latency_summary(latencies)
        summary.update(seq=entry["seq"], expected=entry["expected"], missing=max(0, entry["expected"] - len(latencies)))
        broadcasts.append(summary)

    errors: dict[str, int] = {}
    for worker in locust_workers:
        for kind, count in worker.get("errors", {}).items():
            errors[kind] = errors.get(kind, 0) + count
    handshake_us = sorted(us for w in locust_workers for us in w.get("handshake_us", []))
    end_time = broadcast_phase.get("end") or samples[-1]["time"]
    return {
        "parameters": {
            "connections": args.connections,
            "connections_per_user": args.connections_per_user,
            "locust_processes": processes,
            "wsd_workers": workers,
            "spawn_rate": args.spawn_rate,
            "hold_seconds": args.hold,
            "broadcasts": args.broadcasts,
            "wsd_flags": args.wsd_flags,
        },
        "machine": machine_info(),
        "command": command_line(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(samples[0]["time"])),
        "connections_held": held,
        "server_connections_at_end": server_connections,
        "per_worker_connections": {str(w["slot"]): w["connections"] for w in final_status.get("workers", [])},
        "ramp": {
            "connections": opened,
            "seconds": round(ramp_seconds, 3),
            "rate_per_second": round(opened / ramp_seconds, 1),
            "peak_rate_per_second_1s": round(peak_rate, 1),
            "handshake_ms": latency_summary(handshake_us),
            "reached_target": held >= args.connections,
        },
        "memory": memory,
        "cpu": {
            "ramp": cpu_between(samples, ramp.get("start", samples[0]["time"]), ramp.get("end", samples[-1]["time"])),
            "hold": cpu_between(samples, hold.get("start", samples[0]["time"]), held_at),
            "broadcast": cpu_between(samples, broadcast_phase.get("start") or held_at, end_time),
        },
        "broadcasts": broadcasts,
        "broadcast_latency": latency_summary(all_latencies),
        "deliveries": {
            "expected": sum(b["expected"] for b in broadcasts),
            "received": sum(b["count"] for b in broadcasts),
            "missing": sum(b["missing"] for b in broadcasts),
        },
        "errors": errors,
        "locust_errors": locust.get("locust_errors", []),
        "locust_stats": locust.get("locust_stats", {}),
        "scenario_error": locust.get("error"),
        # System-wide, so another run on the box at the same time would add to them.
        "tcp_counters_during_run": {
            name: samples[-1]["tcp_counters"].get(name, 0) - idle["tcp_counters"].get(name, 0) for name in TCP_COUNTERS
        },
        "samples": samples,
    }


def markdown_report(report: dict[str, Any]) -> str:
    p, memory, ramp = report["parameters"], report["memory"], report["ramp"]
    per = memory["per_connection_bytes"]
    latency = report["broadcast_latency"]
    mib = 2**20
    cpu = report["cpu"]
    handshake = ramp["handshake_ms"]
    deliveries = report["deliveries"]
    kib = 1024
    cpu_text = " / ".join(
        f"{cpu[k]['wsd_cores']:.2f} + {cpu[k]['locust_cores']:.2f}" for k in ("ramp", "hold", "broadcast")
    )
    rows = [
        ("connections held (every one subscribed) / target", f"{report['connections_held']:,} / {p['connections']:,}"),
        ("wsd workers / Locust worker processes", f"{p['wsd_workers']} / {p['locust_processes']}"),
        ("per wsd worker at the end", ", ".join(f"{k}: {v:,}" for k, v in report["per_worker_connections"].items())),
        ("ramp (first to last handshake)",
         f"{ramp['seconds']:.1f} s, {ramp['rate_per_second']:,.0f} conn/s "
         f"(best 1 s: {ramp['peak_rate_per_second_1s']:,.0f}/s)"),
        ("handshake time p50 / p99 / max",
         f"{handshake['p50_ms']:.1f} / {handshake['p99_ms']:.1f} / {handshake['max_ms']:.1f} ms"),
        ("server RSS, all wsd processes (idle → held)",
         f"{memory['idle_server']['rss'] / mib:,.0f} → {memory['held_server']['rss'] / mib:,.0f} MiB"),
        ("server memory per connection: RSS / USS / PSS",
         f"{per['rss'] / kib:.2f} / {per['uss'] / kib:.2f} / {per['pss'] / kib:.2f} KiB"),
        ("… over the idle server: RSS / USS",
         f"{per['rss_over_idle'] / kib:.2f} / {per['uss_over_idle'] / kib:.2f} KiB"),
        ("kernel: TCP buffers (sockstat); slab growth per connection pair",
         f"{memory['kernel_tcp_bytes'] / mib:,.1f} MiB; {memory['kernel_slab_per_connection_pair'] / kib:.2f} KiB"),
        ("Locust RSS, per connection",
         f"{memory['locust_rss'] / mib:,.0f} MiB, {memory['locust_rss_per_connection'] / kib:.2f} KiB"),
        ("CPU cores busy: ramp / hold / broadcasts (wsd + Locust)", cpu_text),
        ("broadcast to all: deliveries (missing)",
         f"{deliveries['received']:,} of {deliveries['expected']:,} ({deliveries['missing']:,})"),
        ("publish → receive, all deliveries p50 / p99 / max",
         f"{latency['p50_ms']:.1f} / {latency['p99_ms']:.1f} / {latency['max_ms']:.1f} ms"),
        ("errors by kind", ", ".join(f"{k}: {v:,}" for k, v in report["errors"].items()) or "none"),
        ("kernel TCP counters during the run (system-wide)",
         ", ".join(f"{k} {v:,}" for k, v in report["tcp_counters_during_run"].items())),
    ]  # fmt: skip
    lines = [
        f"# wsd connection benchmark: {report['parameters']['connections']:,} connections",
        "",
        "| metric | value |",
        "| --- | --- |",
        *(f"| {name} | {value} |" for name, value in rows),
        "",
        "Per broadcast (time from publish to each delivery; max = the broadcast has reached all):",
        "",
        "| broadcast | delivered / expected | p50 ms | p99 ms | max ms |",
        "| --- | --- | --- | --- | --- |",
        *(
            f"| {b['seq']} | {b['count']:,} / {b['expected']:,} "
            f"| {b['p50_ms']:.1f} | {b['p99_ms']:.1f} | {b['max_ms']:.1f} |"
            for b in report["broadcasts"]
        ),
        "",
        "RSS counts the bus's shared memory (its memfd segments) in every worker that touched it; USS is "
        "memory only that process uses; PSS shares the shared pages out between the processes.",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Machine: {report['machine']['cpu']}, {report['machine']['cpus']} CPUs shared by server and load "
        f"generator, {report['machine']['memory_bytes'] / 2**30:.0f} GiB, Python {report['machine']['python']}, "
        f"picows {report['machine']['picows']}, uvloop {report['machine']['uvloop']}, Locust "
        f"{report['machine']['locust']}, Linux {report['machine']['kernel']}. Started {report['started']}.",
        "",
    ]
    return "\n".join(lines)


def write_plot(report: dict[str, Any], path: Path) -> bool:
    """Connections, memory and CPU over time; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    samples = report["samples"]
    t = [s["t"] for s in samples]
    cpu_wsd, cpu_locust = [0.0], [0.0]
    for before, after in zip(samples, samples[1:], strict=False):
        span = max(after["t"] - before["t"], 1e-9)
        cpu_wsd.append((after["wsd_cpu_s"] - before["wsd_cpu_s"]) / span)
        cpu_locust.append((after["locust_cpu_s"] - before["locust_cpu_s"]) / span)
    figure, (ax_conn, ax_mem, ax_cpu) = plt.subplots(3, 1, sharex=True, figsize=(9, 8))
    ax_conn.plot(t, [s["connections"] for s in samples], color="tab:blue")
    ax_conn.set_ylabel("connections")
    ax_conn.set_title(f"wsd: {report['parameters']['connections']:,} WebSocket connections, 2-core box")
    for name, key in (("wsd RSS", "wsd_rss"), ("wsd USS", "wsd_uss"), ("kernel slab", "slab_bytes"),
                      ("Locust RSS", "locust_rss")):  # fmt: skip
        ax_mem.plot(t, [s[key] / 2**20 for s in samples], label=name)
    ax_mem.set_ylabel("MiB")
    ax_mem.legend(loc="upper left", fontsize="small")
    ax_cpu.plot(t, cpu_wsd, label="wsd")
    ax_cpu.plot(t, cpu_locust, label="Locust")
    ax_cpu.set_ylabel("CPU cores")
    ax_cpu.set_xlabel("seconds")
    ax_cpu.legend(loc="upper left", fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return True


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.connections", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--connections", type=int, default=200_000, help="connections to open and hold (N)")
    # Many connections per User: Locust's own per-User cost (object, greenlet, dispatch) then
    # vanishes next to the connections', which are io-watcher callbacks either way.
    parser.add_argument("--connections-per-user", type=int, default=100, help="WebSocket connections per Locust User")
    parser.add_argument("--processes", type=int, default=0, help="Locust worker processes (0: N / 18,000)")
    parser.add_argument("--workers", default="auto", help="wsd workers (default auto: enough for N)")
    parser.add_argument("--spawn-rate", type=float, default=20_000, help="Locust users started per second")
    parser.add_argument("--ramp-timeout", type=float, default=300.0)
    parser.add_argument("--hold", type=float, default=20.0, help="seconds to hold the connections idle")
    parser.add_argument("--broadcasts", type=int, default=5)
    parser.add_argument("--broadcast-timeout", type=float, default=60.0)
    parser.add_argument("--wsd-flags", default="", help="extra `wsd serve` flags, e.g. '--ring-size 4194304'")
    parser.add_argument("--progress-every", type=int, default=2, help="print a progress line every N samples")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="results folder (default bench/results)")
    parser.add_argument("--tag", default="", help="file name tag (default: the connection count)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tag = args.tag or (f"{args.connections // 1000}k" if args.connections >= 1000 else str(args.connections))
    report = run_benchmark(args)
    args.out.mkdir(parents=True, exist_ok=True)
    markdown = markdown_report(report)
    if write_plot(report, args.out / f"connections-{tag}.png"):
        markdown += f"\n![connections, memory and CPU over time](connections-{tag}.png)\n"
    (args.out / f"connections-{tag}.json").write_text(json.dumps(report, indent=1))
    (args.out / f"connections-{tag}.md").write_text(markdown)
    print(markdown)
    if report["scenario_error"]:
        print(f"scenario failed: {report['scenario_error']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
