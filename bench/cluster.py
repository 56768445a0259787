"""The cross-host bus against socket.io's Redis adapter: three hosts (network namespaces on this box,
each its own address), one Redis, 10,000 subscribers spread over the hosts, in the same run:

- wsd: `wsd serve --workers W --cluster redis://...` on every host (W = --wsd-workers, default 2);
- socket.io 4 + @socket.io/redis-adapter: one Node process per host (bench/peers/socketio).

Two channels: `bench`, with subscribers on all three hosts, and `local`, with subscribers on host 0
only (a third of the subscribers also subscribe it). Publishes go through host 0's API. For each:
  1. burst: 100 messages in one publish_batch -> deliveries/s (first publish to last receive);
  2. paced: 5 messages/s for 10 s -> publish-to-receive latency p50/p99;
  and over each phase, from Redis's INFO: Redis CPU per published message and bytes Redis sent.
Writes cluster-<tag>.json, .md (wsd / socket.io ratios from this run) and .png under --out.

    flock /tmp/wsd-bench.lock .venv/bin/python -m bench.cluster --setup --tag 3hosts-10k

(as root, from the repository root; `make bench-cluster` does the same).
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from bench.measure import RESULTS_DIR, command_line, cpu_seconds, machine_info, percentile, spread
from bench.peers.run import PEERS_DIR, _node_package_version, _node_version, _redis_version, setup_peers
from harness.listener import SHARED_CHANNEL
from harness.loadgen import PHASE_GRACE_SECONDS, LoadGenerator, merge_phase, phase_latencies_us
from harness.netns_hosts import API_KEY, CLIENT_IPS, REDIS_IP, Lab, NetnsRedis, NetnsWsd, host_ip, in_netns, missing
from harness.publisher import Publisher

PEERS = ("wsd", "socketio")
LOCAL_CHANNEL = "local"  # subscribers on host 0 only
SOCKETIO_PORT = 9200
SCENARIOS = {"all": (SHARED_CHANNEL, "channel with subscribers on all 3 hosts"),
             "local": (LOCAL_CHANNEL, "channel with subscribers on 1 of 3 hosts")}  # fmt: skip


class Redis(NetnsRedis):
    def info(self) -> dict[str, float]:
        values = {}
        for line in self.cli("INFO", "all").splitlines():
            key, _, value = line.partition(":")
            try:
                values[key] = float(value)
            except ValueError:
                continue
        return values


class Deployment:
    """One peer on the three hosts, its Redis, and where to connect and publish."""

    def __init__(self, lab: Lab, peer: str, wsd_workers: int):
        self.lab, self.peer, self.wsd_workers = lab, peer, wsd_workers
        self.redis = Redis(lab, name=f"redis-{peer}")
        self.wsd: list[NetnsWsd] = []
        self.node: list[subprocess.Popen] = []
        self.version = ""

    def start(self) -> None:
        self.redis.start()
        if self.peer == "wsd":
            self.wsd = [NetnsWsd(self.lab, index, ["--cluster", self.redis.url, "--log-level", "warning"],
                                 workers=self.wsd_workers) for index in range(3)]  # fmt: skip
            for host in self.wsd:
                host.start(wait=False)
            for host in self.wsd:
                host.wait_ready()
            self.version = f"wsd, {self.wsd_workers} workers per host, --cluster (one Redis)"
        else:
            for index in range(3):
                command = ["node", str(PEERS_DIR / "socketio" / "server.js"), str(SOCKETIO_PORT), str(self.redis.port),
                           REDIS_IP, host_ip(index)]  # fmt: skip
                self.node.append(self.lab.spawn(self.lab.hosts[index], command, f"socketio-h{index}"))
            deadline = time.monotonic() + 30
            while not all("ready" in self.lab.log_text(f"socketio-h{i}") for i in range(3)):
                if time.monotonic() > deadline or any(p.poll() is not None for p in self.node):
                    raise RuntimeError(f"socket.io did not start: {self.lab.log_text('socketio-h0')[-2000:]}")
                time.sleep(0.1)
            self.version = (
                f"socket.io {_node_package_version('socketio', 'socket.io')}, @socket.io/redis-adapter "
                f"{_node_package_version('socketio', '@socket.io/redis-adapter')}, one process per host, "
                f"node {_node_version()}"
            )
        self.version += f"; redis {_redis_version()}"

    def url(self, host: int) -> str:
        if self.peer == "wsd":
            return self.wsd[host].url
        return f"ws://{host_ip(host)}:{SOCKETIO_PORT}/socket.io/?EIO=4&transport=websocket"

    def api_port(self) -> int:
        return 8081 if self.peer == "wsd" else SOCKETIO_PORT

    def server_processes(self) -> list[psutil.Process]:
        if self.peer == "wsd":
            pids = [p.process.pid for p in self.wsd]
            pids += [w["pid"] for host in self.wsd for w in host.status()["workers"]]
        else:
            pids = [p.pid for p in self.node]
        return [psutil.Process(pid) for pid in pids]

    def stop(self) -> None:
        for host in self.wsd:
            host.stop()
        for process in self.node:
            process.terminate()
            process.wait(10)
        self.redis.kill()


class RedisMeter:
    """Redis's CPU seconds and output bytes over a phase, less what reading INFO itself costs."""

    def __init__(self, redis: Redis):
        self.redis = redis
        first, second = redis.info(), redis.info()
        self.info_bytes = second["total_net_output_bytes"] - first["total_net_output_bytes"]

    def start(self) -> None:
        self.before = self.redis.info()

    def stop(self, messages: int) -> dict[str, float]:
        after = self.redis.info()
        cpu = (after["used_cpu_user"] + after["used_cpu_sys"]) - (self.before["used_cpu_user"] +
                                                                   self.before["used_cpu_sys"])  # fmt: skip
        sent = after["total_net_output_bytes"] - self.before["total_net_output_bytes"] - self.info_bytes
        return {"redis_cpu_us_per_message": cpu / messages * 1e6, "redis_bytes_sent": sent,
                "redis_bytes_per_message": sent / messages}  # fmt: skip


