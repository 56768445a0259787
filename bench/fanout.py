"""Fan-out benchmark: N WebSocket subscribers spread over wsd's workers, one publisher.

Starts `wsd serve`, opens N subscriber connections from K load-generator processes (harness.loadgen:
picows + uvloop, one callback-driven listener per connection, no per-connection Task), subscribes
them all to one channel, then measures

1. bursts: M messages published back to back in one ``POST /api/publish_batch``; the time from
   the publish to the last delivery at the last subscriber gives deliveries/s = N*M/elapsed, and every
   subscriber is checked to have got exactly those M messages with consecutive offsets;
2. a paced phase: ``--rate`` messages/s over ``POST /api/publish``, each carrying its publish time
   (``time.time_ns()``), so every subscriber records publish-to-receive latency (same host clock).

Server CPU (all wsd processes, from psutil) is sampled over each burst, as is the load generator's,
so the report shows which side was the bottleneck. Prints a Markdown table and writes
``fanout-<tag>.json`` and ``fanout-<tag>.md`` under ``--out``.

    flock /tmp/wsd-bench.lock .venv/bin/python -m bench.fanout --subscribers 10000 --workers 2 --tag 2w-10k

(from the repository root; `make bench-fanout` does the same).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from bench.measure import RESULTS_DIR, CpuSampler, command_line, machine_info, percentile, spread
from harness.loadgen import PHASE_GRACE_SECONDS, LoadGenerator, merge_phase, phase_latencies_us
from harness.publisher import Publisher
from harness.wsd_process import WsdProcess


def rss_bytes(processes: dict[str, psutil.Process]) -> dict[str, int]:
    return {name: process.memory_info().rss for name, process in processes.items()}


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
        servers = wsd.processes()
        load = LoadGenerator([wsd.url], args.client_processes, args.subscribers, fast=args.listener == "cython")
        clients = {f"client:{p.pid}": psutil.Process(p.pid) for p in load.processes}
        clients[f"coordinator:{os.getpid()}"] = psutil.Process()
        server_cpu, client_cpu = CpuSampler(servers), CpuSampler(clients)

        connect = load.connect_all()
        print(f"connect: {connect['subscribers']} in {connect['connect_seconds']:.2f}s", file=sys.stderr)
        rss_subscribed = rss_bytes(servers)

        publisher = Publisher(wsd.api_port, args.payload_bytes)
        rounds = []
        for round_index in range(args.rounds):
            load.arm(expected_per_connection=args.messages, record_latency=False, timeout=PHASE_GRACE_SECONDS)
            server_cpu.start()
            client_cpu.start()
            publish_started_ns = time.time_ns()
            offsets = publisher.publish_burst(args.messages)
            publish_returned_ns = time.time_ns()
            reports = load.collect(PHASE_GRACE_SECONDS + 30)
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
        timeout = args.paced_seconds + PHASE_GRACE_SECONDS
        load.arm(expected_per_connection=paced_messages, record_latency=True, timeout=timeout)
        paced_started = time.monotonic()
        paced_offsets = []
        for seq in range(paced_messages):
            due = paced_started + seq / args.rate
            time.sleep(max(0.0, due - time.monotonic()))
            paced_offsets.append(publisher.publish_one(seq))
        reports = load.collect(PHASE_GRACE_SECONDS + 30)
        paced_check = merge_phase(reports, paced_messages, paced_offsets[0])
        latencies = phase_latencies_us(reports)
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
                "subscribers": connect["subscribers"],
                "seconds": connect["connect_seconds"],
                "per_second": connect["connects_per_second"],
                "per_worker": connect["per_worker"],
            },
            "subscribe": {"seconds": connect["subscribe_seconds"], "subscribed": connect["subscribers"]},
            "load_generator": f"picows, {load.listener_name}",
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
        f"Load generator: {report['load_generator']}, {params['client_processes']} processes.",
        "",
        f"Publisher: HTTP API (bursts: one `POST /api/publish_batch` of {params['messages']} messages; "
        f"paced: one `POST /api/publish` per message). Latency = receive time - publish time stamped "
        f"just before the request, same host clock. Started {report['started']}.",
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.fanout", description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=10000, help="subscriber connections (default 10000)")
    parser.add_argument("--workers", type=int, default=2, help="wsd worker processes (default 2)")
    parser.add_argument("--client-processes", type=int, default=2, help="load-generator processes (default 2)")
    parser.add_argument("--messages", type=int, default=100, help="messages per burst (default 100, max 1000)")
    parser.add_argument("--rounds", type=int, default=5, help="bursts to run (default 5)")
    parser.add_argument("--payload-bytes", type=int, default=64, help="size of each message's data (default 64)")
    parser.add_argument("--rate", type=float, default=5.0, help="messages/s in the paced phase (default 5)")
    parser.add_argument("--paced-seconds", type=float, default=10.0, help="length of the paced phase (default 10)")
    parser.add_argument("--write-buffer-limit", type=int, default=0, help="pass to wsd serve (default: its own)")
    parser.add_argument(
        "--listener", choices=("cython", "python"), default="cython",
        help="the load generator's listener: harness/fastlisten.pyx (default) or its Python reference",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="results folder (default bench/results)")
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
        "command": command_line(),
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
