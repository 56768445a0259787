"""A worker process: one uvloop loop serving WebSocket (picows) and the publish API on its slot's
SO_REUSEPORT sockets, wired to the cross-worker bus.

Started by the supervisor as `python -P -m wsd.server.worker` with its sockets inherited and a JSON
spec in the WSD_WORKER_SPEC environment variable; it shares nothing with other workers but the bus.
This module is the process's life cycle: bootstrap, signals, stop and drain, the stats tick (the
heartbeat and numbers in its stats block, the log level the supervisor asks for, held-back log
lines). The work is done by the node (sessions, hub, broker), the routes, the accept gate and the
server API (with its intercom socket to the other workers) it composes.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import json
import logging
import os
import signal
import socket
import sys
import time
from typing import Any

import uvloop
from picows.picows import WSCloseCode

from wsd.server.api import PublishError, make_api_protocol_factory, start_api_server
from wsd.server.auth.tokens import Identity
from wsd.server.bus.broker import ShmBroker
from wsd.server.bus.provision import attach as attach_bus
from wsd.server.bus.tick import Periodic
from wsd.server.control.config import Config, ConfigError
from wsd.server.control.security import load_security
from wsd.server.logs import current_level, flush_suppressed, level_name, set_level, setup_logging
from wsd.server.node.broker import BrokerError
from wsd.server.node.deadlines import ConnectionDeadlines
from wsd.server.node.node import Node
from wsd.server.server_view import ServerObserver
from wsd.server.stats import FIELD_INDEX, WorkerCounters
from wsd.server.worker import memtrace
from wsd.server.worker.accept import AcceptGate
from wsd.server.worker.address_limits import AddressLimiter
from wsd.server.worker.drain import Drain
from wsd.server.worker.intercom import IntercomServer
from wsd.server.worker.keepalive import Keepalive
from wsd.server.worker.routes import WebSocketRoutes
from wsd.server.worker.server_api import ServerApi, add_server_api
from wsd.server.worker.session import ClientSession
from wsd.server.worker.ws_conformance import CLOSE_TIMEOUT_S, picows_server_kwargs

log = logging.getLogger("wsd.worker")

STATS_EVERY_S = 0.5
MAINTENANCE_EVERY_S = 0.5  # slow-reader deadlines and keepalive pings
PR_SET_PDEATHSIG = 1
# The cyclic collector's thresholds in a worker. The default young generation (700 new container
# objects) is collected so often under load that objects living a few milliseconds (a publish's
# future, a handshake's transport objects) survive into the older generations, which are then walked
# again and again: 5-9% of a worker's time in py-spy's profiles of handshakes and targeted messages.
# A young generation of 20,000 lets them die by reference count first; garbage in cycles waits a
# little longer (a few MB at most).
GC_THRESHOLDS = (20_000, 20, 20)
# The stats tick's gauges, by their index in the block.
_GAUGES = {key: FIELD_INDEX[key] for key in (
    "pid", "heartbeat_ns", "slot", "role", "accepting", "draining", "drain_remaining", "max_connections",
    "connections", "subscriptions", "channels", "channel_table_used", "channel_table_size", "bus_lag_bytes",
    "ring_history_ms", "bus_overruns", "bus_lost_bytes", "bus_read_bytes", "bus_gaps", "bus_bad_entries",
    "bus_channels_forgotten",
)}  # fmt: skip


class Worker:
    def __init__(self, spec: dict[str, Any]):
        self.slot: int = spec["slot"]  # the socket slot: which listening sockets
        self.bus_slot: int = spec["bus_slot"]  # where this process writes on the bus
        self.role: int | None = spec["role"]
        self.config = Config(**spec["config"])
        self.connection_limit: int = spec["connection_limit"]
        self.api_connection_limit: int = spec["api_connection_limit"]
        self.address_limiter = None
        if self.config.max_connections_per_ip is not None:
            self.address_limiter = AddressLimiter(
                spec["address_counts_fd"], bytes.fromhex(spec["address_counts_secret"]),
                self.config.max_connections_per_ip, spec["bus_slot"],
            )  # fmt: skip
        self.run_id: str = spec["run_id"]
        self.cluster_node_id: str | None = spec.get("cluster_node_id")
        self.cluster_status_dir: str | None = spec.get("cluster_status_dir")
        self.intercom_directory: str = spec["intercom_dir"]
        self.ws_socket = socket.socket(fileno=spec["ws_fd"])
        self.api_socket = socket.socket(fileno=spec["api_fd"])
        self.bus = attach_bus(spec)  # the inherited segments and doorbells (server/bus/provision.py)
        self.segments = self.bus.segments
        self.own_segment = self.segments[self.bus_slot]
        self.counters = WorkerCounters()
        self.sessions: set[ClientSession] = set()
        config = self.config
        # Keys, secrets and certificates as the files are now (the supervisor checked them before
        # starting this process; a rolling reload starts new processes, which read them again).
        self.security = load_security(config)
        self.node = Node(
            self.counters, self.slot, config.max_subscriptions, config.write_buffer_limit,
            config.slow_reader_timeout, self._session_opened, self._session_closed,
            max_worker_subscriptions=config.max_worker_subscriptions, on_session_closing=self._session_closing,
            auth=self.security.gate, rate_limiter=self.security.rate_limiter,
            compression_threshold=config.compression_threshold,
        )  # fmt: skip
        # Sessions in their closing handshake -> when to abort them if the peer never takes the close.
        self.closing: dict[ClientSession, float] = {}
        self.keepalive = Keepalive(lambda: self.sessions, config.ping_interval, config.ping_timeout)
        self.stopping = False  # refusing new sessions: stopping or draining
        self.drain: Drain | None = None
        self.observer = ServerObserver(self.segments, self.segments[0].workers, _installed_version)
        self._ticks = 0
        self.hosts_api = None  # with --cluster: wsd.server.cluster.api_hosts.HostsApi

    # -- lifecycle --

    async def run(self) -> None:
        self.loop = loop = asyncio.get_running_loop()
        broker_arguments = (
            loop, self.bus_slot, self.segments, self.bus.doorbell, self.bus.senders, self.role,
            self.node.deliver, self.node.deliveries_done, self.config.history_size, self.config.history_ttl,
        )  # fmt: skip
        if self.config.cluster:  # the cross-host bus on Redis (wsd.server.cluster)
            from wsd.server.cluster.broker import cluster_broker

            self.broker = cluster_broker(broker_arguments, self.config, self.node, self.cluster_node_id,
                                         self.cluster_status_dir)  # fmt: skip
        else:
            self.broker = ShmBroker(*broker_arguments)
        self.node.broker = self.broker
        self.node.deadlines = ConnectionDeadlines(loop, self.security.gate)
        loop.add_signal_handler(signal.SIGINT, self._on_stop_signal)
        loop.add_signal_handler(signal.SIGTERM, self._on_drain_signal, False)
        loop.add_signal_handler(signal.SIGUSR1, self._on_drain_signal, True)
        loop.add_signal_handler(signal.SIGUSR2, self._on_take_role_signal)
        memtrace.install_snapshot_signal(loop, self.slot)
        if self.config.cluster:
            # Readiness and the metrics see Redis as this process does.
            self.observer.cluster_state = self.broker.shard_states
            await self.broker.connect()  # at most --cluster-timeout; serves meanwhile either way
        routes = WebSocketRoutes(
            self.slot, self.counters, self._new_session, self._refusing_sessions,
            lambda: not self.accept.accepting and not self.accept.closed, lambda: self.stopping,
            self._server_clients, self.config.echo_path, self.config.max_message_size,
            self.security.gate, self.security.origins, self.observer.readyz, self.address_limiter,
            self.config.compression == "on", self.config.compression_threshold,
        )  # fmt: skip
        server_kwargs = picows_server_kwargs(self.config.max_message_size)
        if self.security.ws_tls is not None:
            server_kwargs["ssl"] = self.security.ws_tls
        self.accept = AcceptGate(loop, self.slot, self.ws_socket, routes, server_kwargs, self.connection_limit)
        await self.accept.start()
        self.server_api = ServerApi(
            self.node, self.observer, self.intercom_directory, self.bus_slot, lambda: self.security.gate.enabled
        )
        self.intercom = IntercomServer(self.intercom_directory, self.bus_slot, self.server_api.intercom_request)
        await self.intercom.start()
        if self.config.cluster:  # the server API reaches the other hosts' workers over Redis too
            from wsd.server.cluster.api_hosts import HostsApi

            self.hosts_api = HostsApi(self.broker.cluster, self.bus_slot, self.server_api.remote)
            self.server_api.other_hosts = self.hosts_api.ask
            self.broker.server_api_status = self.hosts_api.status
            self.hosts_api.start()
        self.api_factory = make_api_protocol_factory(
            ApiPublisher(self.node), health=lambda: not self.stopping, max_body_size=self.broker.max_request_size(),
            idle_timeout=self.config.api_idle_timeout, max_connections=self.api_connection_limit,
            api_key=self.security.api_key,
        )  # fmt: skip
        add_server_api(self.api_factory.router, self.server_api)
        self.api_server = await start_api_server(loop, self.api_socket, self.api_factory, ssl=self.security.api_tls)
        self.stopped = loop.create_future()
        self.broker.start()
        Periodic(loop, STATS_EVERY_S, self._stats_tick, "stats").start()
        Periodic(loop, MAINTENANCE_EVERY_S, self._maintain_connections, "connection maintenance").start()
        self._write_stats()
        role = self.broker.role
        duty = f"sequencing role {role}" if role is not None else "stand-by until its predecessor exits"
        log.info(
            "worker %d serving (pid %d, bus slot %d, %s, up to %d connections)",
            self.slot, os.getpid(), self.bus_slot, duty, self.connection_limit,
        )  # fmt: skip
        await self.stopped

    def _new_session(self, identity: Identity | None) -> ClientSession:
        return ClientSession(self.node, self.config.max_message_size, identity)

    def _refusing_sessions(self) -> bool:
        # A hand-over drain still serves handshakes that reached this process: its successor takes
        # all new connections, and refusing these would fail them. A drain's lame-duck period still
        # takes them too: the front has not seen /healthz fail yet.
        drain = self.drain
        return self.stopping and not (drain is not None and (drain.hand_over or drain.in_lame_duck()))

    def _on_stop_signal(self) -> None:
        """SIGINT: a quick graceful stop, clients closed with 1001; a second one exits at once."""
        if self.stopping and self.drain is None:
            log.warning("worker %d: second stop signal, exiting now", self.slot)
            os._exit(1)
        if self.drain is not None:
            self.drain.finish_now("stop requested")
            return
        self.stopping = True
        log.info("worker %d stopping: closing %d clients with 1001", self.slot, len(self.sessions))
        self.accept.close()
        for session in list(self.sessions):
            session.close(WSCloseCode.GOING_AWAY, "server shutting down")
        self.loop.create_task(self._finish_stop(self.config.stop_timeout))

    def _on_drain_signal(self, hand_over: bool) -> None:
        """SIGTERM: drain (stay reachable, refuse new sessions with 503, close clients with 1012
        spread over the window). SIGUSR1: the same, but stop accepting at once: a new process
        on this slot's socket takes the new connections (rolling reload). Again: finish now."""
        if self.drain is not None:
            self.drain.finish_now("second drain request")
            return
        window = self.own_segment.drain_window_s()
        if window is None:
            window = self.config.drain_window
        self.stopping = True
        if hand_over:
            self.accept.close()
        self.drain = Drain(
            self.loop, self.slot, self.sessions, window, hand_over,
            lambda: self.loop.create_task(self._finish_stop(2.0)),
            lame_duck_s=0.0 if hand_over else self.config.lame_duck,
        )  # fmt: skip
        self._write_stats()

    def _on_take_role_signal(self) -> None:
        role = self.own_segment.role_to_take()
        if role is None or self.broker.role is not None:
            return
        self.broker.take_role(role)
        log.info("worker %d took over sequencing role %d", self.slot, role)

    async def _finish_stop(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        # Leave the members set (other hosts stop expecting this process) while the last sessions
        # close, so that it never delays the exit.
        leaving = None if self.hosts_api is None else self.loop.create_task(self.hosts_api.close())
        while self.sessions and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        self.api_server.close()
        self.intercom.close()
        if leaving is not None:
            await asyncio.wait({leaving}, timeout=0.2)  # one round trip, normally done by now
            leaving.cancel()
        self._write_stats()
        if not self.stopped.done():
            self.stopped.set_result(None)

    # -- sessions: the registry behind accept gating and the drain --

    def _session_opened(self, session: ClientSession) -> None:
        self.sessions.add(session)
        if self.drain is not None:
            self.drain.add(session)
        self.accept.connections_changed(self._descriptors_in_use())

    def _session_closing(self, session: ClientSession) -> None:
        self.closing[session] = time.monotonic() + CLOSE_TIMEOUT_S

    def _session_closed(self, session: ClientSession) -> None:
        self.sessions.discard(session)
        if self.address_limiter is not None:
            self.address_limiter.release(session)
        self.closing.pop(session, None)
        if not self.stopping:
            self.accept.connections_changed(self._descriptors_in_use())

    def _descriptors_in_use(self) -> int:
        """Client sessions and API connections: both take descriptors out of the same budget."""
        return len(self.sessions) + self.api_factory.open_connections

    def _server_clients(self) -> int:
        """Clients still connected to the whole server (a front removes a drained node at 0)."""
        fresh_after = time.monotonic_ns() - 2_000_000_000
        total = 0
        for segment in self.segments:
            stats = segment.read_stats()
            if stats["heartbeat_ns"] > fresh_after and stats["pid"]:
                total += stats["connections"]
        return total

    # -- the stats tick: the block (heartbeat and numbers), the log level, held-back log lines --

    def _maintain_connections(self) -> None:
        self.node.slow_readers.sweep()
        self.keepalive.tick()
        self._abort_stuck_closes()

    def _abort_stuck_closes(self) -> None:
        """A peer that does not take our CLOSE frame (it stopped reading) is aborted CLOSE_TIMEOUT_S
        after the close started, so it cannot hold its buffers and its slot forever."""
        if not self.closing:
            return
        now = time.monotonic()
        for session, deadline in list(self.closing.items()):
            if now >= deadline:
                del self.closing[session]
                if session.raw is not None:
                    session.raw.abort()

    def _stats_tick(self) -> None:
        self._write_stats()
        self._follow_log_level()
        self._ticks += 1
        if self._ticks % 2 == 0:  # about once a second
            flush_suppressed()
        self.observer.observe()

    def _write_stats(self) -> None:
        drain, broker, hub = self.drain, self.broker, self.node.hub
        table_used, table_size = broker.table_fill()
        gauges = {
            "pid": os.getpid(),
            "heartbeat_ns": time.monotonic_ns(),
            "slot": self.slot,
            "role": 0 if broker.role is None else broker.role + 1,
            "accepting": int(self.accept.accepting),
            "draining": int(drain is not None),
            "drain_remaining": len(self.sessions) if drain is not None else 0,
            "max_connections": self.connection_limit,
            "connections": len(self.sessions),
            "subscriptions": self.node.subscriptions,
            "channels": hub.channel_count,
            "channel_table_used": table_used,
            "channel_table_size": table_size,
            "bus_lag_bytes": broker.lag_bytes(),
            "ring_history_ms": int(broker.history_s(time.time_ns()) * 1000),
            "bus_overruns": broker.overruns,
            "bus_lost_bytes": broker.lost_bytes,
            "bus_read_bytes": broker.read_bytes,
            "bus_gaps": broker.gaps,
            "bus_bad_entries": broker.bad_entries,
            "bus_channels_forgotten": broker.channels_forgotten,
        }
        counts = self.counters.counts
        for key, index in _GAUGES.items():
            counts[index] = gauges[key]
        self.own_segment.stats.write(counts)

    def _follow_log_level(self) -> None:
        """`wsd ctl log-level`: the supervisor writes the level into segment 0; follow it."""
        wanted = level_name(self.segments[0].supervisor.get("log_level"))
        if wanted is not None and wanted != current_level():
            previous = set_level(wanted)
            log.info("worker %d: log level %s (was %s)", self.slot, wanted, previous)


class ApiPublisher:
    """The publish API's view of the node: the same publish path, with the API's error type."""

    def __init__(self, node: Node):
        self.node = node

    def publish(self, channel: str, data_json: bytes) -> int | asyncio.Future:
        try:
            outcome = self.node.publish(channel, data_json, source="api")
        except BrokerError as exc:
            raise PublishError(exc.status, str(exc)) from None
        if isinstance(outcome, int):
            return outcome
        answer = asyncio.get_running_loop().create_future()
        outcome.add_done_callback(lambda done: _settle_as_api(done, answer))
        return answer

    def publish_batch(
        self, items: list[tuple[str, bytes]]
    ) -> tuple[list[int], asyncio.Future | None, tuple[int, PublishError] | None] | None:
        """A whole batch in one call (wsd.server.api.endpoints.BatchPublisher), or None when the
        broker publishes item by item."""
        outcome = self.node.publish_batch_api(items)
        if outcome is None:
            return None
        offsets, waiting, failure = outcome
        if failure is not None:
            failure = (failure[0], PublishError(failure[1].status, str(failure[1])))
        if waiting is not None:
            answer = asyncio.get_running_loop().create_future()
            waiting.add_done_callback(lambda done: _settle_as_api(done, answer))
            waiting = answer
        return offsets, waiting, failure


def _settle_as_api(done: asyncio.Future, answer: asyncio.Future) -> None:
    if answer.done():
        return
    if done.cancelled():
        answer.set_exception(PublishError(503, "publish cancelled"))
        return
    exc = done.exception()
    if exc is None:
        answer.set_result(done.result())
    elif isinstance(exc, BrokerError):
        answer.set_exception(PublishError(exc.status, str(exc)))
    else:
        answer.set_exception(exc)


def _installed_version() -> str:
    # Asked on the first /metrics scrape only: importlib.metadata (email, zipfile, csv, ...) and the
    # command line's module (argparse) would cost a plain worker ~2.5 MiB for a string.
    from wsd.server.control.cli import installed_version

    return installed_version()


def _stop_when_the_supervisor_dies(supervisor_pid: int) -> None:
    """A worker must never outlive its supervisor (it would hold the port and serve alone): ask the
    kernel for SIGINT (a quick stop) when the parent dies, and check it is not already gone."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGINT)
    except (OSError, AttributeError):  # pragma: no cover - Linux provides prctl
        pass
    if os.getppid() != supervisor_pid:
        sys.exit("wsd worker: the supervisor is gone; exiting")


def main() -> int:
    memtrace.start_if_asked()  # bench only: WSD_TRACEMALLOC (before anything per connection exists)
    spec = json.loads(os.environ.pop("WSD_WORKER_SPEC"))
    _stop_when_the_supervisor_dies(spec["supervisor_pid"])
    setup_logging(spec["config"]["log_level"], f"worker {spec['slot']}", spec["config"]["log_format"])
    try:
        from setproctitle import setproctitle

        setproctitle(f"wsd: worker {spec['slot']}")
    except ImportError:  # pragma: no cover - setproctitle is a declared dependency
        pass
    try:
        worker = Worker(spec)
    except ConfigError as exc:
        # A key or certificate file went bad since the supervisor checked it (every process reads
        # them anew): say which, once per attempt, rather than a traceback.
        log.error("worker %d cannot start: %s", spec["slot"], exc)
        return 2
    gc.freeze()  # what start-up made (modules, config, the bus) is never garbage: never walk it again
    gc.set_threshold(*GC_THRESHOLDS)
    uvloop.run(worker.run())
    return 0