def run_burst(args, generators: list[LoadGenerator], publisher: Publisher, meter: RedisMeter, first: int) -> dict:
    rounds = []
    for _ in range(args.rounds):
        for load in generators:
            load.arm(expected_per_connection=args.messages, record_latency=False, timeout=PHASE_GRACE_SECONDS)
        meter.start()
        started_ns = time.time_ns()
        offsets = publisher.publish_burst(args.messages)
        reports = [report for load in generators for report in load.collect(PHASE_GRACE_SECONDS + 30)]
        redis = meter.stop(args.messages)
        check = merge_phase(reports, args.messages, offsets[0] if first else None)
        elapsed = (check.pop("last_receive_ns") - started_ns) / 1e9
        rounds.append({"elapsed_seconds": elapsed, "deliveries_per_second": check["deliveries"] / elapsed,
                       **redis, **check})  # fmt: skip
        time.sleep(0.5)
    return {
        "messages": args.messages,
        "deliveries_per_second": spread([r["deliveries_per_second"] for r in rounds]),
        "redis_cpu_us_per_message": statistics.median(r["redis_cpu_us_per_message"] for r in rounds),
        "redis_bytes_per_message": statistics.median(r["redis_bytes_per_message"] for r in rounds),
        "missing": sum(r["missing"] for r in rounds),
        "extra": sum(r["extra"] for r in rounds),
        "out_of_order": sum(r["out_of_order"] for r in rounds),
        "rounds": rounds,
    }


