"""The load generator of the fan-out benchmarks: K client processes (picows on uvloop, one
callback-driven listener per connection, no Task per connection), driven in lock-step by the
coordinator over pipes.

Connections are spread over loopback source addresses (harness.net) and over the server's URLs
(a peer with several processes); each subscribes to the shared channel and, when asked, to its own
user channel. A phase is armed in every process, the coordinator publishes, and each process
reports when all its connections have their messages (or at the timeout); `merge_phase` combines
the reports and checks every delivery arrived, in order.

    load = LoadGenerator([wsd.url], processes=2, subscribers=10_000)
    connect = load.connect_all()
    load.arm(expected_per_connection=100, record_latency=False, timeout=PHASE_GRACE_SECONDS)
    ...publish 100 messages to SHARED_CHANNEL...
    check = merge_phase(load.collect(PHASE_GRACE_SECONDS + 30), 100, first_offset)
    load.close()

With a `ResumePlan` the clients are resuming ones instead (harness.resuming): each subscribes to its
channels at once, reconnects and resumes with `since` whenever its connection ends, and `finish`
reports, once every client has caught up with the channels' final offsets, what each saw (gaps,
duplicates, resumes) and what offsets carried which message (`merge_resume` combines the reports).

    load = LoadGenerator([wsd.url], processes=4, subscribers=10_000, resume=ResumePlan(channels))
    load.connect_all()
    ...publish, kill workers...
    verdict = merge_resume(load.finish(final_offsets, timeout=60))
"""

from __future__ import annotations

import asyncio
import gc
import logging
import multiprocessing
import multiprocessing.connection
import os
import ssl
import time
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import uvloop
from picows import WSMsgType, ws_connect
from picows.picows import WSAutoPingStrategy, WSProtocol
from picows.url import parse_url

from harness.fastlisten_build import build_fast_listener
from harness.listener import (
    SHARED_CHANNEL,
    PhaseRecorder,
    SubscriberListener,
    handle_control_frame,
    subscribe_request,
    user_channel,
)
from harness.net import bound_socket, source_addresses
from harness.resuming import STARTED, Ledger, ResumePlan, ResumingSubscriber

# One source address has ~28,000 ephemeral ports towards one destination; staying well under that
# leaves room for TIME_WAIT sockets of earlier runs.
CONNECTIONS_PER_SOURCE_ADDRESS = 5000

# Handshakes in flight per load-generator process; more only deepens the server's accept backlog.
CONNECT_CONCURRENCY = 200

# A subscriber's frames are ~100-200 bytes; picows grows the buffer when a burst arrives in one read.
READ_BUFFER_INIT_SIZE = 2048

# How long a phase may take past its expected end before the load generator reports what it has.
PHASE_GRACE_SECONDS = 60.0


@dataclass(frozen=True)
class ClientPlan:
    """What every client process is told at start (it crosses the process boundary, so plain data)."""

    urls: list[str]  # connection i goes to urls[i % len(urls)]
    socketio: bool  # socket.io framing instead of wsd's JSON protocol
    user_channels: bool  # each connection also subscribes to user_channel(i)
    source_addresses: list[str]  # connection i binds source_addresses[i // CONNECTIONS_PER_SOURCE_ADDRESS]
    fast: bool  # the Cython listener (harness/fastlisten.pyx), else the Python one
    # What every connection subscribes to (besides its user channel); the Cython listener checks the
    # offset order of SHARED_CHANNEL and of one other channel per connection.
    channels: tuple[str, ...] = (SHARED_CHANNEL,)
    netns: str | None = None  # the network namespace the client processes run in (harness.netns_hosts)
    ca_pem: str | None = None  # wss:// URLs: the PEM certificates to trust (a self-signed server's)
    resume: ResumePlan | None = None  # resuming clients (harness.resuming) instead of phase subscribers
    # Tries per connection (a refused or cut handshake is tried again after a pause); failures are
    # counted either way.
    connect_attempts: int = 1


# --------------------------------------------------------------------------------------------------
# Client side: runs in each of the K processes.
# --------------------------------------------------------------------------------------------------


