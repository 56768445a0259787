"""Throughput of the publish HTTP API alone: pipelined ``POST /api/publish`` against a publisher that
answers at once, so what is measured is the API's own cost (HTTP parsing, JSON validation, response
encoding, the asyncio adapter), not the bus.

The API server runs in one process (a uvloop loop, the API's protocol factory, an in-memory publisher
that hands out offsets per channel); K load-generator processes each keep C connections with D requests
in flight (a pipeline: D requests are written, and every response read is answered with one more
request). Each run counts responses over ``--seconds`` after a warm-up and samples the server
process's CPU time, so the report gives requests/s and server CPU per request. Runs are repeated and
the median is reported. Prints a Markdown table and writes ``api-throughput-<tag>.json`` and ``.md``
under ``--out``.

Take the shared benchmark lock while measuring:

    flock /tmp/wsd-bench.lock .venv/bin/python -m bench.api_throughput --tag after   # or: make bench-api
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import multiprocessing.connection
import os
import platform
import shlex
import socket
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import uvloop

try:  # the sans-I/O API package (issue 8); before it, one module
    from wsd.server.api import make_api_protocol_factory, start_api_server

    IMPLEMENTATION = "wsd.server.api"
except ImportError:  # pragma: no cover - only for measuring the code before the split
    from wsd.server.http_api import make_api_protocol_factory, start_api_server  # type: ignore[no-redef]

    IMPLEMENTATION = "wsd.server.http_api"

# The answer every response carries; counting it in the byte stream counts responses.
RESPONSE_MARK = b'{"offset":'


# --------------------------------------------------------------------------------------------------
# The server process
# --------------------------------------------------------------------------------------------------


class ImmediatePublisher:
    """Offsets per channel, handed out at once: the API's cost without the bus's."""

    def __init__(self) -> None:
        self.next_offset: defaultdict[str, int] = defaultdict(int)

    def publish(self, channel: str, data_json: bytes) -> int:
        self.next_offset[channel] += 1
        return self.next_offset[channel]


class AsyncImmediatePublisher(ImmediatePublisher):
    """The same for the API before the split, which awaited `publish`."""

    async def publish(self, channel: str, data_json: bytes) -> int:  # type: ignore[override]
        return ImmediatePublisher.publish(self, channel, data_json)


def serve(ready: multiprocessing.connection.Connection) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        publisher = ImmediatePublisher() if IMPLEMENTATION == "wsd.server.api" else AsyncImmediatePublisher()
        factory = make_api_protocol_factory(publisher)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sock.listen(1024)
        server = await start_api_server(loop, sock, factory)
        ready.send(sock.getsockname()[1])
        await loop.run_in_executor(None, ready.recv)  # the coordinator says stop
        server.close()

    uvloop.run(main())


# --------------------------------------------------------------------------------------------------
# Load generators
# --------------------------------------------------------------------------------------------------


def publish_request(index: int, payload_size: int) -> bytes:
    body = json.dumps({"channel": f"bench:{index % 16}", "data": {"n": index, "text": "x" * payload_size}})
    return (
        f"POST /api/publish HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n{body}"
    ).encode()


class PipelineClient(asyncio.Protocol):
    """One connection keeping `depth` requests in flight."""

    def __init__(self, counts: list[int], depth: int, requests: list[bytes]) -> None:
        self.counts = counts
        self.depth = depth
        self.requests = requests
        self.next_request = 0
        self.tail = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.send(self.depth)

    def send(self, count: int) -> None:
        start = self.next_request
        self.next_request = (start + count) % len(self.requests)
        if start + count <= len(self.requests):
            chunk = self.requests[start : start + count]
        else:
            chunk = self.requests[start:] + self.requests[: self.next_request]
        assert self.transport is not None
        self.transport.write(b"".join(chunk))

    def data_received(self, data: bytes) -> None:
        # A mark split across two reads is counted once: the kept tail is shorter than the mark.
        buffer = self.tail + data
        answered = buffer.count(RESPONSE_MARK)
        self.tail = buffer[-(len(RESPONSE_MARK) - 1) :]
        if answered:
            self.counts[0] += answered
            self.send(answered)


def load(port: int, connections: int, depth: int, payload_size: int, control: Any) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        counts = [0]
        requests = [publish_request(i, payload_size) for i in range(997)]
        for _ in range(connections):
            await loop.create_connection(lambda: PipelineClient(counts, depth, requests), "127.0.0.1", port)
        control.send("connected")
        while True:
            command = await loop.run_in_executor(None, control.recv)
            if command == "stop":
                return
            control.send(counts[0])  # "count"

    uvloop.run(main())


# --------------------------------------------------------------------------------------------------
# Coordinator
# --------------------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=1, help="load-generator processes")
    parser.add_argument("--connections", type=int, default=4, help="connections per load generator")
    parser.add_argument("--depth", type=int, default=32, help="requests in flight per connection")
    parser.add_argument("--payload", type=int, default=64, help="bytes of text in each message's data")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of one measured run")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tag", default="local")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()

    context = multiprocessing.get_context("spawn")
    server_end, coordinator_end = context.Pipe()
    server = context.Process(target=serve, args=(server_end,), name="api-server")
    server.start()
    port = coordinator_end.recv()
    loaders = []
    for _ in range(args.clients):
        mine, theirs = context.Pipe()
        process = context.Process(
            target=load, args=(port, args.connections, args.depth, args.payload, theirs), name="api-load"
        )
        process.start()
        loaders.append((process, mine))
    for _, control in loaders:
        assert control.recv() == "connected"

    def responses() -> int:
        for _, control in loaders:
            control.send("count")
        return sum(control.recv() for _, control in loaders)

    runs: list[dict[str, float]] = []
    try:
        time.sleep(args.warmup)
        for _ in range(args.runs):
            started, before, cpu_before = time.monotonic(), responses(), cpu_seconds(server.pid)
            time.sleep(args.seconds)
            elapsed, after, cpu_after = time.monotonic() - started, responses(), cpu_seconds(server.pid)
            count = after - before
            runs.append(
                {
                    "requests_per_s": count / elapsed,
                    "server_cpu_us_per_request": (cpu_after - cpu_before) / count * 1e6 if count else 0.0,
                    "server_busy": (cpu_after - cpu_before) / elapsed,
                }
            )
            print(
                f"run {len(runs)}: {runs[-1]['requests_per_s']:,.0f} req/s, "
                f"{runs[-1]['server_cpu_us_per_request']:.2f} µs server CPU per request, "
                f"server busy {runs[-1]['server_busy']:.2f}",
                file=sys.stderr,
            )
    finally:
        for process, control in loaders:
            control.send("stop")
            process.join(10)
        coordinator_end.send("stop")
        server.join(10)

    rates = [run["requests_per_s"] for run in runs]
    cpu = [run["server_cpu_us_per_request"] for run in runs]
    report = {
        "tag": args.tag,
        "implementation": IMPLEMENTATION,
        "command": "python -m " + shlex.join(["bench.api_throughput", *sys.argv[1:]]),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "requests_per_s_median": statistics.median(rates),
        "requests_per_s_min": min(rates),
        "requests_per_s_max": max(rates),
        "server_cpu_us_per_request_median": statistics.median(cpu),
        "runs": runs,
        "machine": f"{os.cpu_count()} CPUs, Python {platform.python_version()}, {platform.platform()}",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    markdown = "\n".join(
        [
            f"# publish API throughput: {args.tag}",
            "",
            "| metric | value |",
            "| --- | --- |",
            f"| implementation | `{IMPLEMENTATION}` |",
            f"| load | {args.clients} process(es) x {args.connections} connections x {args.depth} pipelined "
            f"`POST /api/publish` ({args.payload} B of text per message) |",
            f"| requests/s (median of {len(runs)}, min-max) | {report['requests_per_s_median']:,.0f} "
            f"({min(rates):,.0f} - {max(rates):,.0f}) |",
            f"| server CPU per request (median) | {report['server_cpu_us_per_request_median']:.2f} µs |",
            "",
            f"Command: `{report['command']}`",
            "",
            f"Machine: {report['machine']}. Started {report['started']}.",
            "",
        ]
    )
    print(markdown)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"api-throughput-{args.tag}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / f"api-throughput-{args.tag}.md").write_text(markdown)


if __name__ == "__main__":
    main()
