"""What auth and TLS cost a running wsd: handshake rate and fan-out, auth on vs off, TLS on vs off,
in one run on one box.

For each configuration — `plain` (no auth, no TLS), `hs256` and `es256` (a connection token in
`?token=` on every handshake, verified before the upgrade), `tls` (wss:// with a self-signed P-256
certificate), `tls+es256` — it starts `wsd serve`, opens N subscriber connections from K
load-generator processes (harness.loadgen: picows, the Cython listener; every process at once,
`CONNECT_CONCURRENCY` handshakes in flight each), subscribes them all to one channel, then runs
bursts of M messages over the HTTP API (`POST /api/publish_batch`) and a short paced phase for
latency, as bench/fanout.py does. Every delivery is checked (count, order, first offset).

Reported per configuration: handshakes per second (wall, N connections), server CPU per handshake
(all wsd processes, psutil, over the connect phase: the cost that does not depend on how fast this
box's load generator is), burst deliveries per second and server CPU per delivery, paced latency.
The configurations run in turn, `--passes` times with the order reversed every other pass, so slow
drifts of the shared box show as spread rather than as a difference.

    flock /tmp/wsd-bench.lock .venv/bin/python -m bench.auth_cost --subscribers 5000 --tag 2w-5k

(from the repository root; `make bench-auth-cost` does the same). Writes `auth-cost-<tag>.json` and
`.md` under `--out`.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import json
import os
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bench.measure import RESULTS_DIR, CpuSampler, command_line, machine_info, percentile, spread
from harness.listener import SHARED_CHANNEL
from harness.loadgen import PHASE_GRACE_SECONDS, LoadGenerator, merge_phase, phase_latencies_us
from harness.publisher import Publisher
from harness.wsd_process import WsdProcess

CONFIGURATIONS = ("plain", "hs256", "es256", "tls", "tls+es256")
SECRET = "bench-secret-0123456789-abcdefghijklmnopqrstuvwxyz"


class Material:
    """Keys, a certificate and tokens for every configuration, made once per run."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.ec_key = ec.generate_private_key(ec.SECP256R1())
        public = self.ec_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.public_key_file = self._write("tokens.pem", public)
        self.secret_file = self._write("secret", SECRET.encode())
        tls_key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
        now = datetime.datetime.now(datetime.UTC)
        certificate = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(tls_key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(tls_key, hashes.SHA256())
        )  # fmt: skip
        self.certificate_pem = certificate.public_bytes(serialization.Encoding.PEM)
        self.cert_file = self._write("cert.pem", self.certificate_pem)
        self.key_file = self._write(
            "key.pem",
            tls_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()),
        )  # fmt: skip

    def _write(self, name: str, data: bytes) -> str:
        path = self.directory / name
        path.write_bytes(data)
        return str(path)

    def token(self, algorithm: str, ttl_s: float) -> str:
        # What a social network's backend would issue: its user, one user channel, a room pattern.
        claims = {"sub": "bench-user", "exp": int(time.time() + ttl_s), "subs": [SHARED_CHANNEL, "room:*"],
                  "pubs": ["room:*"]}  # fmt: skip
        if algorithm == "HS256":
            return jwt.encode(claims, SECRET, algorithm="HS256")
        return jwt.encode(claims, self.ec_key, algorithm="ES256")

    def setup(self, configuration: str, ttl_s: float) -> tuple[list[str], str | None, str | None]:
        """(wsd flags, token or None, CA PEM or None) of a configuration."""
        flags: list[str] = []
        token = ca = None
        if "hs256" in configuration:
            flags += ["--auth-secret-file", self.secret_file]
            token = self.token("HS256", ttl_s)
        if "es256" in configuration:
            flags += ["--auth-public-key", self.public_key_file]
            token = self.token("ES256", ttl_s)
        if "tls" in configuration:
            flags += ["--tls-cert", self.cert_file, "--tls-key", self.key_file]
            ca = self.certificate_pem.decode()
        return flags, token, ca


