"""Publish throughput of the Redis layer (wsd.server.cluster) from one process to one local Redis.

Starts a redis-server on a free port in a temporary directory (no persistence), one ClusterClient,
and measures for each mode publishes/s, round trips and commands per round trip (the client's own
counters; Redis's `INFO commandstats` confirms one EVALSHA per publish):

- ``sequential``: one publish at a time, each awaited (latency bound: one round trip each);
- ``concurrent``: C coroutines publishing in a loop (requests issued in one loop iteration share a
  pipelined round trip; while one batch is on the wire the next fills up);
- ``batch``: publish_batch() of B messages at a time.

Also the publish round-trip time the client reports (median of recent batches). Prints a Markdown
table and writes ``cluster-publish.json`` under ``--out``. Holds /tmp/wsd-bench.lock while measuring.

    .venv/bin/python -m bench.cluster_publish --messages 20000

(from the repository root).
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis
import uvloop

from harness.net import free_port
from wsd.server.cluster import ClusterClient

PAYLOAD = b'{"user":"u123","text":"hello, this is a chat message of moderate size","n":12345}'


def start_redis(workdir: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen(
        [shutil.which("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir),
         "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    for _ in range(500):
        try:
            redis.Redis(port=port).ping()
            return proc, port
        except redis.exceptions.ConnectionError:
            time.sleep(0.01)
    raise RuntimeError("redis-server did not start")


async def measure(port: int, messages: int, concurrency: int, batch: int) -> list[dict]:
    client = ClusterClient([f"redis://127.0.0.1:{port}"], timeout_s=5, probe_interval_s=0)
    await client.start()
    assert await client.wait_up(5)
    await client.publish("warm", PAYLOAD)
    commands = client.shards[0].commands
    stats = redis.Redis(port=port)
    rows = []

    async def run(mode: str, body) -> None:
        stats.config_resetstat()
        trips, sent = commands.round_trips, commands.commands_sent
        started = time.perf_counter()
        await body()
        elapsed = time.perf_counter() - started
        trips, sent = commands.round_trips - trips, commands.commands_sent - sent
        evalsha = stats.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)
        rows.append({
            "mode": mode, "messages": messages, "seconds": round(elapsed, 3),
            "publishes_per_s": round(messages / elapsed), "round_trips": trips,
            "commands_per_round_trip": round(sent / trips, 1), "redis_evalsha_calls": evalsha,
            "rtt_median_ms": commands.rtt_median_ms,
        })  # fmt: skip

    async def sequential():
        for i in range(messages):
            await client.publish(f"seq{i % 100}", PAYLOAD)

    async def concurrent():
        async def worker(w: int):
            for i in range(messages // concurrency):
                await client.publish(f"con{(w + i) % 100}", PAYLOAD)

        await asyncio.gather(*(worker(w) for w in range(concurrency)))

    async def batched():
        items = [(f"bat{i % 100}", PAYLOAD, None) for i in range(batch)]
        for _ in range(messages // batch):
            await client.publish_batch(items)

    await run("sequential", sequential)
    await run(f"concurrent x{concurrency}", concurrent)
    await run(f"publish_batch of {batch}", batched)
    await client.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster_publish", description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    with open("/tmp/wsd-bench.lock", "w") as lock, tempfile.TemporaryDirectory() as tmp:
        fcntl.flock(lock, fcntl.LOCK_EX)
        proc, port = start_redis(Path(tmp))
        try:
            rows = uvloop.run(measure(port, args.messages, args.concurrency, args.batch))
        finally:
            proc.kill()
            proc.wait()
    version = subprocess.run([shutil.which("redis-server"), "--version"], capture_output=True, text=True).stdout
    header = "| mode | publishes/s | round trips | publishes per round trip | EVALSHA calls | RTT median ms |"
    print(header + "\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['publishes_per_s']} | {r['round_trips']} | {r['commands_per_round_trip']} "
              f"| {r['redis_evalsha_calls']} | {r['rtt_median_ms']} |")  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"command": " ".join(sys.argv), "machine": platform.platform(), "cpus": __import__("os").cpu_count(),
              "redis": version.strip(), "payload_bytes": len(PAYLOAD), "rows": rows}  # fmt: skip
    (args.out / "cluster-publish.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