class PlainConnector:
    """Opens ws:// connections to one URL the way picows's ws_connect does, without the work it
    repeats per call (parsing the URL, looking for a proxy, making a logger): the load generator's
    CPU per handshake is on the same cores as the server's, and is in every handshake figure.

    Builds the WSProtocol as ws_connect does (picows 2.3), on a socket bound to a source address."""

    def __init__(self, url: str, new_listener: Callable[[], Any]):
        parsed = parse_url(url)
        if parsed.is_secure:
            raise ValueError(f"PlainConnector is for ws:// URLs, not {url}")
        self.address = (parsed.host, parsed.port)
        self.netloc = parsed.netloc
        self.resource_name = parsed.resource_name
        self.new_listener = new_listener
        self.logger = logging.getLogger("picows.client")

    def _protocol(self) -> WSProtocol:
        return WSProtocol(
            self.netloc, self.resource_name, True, self.new_listener, self.logger, True, 30,
            False, 10, 10, WSAutoPingStrategy.PING_WHEN_IDLE, True, 10 * 1024 * 1024, None, READ_BUFFER_INIT_SIZE,
        )  # fmt: skip

    async def connect(self, source: str) -> tuple[Any, Any]:
        """(transport, listener) once the handshake is done; raises as ws_connect does."""
        loop = asyncio.get_running_loop()
        sock = bound_socket(source)
        try:
            await loop.sock_connect(sock, self.address)
            _, protocol = await loop.create_connection(self._protocol, sock=sock)
        except BaseException:
            sock.close()
            raise
        await protocol.wait_until_handshake_complete()
        return protocol.transport, protocol.listener