def run_paced(args, generators: list[LoadGenerator], publisher: Publisher, meter: RedisMeter) -> dict:
    count = max(1, round(args.rate * args.paced_seconds))
    for load in generators:
        load.arm(expected_per_connection=count, record_latency=True, timeout=args.paced_seconds + PHASE_GRACE_SECONDS)
    meter.start()
    started = time.monotonic()
    for seq in range(count):
        time.sleep(max(0.0, started + seq / args.rate - time.monotonic()))
        publisher.publish_one(seq)
    reports = [report for load in generators for report in load.collect(args.paced_seconds + PHASE_GRACE_SECONDS)]
    redis = meter.stop(count)
    check = merge_phase(reports, count, None)
    check.pop("last_receive_ns")
    latencies = phase_latencies_us(reports)
    return {"rate": args.rate, "seconds": args.paced_seconds, "messages": count, "latency_samples": len(latencies),
            "latency_us": {"p50": percentile(latencies, 0.5), "p99": percentile(latencies, 0.99),
                           "max": latencies[-1] if latencies else 0}, **redis, **check}  # fmt: skip


def publisher_for(lab: Lab, deployment: Deployment, channel: str, payload_bytes: int) -> Publisher:
    publisher = Publisher(deployment.api_port(), payload_bytes, channel, host=host_ip(0),
                          api_key=API_KEY if deployment.peer == "wsd" else None)
    connect = publisher.connection.connect

    def connect_in_the_client_namespace() -> None:
        with in_netns(lab.client):
            connect()

    publisher.connection.connect = connect_in_the_client_namespace
    return publisher


def run_peer(args, lab: Lab, peer: str) -> dict[str, Any]:
    deployment = Deployment(lab, peer, args.wsd_workers)
    generators: list[LoadGenerator] = []
    try:
        deployment.start()
        socketio = peer == "socketio"
        on_host0 = args.subscribers // 3 + (args.subscribers % 3 > 0)
        # Host 0's subscribers take both channels; hosts 1 and 2 only the shared one.
        generators = [
            LoadGenerator([deployment.url(0)], 1, on_host0, socketio=socketio, channels=(SHARED_CHANNEL, LOCAL_CHANNEL),
                          addresses=CLIENT_IPS[:16], netns=lab.client),
            LoadGenerator([deployment.url(1), deployment.url(2)], args.client_processes - 1,
                          args.subscribers - on_host0, socketio=socketio, addresses=CLIENT_IPS[16:], netns=lab.client),
        ]  # fmt: skip
        connected = [load.connect_all() for load in generators]
        meter = RedisMeter(deployment.redis)
        result: dict[str, Any] = {"version": deployment.version,
                                  "subscribers": sum(c["subscribers"] for c in connected), "scenarios": {}}  # fmt: skip
        server = deployment.server_processes()
        for name, (channel, description) in SCENARIOS.items():
            publisher = publisher_for(lab, deployment, channel, args.payload_bytes)
            armed = generators if name == "all" else generators[:1]
            publisher.publish_burst(5)  # warm-up (the first publish of a channel pays for its epoch)
            time.sleep(1.0)
            server_before = cpu_seconds(server)
            burst = run_burst(args, armed, publisher, meter, first=1)
            paced = run_paced(args, armed, publisher, meter)
            server_seconds = cpu_seconds(server) - server_before
            deliveries = sum(r["deliveries"] for r in burst["rounds"]) + paced["deliveries"]
            result["scenarios"][name] = {
                "description": description, "channel": channel,
                "subscribers": sum(load.subscribers for load in armed),
                "burst": burst, "paced": paced,
                "server_cpu_us_per_delivery": server_seconds / max(1, deliveries) * 1e6,
            }  # fmt: skip
            publisher.connection.close()
        return result
    finally:
        for load in generators:
            load.close()
        deployment.stop()


def ratio(ours: float, theirs: float) -> float | None:
    return round(ours / theirs, 3) if theirs else None