def run_configuration(args: argparse.Namespace, material: Material, configuration: str) -> dict[str, Any]:
    flags, token, ca = material.setup(configuration, ttl_s=3600)
    workdir = Path(tempfile.mkdtemp(prefix=f"wsd-auth-cost-{configuration.replace('+', '-')}-"))
    wsd = WsdProcess(workdir, workers=args.workers, flags=["--log-level", "warning", *flags])
    if ca is not None:
        wsd.ws_ssl = ssl.create_default_context(cadata=ca)
    wsd.start()
    load: LoadGenerator | None = None
    try:
        servers = wsd.processes()
        url = wsd.url if token is None else f"{wsd.url}?token={token}"
        load = LoadGenerator([url], args.client_processes, args.subscribers, ca_pem=ca)
        server_cpu = CpuSampler(servers)
        connect_busy: dict[str, dict[str, float]] = {}
        server_cpu.start()
        connect = load.connect_all(on_connected=lambda: connect_busy.update(server_cpu.stop()))
        connect_cpu = sum(p["cpu_seconds"] for p in connect_busy.values())
        publisher = Publisher(wsd.api_port, args.payload_bytes)
        rounds = []
        for _ in range(args.rounds):
            load.arm(expected_per_connection=args.messages, record_latency=False, timeout=PHASE_GRACE_SECONDS)
            server_cpu.start()
            started_ns = time.time_ns()
            offsets = publisher.publish_burst(args.messages)
            check = merge_phase(load.collect(PHASE_GRACE_SECONDS + 30), args.messages, offsets[0])
            busy = sum(p["cpu_seconds"] for p in server_cpu.stop().values())
            elapsed = (check["last_receive_ns"] - started_ns) / 1e9
            rounds.append({
                "elapsed_seconds": elapsed,
                "deliveries_per_second": check["deliveries"] / elapsed if elapsed > 0 else 0.0,
                "server_cpu_us_per_delivery": busy / max(1, check["deliveries"]) * 1e6,
                **{k: check[k] for k in ("deliveries", "expected_deliveries", "missing", "extra", "out_of_order",
                                         "wrong_first_offset")},
            })  # fmt: skip
            time.sleep(0.3)
        paced_messages = max(1, round(args.rate * args.paced_seconds))
        load.arm(expected_per_connection=paced_messages, record_latency=True,
                 timeout=args.paced_seconds + PHASE_GRACE_SECONDS)  # fmt: skip
        paced_started = time.monotonic()
        paced_offsets = []
        for seq in range(paced_messages):
            time.sleep(max(0.0, paced_started + seq / args.rate - time.monotonic()))
            paced_offsets.append(publisher.publish_one(seq))
        reports = load.collect(PHASE_GRACE_SECONDS + 30)
        paced = merge_phase(reports, paced_messages, paced_offsets[0])
        latencies = phase_latencies_us(reports)
        return {
            "configuration": configuration,
            "connect": {
                "subscribers": connect["subscribers"],
                "seconds": connect["connect_seconds"],
                "per_second": connect["connects_per_second"],
                "server_cpu_us_per_handshake": connect_cpu / connect["subscribers"] * 1e6,
                "per_worker": connect["per_worker"],
            },
            "rounds": rounds,
            "paced": {
                "messages": paced_messages,
                "missing": paced["missing"],
                "out_of_order": paced["out_of_order"],
                "latency_us": {"p50": percentile(latencies, 0.5), "p99": percentile(latencies, 0.99)},
            },
        }
    finally:
        if load is not None:
            load.close()
        wsd.kill()


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per configuration, over its passes: medians (min-max) of the headline numbers, error totals."""
    summary: dict[str, dict[str, Any]] = {}
    for configuration in CONFIGURATIONS:
        mine = [run for run in runs if run["configuration"] == configuration]
        if not mine:
            continue
        rounds = [r for run in mine for r in run["rounds"]]
        summary[configuration] = {
            "handshakes_per_second": spread([run["connect"]["per_second"] for run in mine]),
            "server_cpu_us_per_handshake": spread([run["connect"]["server_cpu_us_per_handshake"] for run in mine]),
            "deliveries_per_second": spread([r["deliveries_per_second"] for r in rounds]),
            "server_cpu_us_per_delivery": spread([r["server_cpu_us_per_delivery"] for r in rounds]),
            "paced_p50_us": statistics.median(run["paced"]["latency_us"]["p50"] for run in mine),
            "paced_p99_us": statistics.median(run["paced"]["latency_us"]["p99"] for run in mine),
            "errors": sum(r["missing"] + r["extra"] + r["out_of_order"] + r["wrong_first_offset"] for r in rounds)
            + sum(run["paced"]["missing"] + run["paced"]["out_of_order"] for run in mine),
            "passes": len(mine),
        }
    return summary


def markdown_report(report: dict[str, Any]) -> str:
    params, summary = report["parameters"], report["summary"]
    base = summary.get("plain")

    def relative(configuration: str, key: str) -> str:
        if base is None or configuration == "plain":
            return ""
        if not base[key]["median"]:
            return " (plain: too little to measure)"  # a small run's CPU can be below psutil's tick
        ratio = summary[configuration][key]["median"] / base[key]["median"]
        return f" ({ratio:.2f}x)"

    lines = [
        f"# wsd: the cost of auth and TLS ({params['tag']})",
        "",
        f"{params['subscribers']:,} subscribers, {params['workers']} workers, {params['client_processes']} "
        f"load-generator processes; bursts of {params['messages']} messages x {params['rounds']} rounds per pass; "
        f"{params['passes']} passes. Medians over passes (rounds), min-max in brackets; (Nx) against `plain`.",
        "",
        "| configuration | handshakes/s | server CPU per handshake | burst deliveries/s | server CPU per delivery "
        "| paced p50 / p99 | errors |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for configuration, row in summary.items():
        hs, cpu_hs = row["handshakes_per_second"], row["server_cpu_us_per_handshake"]
        dps, cpu_d = row["deliveries_per_second"], row["server_cpu_us_per_delivery"]
        lines.append(
            f"| `{configuration}` | {hs['median']:,.0f} ({hs['min']:,.0f}-{hs['max']:,.0f}) "
            f"| {cpu_hs['median']:.0f} µs{relative(configuration, 'server_cpu_us_per_handshake')} "
            f"| {dps['median']:,.0f} ({dps['min']:,.0f}-{dps['max']:,.0f}) "
            f"| {cpu_d['median']:.2f} µs{relative(configuration, 'server_cpu_us_per_delivery')} "
            f"| {row['paced_p50_us'] / 1000:.2f} / {row['paced_p99_us'] / 1000:.2f} ms | {row['errors']} |"
        )
    machine = report["machine"]
    lines += [
        "",
        "`hs256`/`es256`: every handshake carries a connection token in `?token=` (sub, exp, two subs "
        "patterns, one pubs), verified before the upgrade. `tls`: wss:// with a self-signed P-256 "
        "certificate (TLS 1.3, the load generator verifies it). Handshakes/s is wall-clock for the whole "
        "connect phase with the load generator on the same cores, so server CPU per handshake (all wsd "
        "processes over that phase, divided by the connections) is the figure to compare. Deliveries: "
        "API publishes (no `from`), one write per subscriber per burst.",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Machine: {machine['cpu_model']}, {machine['nproc']} CPUs (shared by server and load generator), "
        f"Python {machine['python']}, picows {machine['picows']}, uvloop {machine['uvloop']}; "
        f"`{machine['uname']}`. Started {report['started']}; load average (1 min) "
        f"{report['load_average']['start'][0]:.1f} at the start, {report['load_average']['end'][0]:.1f} at the end.",
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.auth_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=5000, help="subscriber connections (default 5000)")
    parser.add_argument("--workers", type=int, default=2, help="wsd worker processes (default 2)")
    parser.add_argument("--client-processes", type=int, default=2, help="load-generator processes (default 2)")
    parser.add_argument("--messages", type=int, default=100, help="messages per burst (default 100)")
    parser.add_argument("--rounds", type=int, default=3, help="bursts per configuration and pass (default 3)")
    parser.add_argument("--passes", type=int, default=2, help="times every configuration runs (default 2)")
    parser.add_argument("--payload-bytes", type=int, default=64, help="size of each message's data (default 64)")
    parser.add_argument("--rate", type=float, default=5.0, help="messages/s in the paced phase (default 5)")
    parser.add_argument("--paced-seconds", type=float, default=4.0, help="length of the paced phase (default 4)")
    parser.add_argument("--configurations", default=",".join(CONFIGURATIONS),
                        help=f"comma list out of {', '.join(CONFIGURATIONS)} (default: all)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="results folder (default bench/results)")
    parser.add_argument("--tag", default="", help="name of the result files (default: a timestamp)")
    args = parser.parse_args(argv)
    args.configurations = [c.strip() for c in args.configurations.split(",") if c.strip()]
    unknown = set(args.configurations) - set(CONFIGURATIONS)
    if unknown:
        parser.error(f"unknown configurations {sorted(unknown)}; known: {', '.join(CONFIGURATIONS)}")
    if not 1 <= args.messages <= 1000:
        parser.error("--messages must be 1-1000 (one publish_batch request carries at most 1000)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.tag = args.tag or time.strftime("%Y%m%d-%H%M%S")
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    material = Material(Path(tempfile.mkdtemp(prefix="wsd-auth-cost-keys-")))
    # The bench lock keeps other benchmarks off the box, not other people's tests: say how busy it was.
    load_at_start = os.getloadavg()
    runs = []
    for number in range(args.passes):
        order = args.configurations if number % 2 == 0 else list(reversed(args.configurations))
        for configuration in order:
            run = run_configuration(args, material, configuration)
            runs.append(run)
            rates = [r["deliveries_per_second"] for r in run["rounds"]]
            print(f"pass {number + 1} {configuration}: {run['connect']['per_second']:,.0f} handshakes/s "
                  f"({run['connect']['server_cpu_us_per_handshake']:.0f} µs server CPU each), "
                  f"{statistics.median(rates):,.0f} deliveries/s", file=sys.stderr)  # fmt: skip
    report = {
        "benchmark": "auth_cost",
        "started": started,
        "command": command_line(),
        "parameters": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": machine_info(),
        "load_average": {"start": load_at_start, "end": os.getloadavg()},
        "summary": summarize(runs),
        "runs": runs,
    }
    markdown = markdown_report(report)
    print(markdown)
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / f"auth-cost-{args.tag}.json"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    (args.out / f"auth-cost-{args.tag}.md").write_text(markdown)
    print(f"wrote {json_path} and {json_path.with_suffix('.md')}", file=sys.stderr)
    return 1 if any(row["errors"] for row in report["summary"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
