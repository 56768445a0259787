"""permessage-deflate benchmark: bytes on the wire and server CPU per delivery, compression on and off.

Starts `wsd serve` twice (`--compression on`, then `off`) and, each time, K client processes
(picows on uvloop) whose N connections all offer permessage-deflate, as browsers do; with `off`
the server declines and they read plain frames. The message is a ~1 KB social-network
notification (JSON), different in every message (ids, counts, text). Two scenarios:

- broadcast: every connection subscribes to one channel; M messages per round go out through
  `POST /api/publish_batch`; deliveries = N*M. The hub compresses each message once per worker.
- targeted: each connection subscribes to its own `user:<i>`; a round publishes P messages to each
  user; deliveries = N*P, and each compression serves one delivery only (the worst case).

Per round: wire bytes = WebSocket frames (header + payload) as the clients receive them (TCP/IP
headers not counted), server CPU = user+system seconds of every wsd process from the first
publish to the last delivery, per delivery. Clients check every compressed frame of their first
connection inflates to a `msg` with the next offset. Medians over the rounds; writes
`compression-<tag>.json` and `.md` under bench/results/.

    flock /tmp/wsd-bench.lock .venv/bin/python -m bench.compression \
        --connections 2000 --messages 1000 --per-user 10 --tag 2w-2k
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
import urllib.request
import zlib
from pathlib import Path
from typing import Any

from bench.measure import RESULTS_DIR, CpuSampler, command_line, machine_info
from harness.wsd_process import WsdProcess

OFFER = "permessage-deflate; client_max_window_bits"
TAIL = b"\x00\x00\xff\xff"
BATCH = 1000  # items per publish_batch request (the API's limit)


def notification(n: int) -> dict[str, Any]:
    """A comment notification of about 1 KB, different for every n."""
    return {
        "type": "comment",
        "id": f"ntf_01HF3Q9X7K2M{n:08d}",
        "created_at": f"2026-12-01T14:{n // 60 % 60:02d}:{n % 60:02d}.{n % 1000:03d}Z",
        "actor": {"id": 48213 + n % 977, "name": ["Alice Martin", "Bruno Diaz", "Chloé Petit"][n % 3],
                  "handle": ["alice", "bruno", "chloe"][n % 3], "verified": n % 2 == 0,
                  "avatar": f"https://cdn.example.com/a/{48213 + n % 977}/96.jpg"},
        "post": {"id": 99120455 + n, "title": "Our trip to the mountains",
                 "url": f"https://example.com/p/{99120455 + n}",
                 "thumbnail": f"https://cdn.example.com/p/{99120455 + n}/thumb.jpg"},
        "comment": {"id": 5512093 + n, "reply_to": None,
                    "text": "What a view! We went there last summer and the weather was just as good. "
                            f"Did you take the cable car up or walk the whole trail? ({n})"},
        "counts": {"likes": 128 + n % 50, "comments": 17 + n % 7, "shares": 3 + n % 3},
        "recipients": [{"id": 1000 + (n + i) % 5000, "reason": "follower"} for i in range(6)],
        "links": {"self": f"https://api.example.com/v1/notifications/ntf_01HF3Q9X7K2M{n:08d}",
                  "read": f"https://api.example.com/v1/notifications/ntf_01HF3Q9X7K2M{n:08d}/read"},
    }  # fmt: skip


# -- the client processes --


def client_main(url: str, first: int, count: int, targeted: bool, pipe: Any) -> None:
    import uvloop

    uvloop.run(_client(url, first, count, targeted, pipe))


async def _client(url: str, first: int, count: int, targeted: bool, pipe: Any) -> None:
    from picows import WSListener, WSMsgType, ws_connect

    loop = asyncio.get_running_loop()
    state = {"expected": 0, "done": 0, "bytes": 0, "frames": 0, "compressed": 0, "bad": 0}
    finished = loop.create_future()

    class Listener(WSListener):
        def __init__(self, checks: bool) -> None:
            self.replied = loop.create_future()
            self.received = 0
            self.checks = checks
            self.last_offset: int | None = None

        def on_ws_frame(self, transport: Any, frame: Any) -> None:
            if frame.msg_type != WSMsgType.TEXT:
                return
            if not self.replied.done():
                self.replied.set_result(json.loads(frame.get_payload_as_bytes()))
                return
            size = frame.payload_size
            state["bytes"] += size + (2 if size < 126 else 4 if size < 65536 else 10)
            state["frames"] += 1
            if frame.rsv1:
                state["compressed"] += 1
            if self.checks:
                payload = frame.get_payload_as_bytes()
                if frame.rsv1:
                    payload = zlib.decompressobj(-15).decompress(payload + TAIL)
                message = json.loads(payload)
                if message["op"] != "msg" or (self.last_offset is not None and message["off"] != self.last_offset + 1):
                    state["bad"] += 1
                self.last_offset = message["off"]
            self.received += 1
            if self.received == state["expected"]:
                state["done"] += 1
                if state["done"] == count and not finished.done():
                    finished.set_result(None)

    listeners = []
    connected = 0
    negotiated = 0
    for index in range(first, first + count):
        transport, listener = await ws_connect(
            lambda: Listener(checks=not listeners), url, extra_headers={"Sec-WebSocket-Extensions": OFFER},
            read_buffer_init_size=4096, use_aiofastnet=False, websocket_handshake_timeout=30,
        )  # fmt: skip
        connected += 1
        if "Sec-WebSocket-Extensions" in transport.response.headers:
            negotiated += 1
        channel = f"user:{index}" if targeted else "feed"
        transport.send(WSMsgType.TEXT, json.dumps({"op": "sub", "ch": channel, "id": 1}).encode())
        listeners.append((transport, listener))
    for _, listener in listeners:
        reply = await asyncio.wait_for(listener.replied, 30)
        assert reply["op"] == "ok", reply
    pipe.send({"connected": connected, "negotiated": negotiated})
    while True:
        command = await loop.run_in_executor(None, pipe.recv)
        if command == "stop":
            break
        expected = command
        for _, listener in listeners:
            listener.received = 0
        state.update(expected=expected, done=0, bytes=0, frames=0, compressed=0, bad=0)
        finished = loop.create_future()
        pipe.send("armed")
        await asyncio.wait_for(finished, 120)
        pipe.send(dict(state))
    for transport, _ in listeners:
        transport.disconnect()


# -- the coordinator --


def publish(api_url: str, items: list[dict[str, Any]]) -> None:
    for start in range(0, len(items), BATCH):
        body = json.dumps(items[start : start + BATCH]).encode()
        request = urllib.request.Request(api_url + "/api/publish_batch", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            assert response.status == 200


def run_mode(args: argparse.Namespace, compression: str, targeted: bool) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="wsd-compression-"))
    flags = ["--log-level", "warning", "--compression", compression]
    wsd = WsdProcess(workdir, workers=args.workers, flags=flags)
    wsd.start()
    pipes, processes = [], []
    try:
        share = args.connections // args.client_processes
        context = multiprocessing.get_context("spawn")
        for k in range(args.client_processes):
            ours, theirs = context.Pipe()
            process = context.Process(target=client_main, args=(wsd.url, k * share, share, targeted, theirs))
            process.start()
            pipes.append(ours)
            processes.append(process)
        hello = [pipe.recv() for pipe in pipes]
        connected = sum(h["connected"] for h in hello)
        negotiated = sum(h["negotiated"] for h in hello)
        sampler = CpuSampler(wsd.processes())
        rounds = []
        sequence = 0
        for _ in range(args.rounds):
            if targeted:
                per_connection = args.per_user
                items = []
                for _repeat in range(per_connection):
                    for index in range(connected):
                        sequence += 1
                        items.append({"channel": f"user:{index}", "data": notification(sequence)})
            else:
                per_connection = args.messages
                items = []
                for _message in range(per_connection):
                    sequence += 1
                    items.append({"channel": "feed", "data": notification(sequence)})
            for pipe in pipes:
                pipe.send(per_connection)
            assert all(pipe.recv() == "armed" for pipe in pipes)
            started = time.monotonic()
            sampler.start()
            publish(wsd.api_url, items)
            reports = [pipe.recv() for pipe in pipes]
            cpu = sampler.stop()
            elapsed = time.monotonic() - started
            deliveries = connected * per_connection
            wire = sum(r["bytes"] for r in reports)
            server_cpu = sum(p["cpu_seconds"] for p in cpu.values())
            rounds.append({
                "deliveries": deliveries,
                "wire_bytes": wire,
                "wire_bytes_per_delivery": wire / deliveries,
                "compressed_frames": sum(r["compressed"] for r in reports),
                "bad_frames": sum(r["bad"] for r in reports),
                "server_cpu_seconds": server_cpu,
                "server_cpu_us_per_delivery": server_cpu / deliveries * 1e6,
                "seconds": elapsed,
                "deliveries_per_second": deliveries / elapsed,
            })  # fmt: skip
        for pipe in pipes:
            pipe.send("stop")
    finally:
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
        wsd.kill()
    medians = {
        key: statistics.median(r[key] for r in rounds)
        for key in ("wire_bytes_per_delivery", "server_cpu_us_per_delivery", "deliveries_per_second")
    }
    return {
        "compression": compression,
        "scenario": "targeted" if targeted else "broadcast",
        "connections": connected,
        "negotiated": negotiated,
        "rounds": rounds,
        "median": medians,
        "bad_frames": sum(r["bad_frames"] for r in rounds),
    }


def markdown_report(report: dict[str, Any]) -> str:
    lines = [
        f"# permessage-deflate: compression on vs off ({report['tag']})",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Machine: {report['machine']['cpu_model']}, {report['machine']['nproc']} cores; "
        f"wsd {report['workers']} workers, {report['client_processes']} client processes on the same host. "
        f"Message: a {report['message_bytes']}-byte JSON notification (the `msg` frame adds the envelope). "
        f"Medians of {report['rounds']} rounds.",
        "",
        "| scenario | compression | connections (negotiated) | wire bytes / delivery "
        "| server CPU µs / delivery | deliveries/s |",
        "|---|---|---|---|---|---|",
    ]
    for run in report["runs"]:
        m = run["median"]
        lines.append(
            f"| {run['scenario']} | {run['compression']} | {run['connections']} ({run['negotiated']}) | "
            f"{m['wire_bytes_per_delivery']:.0f} | {m['server_cpu_us_per_delivery']:.2f} | "
            f"{m['deliveries_per_second']:,.0f} |"
        )
    lines.append("")
    for scenario in ("broadcast", "targeted"):
        runs = {r["compression"]: r["median"] for r in report["runs"] if r["scenario"] == scenario}
        if "on" in runs and "off" in runs:
            ratio = runs["off"]["wire_bytes_per_delivery"] / runs["on"]["wire_bytes_per_delivery"]
            cpu = runs["on"]["server_cpu_us_per_delivery"] - runs["off"]["server_cpu_us_per_delivery"]
            lines.append(f"- {scenario}: {ratio:.1f}x fewer bytes on the wire with compression; "
                         f"server CPU {cpu:+.2f} µs per delivery.")  # fmt: skip
    lines.append("")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--client-processes", type=int, default=2)
    parser.add_argument("--messages", type=int, default=200, help="broadcast: messages per round")
    parser.add_argument("--per-user", type=int, default=5, help="targeted: messages per user per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--scenarios", default="broadcast,targeted")
    parser.add_argument("--tag", default="local")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    runs = []
    for scenario in args.scenarios.split(","):
        for compression in ("on", "off"):
            run = run_mode(args, compression, scenario == "targeted")
            runs.append(run)
            m = run["median"]
            print(f"{scenario:9} compression {compression:3}: {m['wire_bytes_per_delivery']:.0f} B/delivery, "
                  f"{m['server_cpu_us_per_delivery']:.2f} µs server CPU/delivery, "
                  f"{m['deliveries_per_second']:,.0f} deliveries/s", flush=True)  # fmt: skip
    report = {
        "tag": args.tag,
        "command": command_line(),
        "machine": machine_info(),
        "workers": args.workers,
        "client_processes": args.client_processes,
        "rounds": args.rounds,
        "message_bytes": len(json.dumps(notification(1))),
        "runs": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"compression-{args.tag}.json").write_text(json.dumps(report, indent=2) + "\n")
    markdown = markdown_report(report)
    (args.out / f"compression-{args.tag}.md").write_text(markdown)
    print(markdown)
    bad = sum(run["bad_frames"] for run in runs)
    if bad:
        print(f"{bad} frames did not inflate to the next msg", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