class ClientProcess:
    """The event-loop side of one load-generator process; commands arrive over a pipe."""

    def __init__(
        self,
        commands: multiprocessing.connection.Connection,
        replies: multiprocessing.connection.Connection,
        plan: ClientPlan,
    ):
        # Two one-way pipes: the loop makes the descriptor it watches non-blocking, and a large reply
        # written to a non-blocking pipe fails half-way; replies go out on a pipe the loop never sees.
        self.commands = commands
        self.replies = replies
        self.plan = plan
        if plan.fast:
            from harness.fastlisten import FastListener, FastRecorder

            self.recorder: Any = FastRecorder()
            self.new_listener = lambda: FastListener(self.recorder, plan.socketio, handle_control_frame)
        else:
            self.recorder = PhaseRecorder()
            self.new_listener = lambda: SubscriberListener(self.recorder, plan.socketio)
        self.listeners: list[tuple[int, SubscriberListener]] = []  # (index over all processes, listener)
        self.ssl_context = None if plan.ca_pem is None else ssl.create_default_context(cadata=plan.ca_pem)
        self.ledger = Ledger()
        self.loop_exceptions: Counter[str] = Counter()
        self.loop_lag_max_s = 0.0  # the longest this process's loop was late (it shares the cores)
        self.loop_lags: list[tuple[float, float]] = []  # (when, how late) of every tick over 1 s late
        self.subscribers: list[ResumingSubscriber] = []  # resuming mode
        self.finished = asyncio.Event()
        self.phase_deadline: asyncio.TimerHandle | None = None

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        if self.plan.resume is not None:
            # Connections cut by a killed server make uvloop report errors of sockets already closed
            # (connection_made after a handshake timeout): counted, not printed by the thousand.
            loop.set_exception_handler(self.on_loop_exception)
            self.watch_loop_lag()
        loop.add_reader(self.commands.fileno(), self.on_command)
        self.replies.send({"ready": os.getpid()})
        await self.finished.wait()
        loop.remove_reader(self.commands.fileno())

    def on_command(self) -> None:
        command, args = self.commands.recv()
        if command == "connect":
            asyncio.ensure_future(self.connect_resuming(**args) if self.plan.resume else self.connect(**args))
        elif command == "subscribe":
            asyncio.ensure_future(self.subscribed_resuming() if self.plan.resume else self.subscribe(**args))
        elif command == "arm":
            self.arm(**args)
        elif command == "finish":
            asyncio.ensure_future(self.finish_resuming(**args))
        elif command == "close":
            for _index, listener in self.listeners:
                if listener.transport is not None:
                    listener.transport.disconnect()
            for subscriber in self.subscribers:
                subscriber.stop()
            self.finished.set()

    async def connect(self, count: int, first_index: int) -> None:
        started = time.monotonic()
        workers: Counter[str] = Counter()
        failures: Counter[str] = Counter()
        next_index = iter(range(first_index, first_index + count))
        plan = self.plan
        connectors = None if self.ssl_context is not None else [PlainConnector(u, self.new_listener) for u in plan.urls]

        async def connect_one(index: int) -> tuple[Any, Any] | None:
            source = plan.source_addresses[index // CONNECTIONS_PER_SOURCE_ADDRESS]
            url = plan.urls[index % len(plan.urls)]  # several server processes: spread evenly
            try:
                if connectors is not None:
                    transport, listener = await connectors[index % len(plan.urls)].connect(source)
                else:
                    transport, listener = await ws_connect(
                        self.new_listener,
                        url,
                        socket_factory=lambda _url, source=source: bound_socket(source),
                        ssl_context=self.ssl_context,
                        read_buffer_init_size=READ_BUFFER_INIT_SIZE,
                        use_aiofastnet=False,
                        websocket_handshake_timeout=30,
                    )
                if listener is None:  # picows gave no listener: the connection ended in the handshake
                    failures["closed during the handshake"] += 1
                    return None
                if listener.connected is not None:
                    await asyncio.wait_for(listener.connected, 30)
            except (TimeoutError, OSError, RuntimeError) as exc:
                failures[f"{type(exc).__name__}: {exc}"[:120]] += 1
                return None
            return transport, listener

        async def connector() -> None:
            for index in next_index:
                for attempt in range(plan.connect_attempts):
                    connected = await connect_one(index)
                    if connected is not None:
                        break
                    if attempt + 1 < plan.connect_attempts:
                        await asyncio.sleep(0.5 * (attempt + 1))
                else:
                    continue
                transport, listener = connected
                # wsd names the worker that took the connection; other servers do not ("?").
                workers[transport.response.headers.get("X-Wsd-Worker", "?")] += 1
                self.listeners.append((index, listener))

        await asyncio.gather(*(connector() for _ in range(min(CONNECT_CONCURRENCY, count))))
        self.recorder.connections = len(self.listeners)
        self.replies.send(
            {
                "connected": len(self.listeners),
                "failed": sum(failures.values()),
                "failures": dict(failures.most_common(5)),
                "seconds": time.monotonic() - started,
                "workers": dict(workers),
            }
        )

    async def subscribe(self, timeout: float = PHASE_GRACE_SECONDS) -> None:
        """Subscribe every connection to the shared channel (and to its own user channel)."""
        started = time.monotonic()
        socketio = self.plan.socketio
        shared = [subscribe_request(channel, socketio) for channel in self.plan.channels]
        expected_acks = len(shared) + (1 if self.plan.user_channels else 0)
        for index, listener in self.listeners:
            for request in shared:
                listener.transport.send(WSMsgType.TEXT, request)
            if self.plan.user_channels:
                listener.transport.send(WSMsgType.TEXT, subscribe_request(user_channel(index), socketio))
        deadline = started + timeout
        while time.monotonic() < deadline:
            if all(listener.acks >= expected_acks or listener.error for _index, listener in self.listeners):
                break
            await asyncio.sleep(0.05)
        errors = Counter(listener.error for _index, listener in self.listeners if listener.error)
        self.replies.send(
            {
                "subscribed": sum(listener.acks >= expected_acks for _index, listener in self.listeners),
                "errors": dict(errors.most_common(5)),
                "seconds": time.monotonic() - started,
            }
        )

    # Resuming mode ---------------------------------------------------------------------------------

    def on_loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict) -> None:
        error = context.get("exception")
        self.loop_exceptions[f"{type(error).__name__}: {error}"[:100] if error else context["message"][:100]] += 1

    def watch_loop_lag(self, interval: float = 0.1) -> None:
        loop = asyncio.get_running_loop()
        expected = loop.time() + interval

        def tick() -> None:
            nonlocal expected
            late = loop.time() - expected
            self.loop_lag_max_s = max(self.loop_lag_max_s, late)
            if late > 1.0 and len(self.loop_lags) < 50:
                self.loop_lags.append((round(time.monotonic() - STARTED, 1), round(late, 2)))
            expected = loop.time() + interval
            loop.call_later(interval, tick)

        loop.call_later(interval, tick)

    async def connect_resuming(self, count: int, first_index: int) -> None:
        """Start every resuming client (each subscribes as soon as it is connected); report once each
        has connected, or at the grace time."""
        started = time.monotonic()
        plan, resume = self.plan, self.plan.resume
        assert resume is not None
        ramp = asyncio.Semaphore(CONNECT_CONCURRENCY)
        for index in range(first_index, first_index + count):
            subscriber = ResumingSubscriber(
                index,
                plan.urls[index % len(plan.urls)],
                plan.source_addresses[index // CONNECTIONS_PER_SOURCE_ADDRESS],
                resume.channels_of(index),
                self.ledger,
            )
            subscriber.start(ramp)
            self.subscribers.append(subscriber)
        deadline = started + PHASE_GRACE_SECONDS
        while time.monotonic() < deadline and not all(s.connects for s in self.subscribers):
            await asyncio.sleep(0.05)
        failures: Counter[str] = Counter()
        for subscriber in self.subscribers:
            failures.update(subscriber.failed_connects)
        self.replies.send(
            {
                "connected": sum(s.connects > 0 for s in self.subscribers),
                "failed": sum(s.connects == 0 for s in self.subscribers),
                "failures": dict(failures.most_common(5)),
                "seconds": time.monotonic() - started,
                "workers": dict(Counter(s.workers[0] for s in self.subscribers if s.workers)),
            }
        )

    async def subscribed_resuming(self) -> None:
        """Report once every resuming client has had every channel's `sub` answered once."""
        started = time.monotonic()
        deadline = started + PHASE_GRACE_SECONDS
        while time.monotonic() < deadline and not all(s.ever_ready.is_set() for s in self.subscribers):
            await asyncio.sleep(0.05)
        errors = Counter(error for s in self.subscribers for error in s.errors)
        self.replies.send(
            {
                "subscribed": sum(s.ever_ready.is_set() for s in self.subscribers),
                "errors": dict(errors.most_common(5)),
                "seconds": time.monotonic() - started,
            }
        )

    async def finish_resuming(self, final_offsets: dict[str, int], timeout: float) -> None:
        """Wait (up to `timeout`) until every client's position is the final offset of each of its
        channels, stop them all, and report what they saw."""
        started = time.monotonic()
        while time.monotonic() < started + timeout and not all(s.caught_up(final_offsets) for s in self.subscribers):
            await asyncio.sleep(0.1)
        waited = time.monotonic() - started
        for subscriber in self.subscribers:
            subscriber.stop()
        summaries = [s.summary(final_offsets) for s in self.subscribers]
        problems = [
            summary
            for summary in summaries
            if summary["gap_count"] or summary["duplicates"] or summary["behind"] or summary["not_recovered"]
            or summary["errors"] or not summary["connects"]
        ]  # fmt: skip
        close_codes: Counter[int] = Counter()
        for summary in summaries:
            close_codes.update(int(code) for code in summary["close_codes"])
        self.replies.send(
            {
                "clients": len(summaries),
                "catch_up_seconds": waited,
                "connects": sum(x["connects"] for x in summaries),
                "reconnected_clients": sum(x["connects"] > 1 for x in summaries),
                "disconnected_clients": sum(bool(x["close_codes"]) for x in summaries),
                # Never disconnected: on one connection from start to end (a worker that was not killed).
                "surviving_clients": sum(x["connects"] == 1 and not x["close_codes"] for x in summaries),
                "surviving_clients_complete": sum(
                    x["connects"] == 1
                    and not x["close_codes"]
                    and not x["behind"]
                    and not x["gap_count"]
                    and not x["duplicates"]
                    for x in summaries
                ),  # fmt: skip
                "never_connected": sum(not x["connects"] for x in summaries),
                "resumes": sum(x["resumes"] for x in summaries),
                "not_recovered": sum(x["not_recovered"] for x in summaries),
                "gaps": sum(x["gap_count"] for x in summaries),
                "duplicates": sum(x["duplicates"] for x in summaries),
                "behind_clients": sum(bool(x["behind"]) for x in summaries),
                "error_clients": sum(bool(x["errors"]) for x in summaries),
                "failed_connects": sum(x["failed_connects"] for x in summaries),
                "close_codes": dict(close_codes),
                "problems": problems[:20],
                "problem_count": len(problems),
                "loop_lag_max_s": round(self.loop_lag_max_s, 3),
                "loop_lags": self.loop_lags,
                "loop_exceptions": dict(self.loop_exceptions.most_common(5)),
                "ledger": self.ledger.export(),
            }
        )

    def arm(self, expected_per_connection: int, record_latency: bool, timeout: float) -> None:
        """Start counting a phase; report when every connection has its messages, or at `timeout`."""
        for _index, listener in self.listeners:
            listener.count = 0
        self.recorder.reset(expected_per_connection, record_latency)
        self.recorder.on_complete = self.report_phase
        self.phase_deadline = asyncio.get_running_loop().call_later(timeout, self.report_phase)
        self.replies.send({"armed": True})

    def report_phase(self) -> None:
        recorder = self.recorder
        recorder.on_complete = None
        if self.phase_deadline is not None:
            self.phase_deadline.cancel()
            self.phase_deadline = None
        counts = Counter(listener.count for _index, listener in self.listeners)
        self.replies.send(
            {
                "connections": recorder.connections,
                "received": recorder.received,
                "complete_connections": recorder.complete_connections,
                "count_histogram": dict(counts.most_common(5)),
                "out_of_order": recorder.out_of_order,
                "first_offsets": dict(recorder.first_offsets.most_common(5)),
                "first_receive_ns": recorder.first_receive_ns,
                "last_receive_ns": recorder.last_receive_ns,
                "disconnected": sum(listener.error is not None for _index, listener in self.listeners),
                # Why: "closed by server: 1011 ping timeout", "disconnected" (no close frame), ...
                "disconnect_reasons": dict(
                    Counter(listener.error for _index, listener in self.listeners if listener.error).most_common(5)
                ),
                "latencies_us": recorder.latencies_us.tobytes(),
            }
        )


def client_process_main(
    commands: multiprocessing.connection.Connection,
    replies: multiprocessing.connection.Connection,
    plan: ClientPlan,
) -> None:
    """Entry point of one load-generator process."""
    if plan.netns is not None:
        from harness.netns_hosts import enter_netns

        enter_netns(plan.netns)
    # Thousands of connections, each a few long-lived objects: the default young generation (700)
    # has the collector walk them again and again while they connect (12% of a process in py-spy).
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
    uvloop.run(ClientProcess(commands, replies, plan).run())


# --------------------------------------------------------------------------------------------------
# Coordinator side: the benchmark's own process.
# --------------------------------------------------------------------------------------------------


class LoadGenerator:
    """The K client processes, driven in lock-step over their pipes."""

    def __init__(
        self,
        urls: list[str],
        processes: int,
        subscribers: int,
        socketio: bool = False,
        user_channels: bool = False,
        fast: bool = True,
        channels: tuple[str, ...] = (SHARED_CHANNEL,),
        addresses: list[str] | None = None,
        netns: str | None = None,
        ca_pem: str | None = None,
        resume: ResumePlan | None = None,
        connect_attempts: int = 1,
    ):
        """`addresses`: source addresses to spread the connections over (default 127.0.0.2, ...);
        `netns`: run the client processes in that network namespace (with addresses of it);
        `ca_pem`: the certificates a wss:// server is trusted by."""
        self.subscribers = subscribers
        # The Cython listener is built here, once, before the processes start and import it.
        self.fast = fast and resume is None and build_fast_listener()
        self.per_process = [subscribers // processes + (i < subscribers % processes) for i in range(processes)]
        plan = ClientPlan(
            urls=list(urls),
            socketio=socketio,
            user_channels=user_channels,
            source_addresses=addresses or source_addresses(subscribers, CONNECTIONS_PER_SOURCE_ADDRESS),
            fast=self.fast,
            channels=tuple(channels),
            netns=netns,
            ca_pem=ca_pem,
            resume=resume,
            connect_attempts=connect_attempts,
        )
        context = multiprocessing.get_context("spawn")
        self.command_pipes: list[multiprocessing.connection.Connection] = []
        self.pipes: list[multiprocessing.connection.Connection] = []
        self.processes: list[multiprocessing.Process] = []
        for _ in range(processes):
            command_reader, command_writer = context.Pipe(duplex=False)
            reply_reader, reply_writer = context.Pipe(duplex=False)
            process = context.Process(target=client_process_main, args=(command_reader, reply_writer, plan))
            process.start()
            self.command_pipes.append(command_writer)
            self.pipes.append(reply_reader)
            self.processes.append(process)
        # Wait until every process has imported and runs its loop, so start-up is not timed as connecting.
        for index in range(processes):
            self.reply(index, timeout=60)

    @property
    def listener_name(self) -> str:
        return "Cython listener (harness/fastlisten.pyx)" if self.fast else "Python listener"

    def request(self, command: str, args: list[dict] | dict | None = None, timeout: float = 300) -> list[dict]:
        """Send `command` to every process (per-process args if a list) and collect their replies."""
        for index, pipe in enumerate(self.command_pipes):
            pipe.send((command, args[index] if isinstance(args, list) else (args or {})))
        return self.collect(timeout)

    def reply(self, index: int, timeout: float) -> dict:
        if not self.pipes[index].poll(timeout):
            raise TimeoutError(f"load-generator process {index} did not answer within {timeout}s")
        return self.pipes[index].recv()

    def collect(self, timeout: float) -> list[dict]:
        """One reply from every process (a phase report after `arm`)."""
        return [self.reply(index, timeout) for index in range(len(self.pipes))]

    def arm(self, expected_per_connection: int, record_latency: bool, timeout: float) -> None:
        """Start a phase in every process; its reports come from `collect` once the messages are in."""
        self.request(
            "arm",
            {"expected_per_connection": expected_per_connection, "record_latency": record_latency, "timeout": timeout},
        )

    def connect_all(self, on_connected: Callable[[], None] | None = None, timeout: float = 300) -> dict[str, Any]:
        """Connect every subscriber (every process at once, so the server sees the combined handshake
        rate) and subscribe it; raises if any connection or subscription failed. `on_connected` is
        called between the two (a benchmark measuring the handshakes alone stops its clock there)."""
        first_indexes = [sum(self.per_process[:i]) for i in range(len(self.per_process))]
        started = time.monotonic()
        replies = self.request(
            "connect",
            [{"count": n, "first_index": f} for n, f in zip(self.per_process, first_indexes, strict=True)],
            timeout=timeout,
        )
        connect_seconds = time.monotonic() - started
        if on_connected is not None:
            on_connected()
        connected = sum(r["connected"] for r in replies)
        if connected < self.subscribers:
            failures = [r["failures"] for r in replies if r["failed"]]
            raise RuntimeError(f"only {connected} of {self.subscribers} subscribers connected: {failures}")
        per_worker: Counter[str] = Counter()
        for reply in replies:
            per_worker.update(reply["workers"])
        started = time.monotonic()
        # Every connection subscribes at once: a few hundred thousand `sub`s take the server longer
        # than a phase's grace on 2 cores (~14,000 a second at 200,000 connections, ~10,000 at
        # 500,000 with 28 workers: 100 s were not enough there).
        subscribe_timeout = max(PHASE_GRACE_SECONDS, self.subscribers / 2000)
        sub_replies = self.request("subscribe", {"timeout": subscribe_timeout}, timeout=subscribe_timeout + 300)
        subscribed = sum(r["subscribed"] for r in sub_replies)
        if subscribed < connected:
            raise RuntimeError(
                f"only {subscribed} of {connected} subscribers got their oks: {[r['errors'] for r in sub_replies]}"
            )
        return {
            "subscribers": connected,
            "connect_seconds": connect_seconds,
            "connects_per_second": connected / connect_seconds,
            "per_worker": dict(per_worker),
            "subscribe_seconds": time.monotonic() - started,
        }

    def finish(self, final_offsets: dict[str, int], timeout: float) -> list[dict]:
        """Resuming mode: every process's report once its clients caught up with `final_offsets`
        (channel -> the last offset published), or after `timeout`; the clients are stopped."""
        return self.request("finish", {"final_offsets": final_offsets, "timeout": timeout}, timeout=timeout + 60)

    def close(self) -> None:
        for pipe in self.command_pipes:
            try:
                pipe.send(("close", {}))
            except OSError:
                pass
        for process in self.processes:
            process.join(30)
            if process.is_alive():
                process.kill()


def merge_phase(reports: list[dict], expected_per_connection: int, first_offset: int | None) -> dict[str, Any]:
    """Combine the client processes' phase reports and check every delivery arrived, in order.

    `first_offset` is the offset every connection's first message must carry (None: not checked,
    e.g. when each connection's own channel has its own offsets)."""
    connections = sum(r["connections"] for r in reports)
    received = sum(r["received"] for r in reports)
    first_offsets: Counter[int] = Counter()
    for report in reports:
        first_offsets.update({int(k): v for k, v in report["first_offsets"].items()})
    wrong_start = sum(v for k, v in first_offsets.items() if first_offset is not None and k != first_offset)
    expected = connections * expected_per_connection
    return {
        "expected_deliveries": expected,
        "deliveries": received,
        "missing": max(0, expected - received),
        "extra": max(0, received - expected),
        "incomplete_connections": connections - sum(r["complete_connections"] for r in reports),
        "out_of_order": sum(r["out_of_order"] for r in reports),
        "wrong_first_offset": wrong_start,
        "disconnected": sum(r["disconnected"] for r in reports),
        "disconnect_reasons": dict(
            sum((Counter(r.get("disconnect_reasons", {})) for r in reports), Counter()).most_common(5)
        ),
        "last_receive_ns": max(r["last_receive_ns"] for r in reports),
    }


def phase_latencies_us(reports: list[dict]) -> list[int]:
    """Every publish-to-receive latency of a phase armed with record_latency, in µs, sorted."""
    latencies: list[int] = []
    for report in reports:
        samples = array("q")
        samples.frombytes(report["latencies_us"])
        latencies.extend(samples)
    latencies.sort()
    return latencies


_RESUME_SUMS = (
    "clients", "connects", "reconnected_clients", "disconnected_clients", "surviving_clients",
    "surviving_clients_complete", "never_connected", "resumes", "not_recovered", "gaps", "duplicates",
    "behind_clients", "error_clients", "failed_connects", "problem_count",
)  # fmt: skip


def merge_resume(reports: list[dict]) -> dict[str, Any]:
    """Combine the resuming-mode reports of `finish`: the sums, the problems, and the ledgers merged
    (channel -> offset -> seq), with every offset seen with two messages (`conflicts`) and every
    message seen at two offsets (`sequenced_twice`)."""
    merged: dict[str, Any] = {key: sum(r[key] for r in reports) for key in _RESUME_SUMS}
    merged["catch_up_seconds"] = max(r["catch_up_seconds"] for r in reports)
    merged["loop_lag_max_s"] = max(r["loop_lag_max_s"] for r in reports)
    merged["loop_exceptions"] = sum(sum(r["loop_exceptions"].values()) for r in reports)
    merged["loop_lags"] = [r["loop_lags"] for r in reports]
    close_codes: Counter[int] = Counter()
    for report in reports:
        close_codes.update({int(code): n for code, n in report["close_codes"].items()})
    merged["close_codes"] = dict(close_codes)
    merged["problems"] = [p for r in reports for p in r["problems"]][:20]
    seqs: dict[str, dict[int, Any]] = {}
    conflicts = [tuple(c) for r in reports for c in r["ledger"]["conflicts"]]
    for report in reports:
        for channel, pairs in report["ledger"]["seqs"].items():
            seen = seqs.setdefault(channel, {})
            for offset, seq in pairs:
                previous = seen.setdefault(offset, seq)
                if previous != seq:
                    conflicts.append((channel, offset, previous, seq))
    sequenced_twice = []
    for channel, offsets in seqs.items():
        by_seq: dict[Any, int] = {}
        for offset, seq in sorted(offsets.items()):
            if seq in by_seq:
                sequenced_twice.append((channel, seq, by_seq[seq], offset))
            else:
                by_seq[seq] = offset
    merged["ledger"] = seqs
    merged["conflicts"] = conflicts
    merged["sequenced_twice"] = sequenced_twice
    return merged