def ratios(report: dict[str, Any]) -> dict[str, Any]:
    wsd, sio = report["results"].get("wsd", {}), report["results"].get("socketio", {})
    if "scenarios" not in wsd or "scenarios" not in sio:
        return {}
    out: dict[str, Any] = {}
    for name in SCENARIOS:
        ours, theirs = wsd["scenarios"][name], sio["scenarios"][name]
        out[name] = {
            "deliveries_per_second": ratio(ours["burst"]["deliveries_per_second"]["median"],
                                           theirs["burst"]["deliveries_per_second"]["median"]),
            "p50": ratio(ours["paced"]["latency_us"]["p50"], theirs["paced"]["latency_us"]["p50"]),
            "p99": ratio(ours["paced"]["latency_us"]["p99"], theirs["paced"]["latency_us"]["p99"]),
            "redis_cpu_per_message": ratio(ours["burst"]["redis_cpu_us_per_message"],
                                           theirs["burst"]["redis_cpu_us_per_message"]),
            "redis_bytes_per_message": ratio(ours["burst"]["redis_bytes_per_message"],
                                             theirs["burst"]["redis_bytes_per_message"]),
        }  # fmt: skip
    return out


def markdown_report(report: dict[str, Any]) -> str:
    parameters = report["parameters"]
    lines = [
        f"# The cross-host bus: wsd --cluster vs socket.io + Redis adapter ({report['started']})", "",
        f"`{report['command']}`", "",
        f"{parameters['subscribers']:,} subscribers over 3 hosts (network namespaces on one box: "
        f"{report['machine']['nproc']} CPUs, {report['machine']['cpu_model']}), one Redis; publishes through "
        f"host 0's API; {parameters['payload_bytes']} B payloads. Burst: {parameters['messages']} messages in one "
        f"publish_batch, {parameters['rounds']} rounds (median). Paced: {parameters['rate']:g} msg/s for "
        f"{parameters['paced_seconds']:g} s. Redis figures from its INFO over the burst phase.", "",
    ]  # fmt: skip
    for name, result in report["results"].items():
        lines.append(f"- **{name}**: {result.get('version') or result.get('error')}")
    lines.append("")
    for name, (channel, description) in SCENARIOS.items():
        lines += [f"## {description} (`{channel}`)", "",
                  "| | deliveries/s (burst) | p50 ms | p99 ms | Redis CPU µs/message | Redis bytes sent/message "
                  "| server CPU µs/delivery | missing | out of order |",
                  "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for peer, result in report["results"].items():
            if "scenarios" not in result:
                continue
            scenario = result["scenarios"][name]
            burst, paced = scenario["burst"], scenario["paced"]
            lines.append(
                f"| {peer} ({scenario['subscribers']:,} subscribers) | {burst['deliveries_per_second']['median']:,.0f} "
                f"| {paced['latency_us']['p50'] / 1000:.2f} | {paced['latency_us']['p99'] / 1000:.2f} "
                f"| {burst['redis_cpu_us_per_message']:.1f} | {burst['redis_bytes_per_message']:,.0f} "
                f"| {scenario['server_cpu_us_per_delivery']:.2f} | {burst['missing'] + paced['missing']} "
                f"| {burst['out_of_order'] + paced['out_of_order']} |"
            )
        lines.append("")
    found = report.get("ratios")
    if found:
        lines += ["## wsd / socket.io, this run", "",
                  "| | deliveries/s | p50 | p99 | Redis CPU per message | Redis bytes per message |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        for name, values in found.items():
            lines.append(f"| {SCENARIOS[name][1]} | {values['deliveries_per_second']}x | {values['p50']}x "
                         f"| {values['p99']}x | {values['redis_cpu_per_message']}x | "
                         f"{values['redis_bytes_per_message']}x |")  # fmt: skip
        lines += ["", "Targets (issue 11): deliveries/s at least 3x socket.io's; for the channel on 1 of 3 hosts, "
                  "Redis sends at most 1/3 of socket.io's bytes.", ""]  # fmt: skip
    return "\n".join(lines) + "\n"


def write_plot(report: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    peers = [p for p, r in report["results"].items() if "scenarios" in r]
    figure, axes = plt.subplots(1, 3, figsize=(15, 4))
    width = 0.8 / max(1, len(peers))
    panels = [
        ("deliveries/s, burst (higher is better)", lambda s: s["burst"]["deliveries_per_second"]["median"]),
        ("p99 latency at 5 msg/s, ms (lower is better)", lambda s: s["paced"]["latency_us"]["p99"] / 1000),
        ("bytes Redis sent per message (lower is better)", lambda s: s["burst"]["redis_bytes_per_message"]),
    ]
    for axis, (title, value) in zip(axes, panels, strict=True):
        for index, peer in enumerate(peers):
            positions = [i + index * width for i in range(len(SCENARIOS))]
            axis.bar(positions, [value(report["results"][peer]["scenarios"][n]) for n in SCENARIOS], width, label=peer)
        axis.set_xticks([i + width * (len(peers) - 1) / 2 for i in range(len(SCENARIOS))],
                        ["on all 3 hosts", "on 1 of 3 hosts"])  # fmt: skip
        axis.set_title(title)
        axis.legend()
    axes[0].set_yscale("log")
    figure.suptitle(f"{report['parameters']['subscribers']:,} subscribers over 3 hosts, one Redis, same run")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return True


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", default=",".join(PEERS))
    parser.add_argument("--setup", action="store_true", help="install socket.io's npm packages first (npm ci)")
    parser.add_argument("--subscribers", type=int, default=10000)
    parser.add_argument("--wsd-workers", type=int, default=2, help="wsd workers per host (default 2)")
    parser.add_argument("--client-processes", type=int, default=2, help="load-generator processes (>= 2)")
    parser.add_argument("--messages", type=int, default=100, help="messages per burst (default 100)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--payload-bytes", type=int, default=64)
    parser.add_argument("--rate", type=float, default=5.0, help="paced messages/s (default 5)")
    parser.add_argument("--paced-seconds", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument("--tag", default="")
    args = parser.parse_args(argv)
    args.peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    if set(args.peers) - set(PEERS) or args.client_processes < 2:
        parser.error(f"peers are {', '.join(PEERS)}; --client-processes must be at least 2")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.tag = args.tag or time.strftime("%Y%m%d-%H%M%S")
    reason = missing()
    if reason or shutil.which("redis-server") is None:
        print(f"bench.cluster: {reason or 'redis-server is not installed'}", file=sys.stderr)
        return 2
    if args.setup and "socketio" in args.peers:
        setup_peers(["socketio"])
    report: dict[str, Any] = {
        "benchmark": "cluster-fanout", "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": command_line(),
        "parameters": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": {**machine_info(), "hostname": socket.gethostname()}, "results": {},
    }  # fmt: skip
    failed = False
    lab = Lab(hosts=3, prefix="wsdb").create()
    try:
        for peer in args.peers:
            try:
                report["results"][peer] = run_peer(args, lab, peer)
            except Exception as exc:  # one peer failing must not lose the other's numbers
                report["results"][peer] = {"error": f"{type(exc).__name__}: {exc}"[:800]}
                print(f"{peer}: FAILED {exc}", file=sys.stderr)
                failed = True
    finally:
        lab.destroy()
    report["ratios"] = ratios(report)
    markdown = markdown_report(report)
    print(markdown)
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / f"cluster-{args.tag}.json"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    json_path.with_suffix(".md").write_text(markdown)
    write_plot(report, json_path.with_suffix(".png"))
    print(f"wrote {json_path}, .md and .png", file=sys.stderr)
    for result in report["results"].values():
        for scenario in result.get("scenarios", {}).values():
            if scenario["burst"]["missing"] or scenario["burst"]["out_of_order"] or scenario["paced"]["missing"]:
                failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
