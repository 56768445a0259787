"""A load run for the dashboard screenshot (issue 12): a real Prometheus scrapes a real wsd through a
few minutes of varied load, and deploy/render_dashboard.py draws deploy/grafana-dashboard.json from it.

Starts, in a temp dir on free ports: Prometheus (Debian package `prometheus`; every 2 s it scrapes
/metrics on wsd's API port), `wsd serve --workers 2` and, with `--cluster`, a redis-server for wsd's
`--cluster` (without it, a single host, the dashboard's Cluster row has no data). Then, for `--seconds`:

- `--subscribers` resuming clients (harness.loadgen from 127.0.0.2), two of `--channels` channels
  each; after a close they reconnect and resume with `since`, as wsd.js does;
- publishes through `POST /api/publish` at `--rate` messages/s, and one burst of `--burst` messages
  in a `POST /api/publish_batch` at a fifth of the run;
- churn (from 127.0.0.3...): clients that connect, subscribe (some resuming with `since`, a few with
  history long gone), publish once over the WebSocket, stay a few seconds and leave with close 1000
  or 1001, a dropped TCP connection (1006), a binary frame (1003) or an oversized message (1009); a
  few handshakes carry a foreign Origin (refused, `origin`);
- slow readers: twice, a few clients stop reading a channel of large messages (cut off with 1013);
- `wsd ctl reload` at half time (each worker replaced in turn, its clients drained with 1012), and a
  worker SIGKILLed at four fifths (respawned: a restart; its clients drop, 1006, and resume).

The resuming clients must end with every message of their channels, without gap or duplicate (checked
and printed after the screenshot). Everything is bounded by `--seconds` and counts; nothing runs on
after it. Hold the benchmark lock (`make dashboard-screenshot` does):

    flock /tmp/wsd-bench.lock .venv/bin/python -m bench.dashboard_run --out docs/dashboard.png
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import orjson
import uvloop
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from harness.loadgen import LoadGenerator, merge_resume
from harness.net import bound_socket, free_port
from harness.publisher import Publisher
from harness.resuming import ResumePlan
from harness.wsd_process import WsdProcess

REPOSITORY = Path(__file__).resolve().parents[1]
RENDERER = REPOSITORY / "deploy" / "render_dashboard.py"
SCRAPE_INTERVAL_S = 2
ALLOWED_ORIGIN = "https://app.example"
FOREIGN_ORIGIN = "https://elsewhere.example"
CHURN_ADDRESSES = [f"127.0.0.{n}" for n in range(3, 7)]  # the resuming subscribers use 127.0.0.2
CHAT_CHANNEL = "chat"  # what churning clients publish to (not a resuming client's channel)
BULK_CHANNEL = "bulk"  # large messages that only the slow readers subscribe to
RESUME_FIGURES = ("clients", "reconnected_clients", "resumes", "not_recovered", "gaps", "duplicates",
                  "behind_clients", "error_clients")  # fmt: skip


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not after {timeout} s")
        time.sleep(0.2)


# Services ----------------------------------------------------------------------------------------


def start_prometheus(workdir: Path, target: str) -> tuple[subprocess.Popen, str]:
    """A real Prometheus scraping `target` (host:port of wsd's API) every 2 s, data in `workdir`."""
    binary = shutil.which("prometheus")
    if binary is None:
        raise SystemExit("prometheus not found: apt-get install -y prometheus (system-packages.txt)")
    config = workdir / "prometheus.yml"
    config.write_text(
        f"global: {{scrape_interval: {SCRAPE_INTERVAL_S}s, evaluation_interval: {SCRAPE_INTERVAL_S}s}}\n"
        f"scrape_configs: [{{job_name: wsd, static_configs: [{{targets: ['{target}']}}]}}]\n"
    )
    port = free_port()
    log = open(workdir / "prometheus.log", "wb")
    process = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'prometheus-data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=subprocess.DEVNULL, stderr=log,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"prometheus exited: {(workdir / 'prometheus.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{base}/-/ready", timeout=2) as reply:
                return reply.status == 200
        except OSError:
            return False

    wait_until(ready, 60, "Prometheus ready")
    return process, base


def scraped_up(base: str) -> bool:
    with urllib.request.urlopen(f"{base}/api/v1/query?query=up", timeout=5) as reply:
        result = json.load(reply)["data"]["result"]
    return bool(result) and result[0]["value"][1] == "1"


def channel_offset(api_url: str, channel: str) -> int:
    """The channel's last offset, as the server API tells it."""
    with urllib.request.urlopen(f"{api_url}/api/channels/{channel}", timeout=10) as reply:
        return json.load(reply)["offset"]


def start_redis(workdir: Path) -> tuple[subprocess.Popen, str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server not found: apt-get install -y redis-server, or run without --cluster")
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=open(workdir / "redis.log", "wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    return process, f"redis://127.0.0.1:{port}"


def stop(process: subprocess.Popen | None) -> None:
    if process is not None and process.poll() is None:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# Steady publishing --------------------------------------------------------------------------------


class SteadyPublisher(threading.Thread):
    """`rate` messages/s through POST /api/publish, round-robin over `channels`, until stopped; every
    message carries a per-channel `seq` (what the resuming clients' ledgers check)."""

    def __init__(self, api_port: int, channels: list[str], rate: float, payload_bytes: int) -> None:
        super().__init__(daemon=True, name="steady-publisher")
        self.api_port, self.payload_bytes = api_port, payload_bytes
        self.publisher = Publisher(api_port, payload_bytes)
        self.channels, self.rate = channels, rate
        self.last_offsets: dict[str, int] = {}
        self.seqs: Counter[str] = Counter()
        self.lock = threading.Lock()  # the burst publishes on the same channels from the main thread
        self.stopping = threading.Event()
        self.errors: Counter[str] = Counter()
        self.published = 0

    def publish(self, publisher: Publisher, batch: list[tuple[str, int]]) -> None:
        """Publishes (channel, seq) pairs, one request each or one publish_batch, and keeps the offsets."""
        now = time.time_ns()
        items = [{"channel": ch, "data": {"t": now, "seq": seq, "pad": publisher.padding}} for ch, seq in batch]
        if len(items) == 1:
            offsets = [publisher.post("/api/publish", orjson.dumps(items[0]))["offset"]]
        else:
            offsets = publisher.post("/api/publish_batch", orjson.dumps(items))["offsets"]
        with self.lock:
            for (channel, _seq), offset in zip(batch, offsets, strict=True):
                self.last_offsets[channel] = max(self.last_offsets.get(channel, 0), offset)
        self.published += len(items)

    def next_seqs(self, channels: list[str]) -> list[tuple[str, int]]:
        with self.lock:
            pairs = []
            for channel in channels:
                self.seqs[channel] += 1
                pairs.append((channel, self.seqs[channel]))
            return pairs

    def run(self) -> None:
        started, n = time.monotonic(), 0
        while not self.stopping.is_set():
            due = started + n / self.rate
            if self.stopping.wait(max(0.0, due - time.monotonic())):
                break
            try:
                self.publish(self.publisher, self.next_seqs([self.channels[n % len(self.channels)]]))
            except Exception as exc:  # a reload or a killed worker: the API keeps serving, but count it
                self.errors[f"{type(exc).__name__}: {exc}"[:120]] += 1
                self.publisher = Publisher(self.api_port, self.payload_bytes)
            n += 1


# Churning clients and slow readers (one asyncio loop in a thread) --------------------------------


class ChurnListener(WSListener):
    def __init__(self, churn: Churn) -> None:
        super().__init__()
        self.churn = churn
        self.acks: asyncio.Future[dict] = asyncio.get_running_loop().create_future()
        self.channel = ""  # what its `sub` id 1 is for

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.TEXT:
            message = orjson.loads(frame.get_payload_as_bytes())
            if message.get("op") == "ok" and message.get("id") == 1:
                self.churn.positions[self.channel] = message
                if not self.acks.done():
                    self.acks.set_result(message)
        elif frame.msg_type == WSMsgType.CLOSE:
            self.churn.close_codes[frame.get_close_code()] += 1
            transport.send_close(frame.get_close_code())
            transport.disconnect()


class Churn(threading.Thread):
    """Short-lived clients at `rate` per second (at most `limit`), and the slow-reader rounds."""

    def __init__(self, url: str, channels: list[str], rate: float, limit: int) -> None:
        super().__init__(daemon=True, name="churn")
        self.url, self.channels, self.rate, self.limit = url, channels, rate, limit
        self.loop = uvloop.new_event_loop()
        self.positions: dict[str, dict] = {}  # channel -> the last `sub` reply a churning client got
        self.outcomes: Counter[str] = Counter()
        self.close_codes: Counter[int] = Counter()  # close codes the server sent to churning clients
        self.stopping = asyncio.Event()
        self.tasks: set[asyncio.Task] = set()
        self.slow: list[WSTransport] = []  # the slow readers' connections, dropped at the latest at stop

    def run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.main())

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.stopping.set)
        self.join(60)

    def slow_readers(self, count: int, publish: Callable[[], None]) -> None:
        """From another thread: `count` slow readers, then `publish` (the bulk channel's messages)."""
        future = asyncio.run_coroutine_threadsafe(self.slow_round(count), self.loop)
        future.result(60)
        publish()

    async def main(self) -> None:
        started = 0
        while not self.stopping.is_set() and started < self.limit:
            task = asyncio.ensure_future(self.client(started))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
            started += 1
            try:
                await asyncio.wait_for(self.stopping.wait(), random.expovariate(self.rate))
            except TimeoutError:
                pass
        for transport in self.slow:
            if not transport.is_disconnected:
                transport.disconnect()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=20)
        for task in list(self.tasks):
            task.cancel()

    async def connect(self, index: int, headers: dict[str, str] | None = None, rcvbuf: int | None = None):
        source = CHURN_ADDRESSES[index % len(CHURN_ADDRESSES)]

        def socket_factory(_url):
            sock = bound_socket(source)
            if rcvbuf:  # set before connect: the window a slow reader advertises stays small
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            return sock

        return await ws_connect(lambda: ChurnListener(self), self.url, socket_factory=socket_factory,
                                extra_headers=headers, websocket_handshake_timeout=10,
                                use_aiofastnet=False)  # fmt: skip

    async def client(self, index: int) -> None:
        origin_roll, since_roll, leave_roll = random.random(), random.random(), random.random()
        # Most handshakes come from the app's own pages; a few from a page elsewhere (403, `origin`).
        foreign = origin_roll < 0.04
        origin = FOREIGN_ORIGIN if foreign else ALLOWED_ORIGIN if origin_roll < 0.6 else None
        try:
            transport, listener = await self.connect(index, {"Origin": origin} if origin else None)
        except Exception as exc:
            self.outcomes["refused: " + ("foreign origin" if foreign else type(exc).__name__)] += 1
            return
        if listener is None:
            self.outcomes["handshake cut short"] += 1
            return
        channel = random.choice(self.channels)
        listener.channel = channel
        request: dict = {"op": "sub", "ch": channel, "id": 1}
        known = self.positions.get(channel)
        if known is not None and since_roll < 0.3:  # back after a short absence: history covers it
            request["since"] = {"off": max(0, known["off"] - 3), "epoch": known["epoch"]}
        elif known is not None and since_roll < 0.38:  # back after a long one: history no longer reaches
            request["since"] = {"off": 1, "epoch": known["epoch"]}
        try:
            transport.send(WSMsgType.TEXT, orjson.dumps(request))
            transport.send(WSMsgType.TEXT, orjson.dumps({"op": "sub", "ch": CHAT_CHANNEL, "id": 2}))
            await asyncio.wait_for(asyncio.shield(listener.acks), 10)
            transport.send(WSMsgType.TEXT, orjson.dumps({"op": "pub", "ch": CHAT_CHANNEL, "id": 3,
                                                         "data": {"from": index, "text": "hello"}}))  # fmt: skip
            await asyncio.sleep(random.uniform(1.0, 8.0))
            if transport.is_disconnected:
                self.outcomes["closed by the server"] += 1
                return
            if leave_roll < 0.55:
                transport.send_close(1000)
                self.outcomes["left: 1000"] += 1
            elif leave_roll < 0.75:
                transport.send_close(1001)  # a browser tab closing
                self.outcomes["left: 1001"] += 1
            elif leave_roll < 0.88:
                transport.disconnect()  # the network went: no close frame (1006 on the server)
                self.outcomes["dropped"] += 1
                return
            elif leave_roll < 0.94:
                transport.send(WSMsgType.BINARY, b"\x00\x01")  # wsd's protocol is text: closed with 1003
                self.outcomes["sent binary"] += 1
            else:
                transport.send(WSMsgType.TEXT, b'"' + b"x" * 70_000 + b'"')  # over --max-message-size: 1009
                self.outcomes["sent too much"] += 1
            await asyncio.wait_for(transport.wait_disconnected(), 10)
        except (TimeoutError, OSError, RuntimeError) as exc:
            self.outcomes[f"error: {type(exc).__name__}"] += 1
        finally:
            if not transport.is_disconnected:
                transport.disconnect()

    async def slow_round(self, count: int) -> None:
        """`count` clients subscribe to the bulk channel and stop reading (the server cuts them off)."""
        opened = []
        for index in range(count):
            try:
                transport, listener = await self.connect(index, rcvbuf=4096)
            except Exception as exc:
                self.outcomes[f"slow reader refused: {type(exc).__name__}"] += 1
                continue
            transport.send(WSMsgType.TEXT, orjson.dumps({"op": "sub", "ch": BULK_CHANNEL, "id": 1}))
            opened.append((transport, listener))
        for transport, listener in opened:
            try:
                await asyncio.wait_for(asyncio.shield(listener.acks), 10)
            except TimeoutError:
                pass
            transport.underlying_transport.pause_reading()
            self.slow.append(transport)
            self.outcomes["slow readers"] += 1


