"""Where a WebSocket connection's server memory goes: picows alone, with wsd's settings, with wsd's listener.

Runs a picows server in this process and opens `--connections` idle WebSocket connections to it
from a child process, once per variant, and reports the server process's RSS growth per connection
and the largest Python-allocator sites (tracemalloc; picows's buffers come from PyMem_Malloc and
show up there, libuv's handles and the kernel's socket memory do not).

Variants:
  picows-default   WSListener, picows defaults
  picows-tuned     WSListener, wsd.server.worker.ws_conformance.picows_server_kwargs (what wsd serves with)
  conforming       ConformingListener (wsd's base listener: assembler, transport reference; since
                   issue 13 it trims picows's write buffer, future and upgrade objects after the handshake)
  lean             ConformingListener on wsd's own accept path (wsd.server.worker.accept): the
                   process's shared read buffer (wsd.ext.connmem) and no per-connection child Logger

    .venv/bin/python -m bench.connection_memory --connections 10000

(from the repository root).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import multiprocessing
import socket
import subprocess
import sys
import tracemalloc
from pathlib import Path
from typing import Any

import psutil
import uvloop
from picows import WSListener, ws_create_server

from harness.net import bound_socket, source_address
from wsd.server.worker.accept import create_peer_aware_server
from wsd.server.worker.ws_conformance import ConformingListener, picows_server_kwargs

REPO_ROOT = Path(__file__).resolve().parent.parent
CONNECTIONS_PER_SOURCE_ADDRESS = 20000
REQUEST = (
    b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def client_main(port: int, count: int, ready, done) -> None:
    """Child process: open `count` WebSocket connections, report, then hold them until told."""

    async def run() -> None:
        loop = asyncio.get_running_loop()
        sockets = []
        limit = asyncio.Semaphore(200)

        async def one(index: int) -> None:
            async with limit:
                sock = bound_socket(source_address(index, CONNECTIONS_PER_SOURCE_ADDRESS))
                await loop.sock_connect(sock, ("127.0.0.1", port))
                await loop.sock_sendall(sock, REQUEST)
                response = b""
                while b"\r\n\r\n" not in response:
                    response += await loop.sock_recv(sock, 4096)
                sockets.append(sock)

        await asyncio.gather(*(one(i) for i in range(count)))
        ready.send(len(sockets))
        await loop.run_in_executor(None, done.recv)
        for sock in sockets:
            sock.close()

    uvloop.run(run())


def measure(variant: str, connections: int, trace: bool) -> dict[str, Any]:
    async def run() -> dict[str, Any]:
        if variant == "picows-default":
            factory, kwargs = (lambda request: WSListener()), {}
        elif variant == "picows-tuned":
            factory, kwargs = (lambda request: WSListener()), picows_server_kwargs(65536)
        else:
            factory, kwargs = (lambda request: ConformingListener(65536)), picows_server_kwargs(65536)
        kwargs.setdefault("backlog", 4096)
        if variant == "lean":
            listen = socket.create_server(("127.0.0.1", 0), backlog=4096)
            server = await create_peer_aware_server(
                asyncio.get_running_loop(), lambda request, peer: ConformingListener(65536), listen, **kwargs
            )
        else:
            server = await ws_create_server(factory, "127.0.0.1", 0, **kwargs)
        port = server.sockets[0].getsockname()[1]
        process = psutil.Process()
        gc.collect()
        if trace:
            tracemalloc.start(8)
        before_rss = process.memory_info().rss
        before = tracemalloc.take_snapshot() if trace else None
        ready_recv, ready_send = multiprocessing.Pipe(duplex=False)
        done_recv, done_send = multiprocessing.Pipe(duplex=False)
        child = multiprocessing.get_context("fork").Process(
            target=client_main, args=(port, connections, ready_send, done_recv)
        )
        child.start()
        loop = asyncio.get_running_loop()
        opened = await loop.run_in_executor(None, ready_recv.recv)
        await asyncio.sleep(0.5)
        gc.collect()
        after_rss = process.memory_info().rss
        result: dict[str, Any] = {
            "variant": variant,
            "connections": opened,
            "rss_per_connection": round((after_rss - before_rss) / opened, 1),
        }
        if trace:
            after = tracemalloc.take_snapshot()
            stats = after.compare_to(before, "lineno")
            traced = sum(s.size_diff for s in stats)
            result["traced_per_connection"] = round(traced / opened, 1)
            result["top_sites"] = [
                {
                    "site": str(s.traceback[0]),
                    "bytes_per_connection": round(s.size_diff / opened, 1),
                    "blocks_per_connection": round(s.count_diff / opened, 2),
                }  # fmt: skip
                for s in stats[:12]
            ]
            tracemalloc.stop()
        done_send.send(True)
        await loop.run_in_executor(None, child.join)
        server.close()
        return result

    return uvloop.run(run())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.connection_memory",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--variants", default="picows-default,picows-tuned,conforming,lean")
    parser.add_argument("--trace", action="store_true", help="also list tracemalloc's top sites (slower)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--one", default="", help=argparse.SUPPRESS)  # internal: measure one variant
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.one, args.connections, args.trace)))
        return 0
    results = []
    for variant in args.variants.split(","):
        # A fresh process per variant so one variant's freed memory does not pad the next one's.
        command = [sys.executable, "-m", "bench.connection_memory", "--connections", str(args.connections),
                   "--one", variant]  # fmt: skip
        output = subprocess.run(command + (["--trace"] if args.trace else []), capture_output=True, text=True,
                                check=True, timeout=600, cwd=REPO_ROOT).stdout  # fmt: skip
        result = json.loads(output.strip().splitlines()[-1])
        results.append(result)
        traced = f", {result['traced_per_connection']:.0f} B/conn traced" if args.trace else ""
        print(f"{variant:<16} {result['rss_per_connection']:>8.0f} B/conn RSS{traced}", flush=True)
        for site in result.get("top_sites", []):
            per, blocks = site["bytes_per_connection"], site["blocks_per_connection"]
            print(f"    {per:>8.0f} B {blocks:>6.2f} blk  {site['site']}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