# The run -----------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict:
    workdir = Path(tempfile.mkdtemp(prefix="wsd-dashboard-"))
    print(f"working in {workdir}", file=sys.stderr)
    redis = prometheus = None
    wsd = load = churn = steady = None
    channels = [f"feed.{n}" for n in range(args.channels)]
    flags = ["--log-level", "warning", "--allowed-origins", ALLOWED_ORIGIN, "--drain-window", str(args.drain_window),
             "--lame-duck", "2"]  # fmt: skip
    report: dict = {}
    try:
        if args.cluster:
            redis, redis_url = start_redis(workdir)
            flags += ["--cluster", redis_url]
        wsd = WsdProcess(workdir / "wsd", workers=2, flags=flags)
        wsd.start()
        prometheus, base = start_prometheus(workdir, f"127.0.0.1:{wsd.api_port}")
        wait_until(lambda: scraped_up(base), 30, "Prometheus scraping wsd")
        started = time.time()
        clock = time.monotonic()

        def at(fraction: float) -> None:  # sleeps until that fraction of the run
            time.sleep(max(0.0, clock + fraction * args.seconds - time.monotonic()))

        steady = SteadyPublisher(wsd.api_port, channels, args.rate, args.payload_bytes)
        steady.start()
        time.sleep(10)  # a quiet start: the server idle, then the subscribers arrive
        load = LoadGenerator([wsd.url], processes=2, subscribers=args.subscribers,
                             resume=ResumePlan(channels, channels_per_client=2))  # fmt: skip
        connect = load.connect_all()
        print(f"{connect['subscribers']} resuming subscribers in {connect['connect_seconds']:.1f} s", file=sys.stderr)
        churn = Churn(wsd.url, channels, args.churn_rate, int(args.churn_rate * args.seconds))
        churn.start()

        def publish_bulk() -> None:  # 8 MB that the slow readers do not read (the kernel takes ~3 MB of it)
            # A connection of its own each round: a kept-alive one may be to a worker a reload replaced.
            bulk = Publisher(wsd.api_port, 8000, channel=BULK_CHANNEL)
            for _ in range(10):
                batch = [{"channel": BULK_CHANNEL, "data": {"n": i, "pad": os.urandom(4000).hex()}} for i in range(100)]
                bulk.post("/api/publish_batch", orjson.dumps(batch))

        at(0.2)
        burst = Publisher(wsd.api_port, args.payload_bytes)
        steady.publish(burst, steady.next_seqs([channels[i % len(channels)] for i in range(args.burst)]))
        print(f"burst of {args.burst} at {time.time() - started:.0f} s", file=sys.stderr)
        at(0.3)
        churn.slow_readers(args.slow_readers, publish_bulk)
        at(0.5)
        wsd.ctl("reload")
        print(f"rolling reload at {time.time() - started:.0f} s", file=sys.stderr)
        at(0.65)
        churn.slow_readers(args.slow_readers, publish_bulk)
        at(0.8)
        victim = wsd.worker_pids()[1]
        os.kill(victim, signal.SIGKILL)
        print(f"worker pid {victim} killed at {time.time() - started:.0f} s", file=sys.stderr)
        at(1.0)
        churn.stop()
        steady.stopping.set()
        steady.join(30)
        time.sleep(3 * SCRAPE_INTERVAL_S)  # the last scrapes
        end = time.time()
        title = (f"wsd load run: {args.subscribers:,} resuming subscribers, {args.rate:g} msg/s + a burst, churn, "
                 "reload, killed worker")  # fmt: skip
        subprocess.run([sys.executable, str(RENDERER), "--prometheus", base, "--end", str(end),
                        "--minutes", str((end - started + 6) / 60), "--rate-window", args.rate_window,
                        "--title", title, "--out", str(args.out)], check=True)  # fmt: skip
        # The server's offsets, not the publisher's: a publish whose reply a reload cut off may have landed.
        final_offsets = {channel: channel_offset(wsd.api_url, channel) for channel in channels}
        verdict = merge_resume(load.finish(final_offsets, timeout=60))
        report = {
            "seconds": round(end - started),
            "subscribers": connect["subscribers"],
            "published_api": steady.published,
            "publish_errors": dict(steady.errors),
            "churn": dict(churn.outcomes),
            "close_codes_sent_to_churn": dict(churn.close_codes),
            "resuming": {key: verdict[key] for key in RESUME_FIGURES},
            "resuming_close_codes": verdict["close_codes"],
            "conflicts": len(verdict["conflicts"]),
            "out": str(args.out),
        }
        return report
    finally:
        if churn is not None and churn.is_alive():
            churn.stop()
        if steady is not None:
            steady.stopping.set()
        if load is not None:
            load.close()
        if wsd is not None:
            wsd.kill()
        stop(prometheus)
        stop(redis)
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=240, help="length of the load (default 240)")
    parser.add_argument("--subscribers", type=int, default=3000, help="resuming subscribers (default 3000)")
    parser.add_argument("--channels", type=int, default=8, help="channels they share, two each (default 8)")
    parser.add_argument("--rate", type=float, default=25, help="API publishes per second (default 25)")
    parser.add_argument("--burst", type=int, default=400, help="messages of the burst (default 400)")
    parser.add_argument("--payload-bytes", type=int, default=200, help="JSON size of a message's data")
    parser.add_argument("--churn-rate", type=float, default=4, help="short-lived clients per second (default 4)")
    parser.add_argument("--slow-readers", type=int, default=4, help="slow readers per round (default 4)")
    parser.add_argument("--drain-window", type=float, default=20, help="wsd --drain-window (default 20)")
    parser.add_argument("--rate-window", default="10s", help="$__rate_interval of the rendering (default 10s)")
    parser.add_argument("--cluster", action="store_true", help="wsd --cluster on a redis-server of its own")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, Prometheus data)")
    parser.add_argument("--out", type=Path, default=REPOSITORY / "docs" / "dashboard.png")
    args = parser.parse_args(argv)
    report = run(args)
    print(json.dumps(report, indent=2))
    problems = report["resuming"]["gaps"] + report["resuming"]["duplicates"] + report["conflicts"]
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
