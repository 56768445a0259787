"""A worker process: one uvloop loop serving WebSocket (picows) and the publish API on its slot's
SO_REUSEPORT sockets, wired to the cross-worker bus.

Started by the supervisor as `python -P -m wsd.server.worker` with its sockets inherited and a JSON spec
in the WSD_WORKER_SPEC environment variable; it shares nothing with other workers but the bus.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import logging
import os
import random
import signal
import socket
import sys
import time
from typing import Any

import picows
import uvloop
from picows import WSCloseCode, WSUpgradeRequest, WSUpgradeResponse, WSUpgradeResponseWithListener

from wsd.ext.hashing import channel_hash
from wsd.server.bus.doorbell import Doorbells
from wsd.server.bus.engine import BusEngine, BusError, MessageTooLarge
from wsd.server.bus.segment import Segment
from wsd.server.bus.status import HorizonWatch
from wsd.server.bus.tick import Periodic
from wsd.server.client_session import ClientSession
from wsd.server.config import Config
from wsd.server.http_api import PublishError, make_api_protocol_factory, start_api_server
from wsd.server.logs import setup_logging
from wsd.server.pages import static_response
from wsd.server.protocol import PUBLISH_FAILED, Publish, err_reply, ok_reply
from wsd.server.subscribers import SubscriberIndex
from wsd.server.ws_conformance import EchoListener, picows_server_kwargs

log = logging.getLogger("wsd.worker")

PUBLISH_TIMEOUT_S = 5.0
TICK_S = 0.05  # bus poll fallback: covers a doorbell lost while a writer was restarting
STATS_EVERY_S = 0.5
SLOW_CLOSE_GRACE_S = 5.0  # a slow reader closed with 1013 gets this long to take the close frame
RESUME_ACCEPTING_AT = 0.95  # of the connection limit
PR_SET_PDEATHSIG = 1


class Worker:
    def __init__(self, spec: dict[str, Any]):
        self.slot: int = spec["slot"]  # the socket slot: which listening sockets
        self.bus_slot: int = spec["bus_slot"]  # where this process writes on the bus
        self.config = Config(**spec["config"])
        self.connection_limit: int = spec["connection_limit"]
        self.run_id: str = spec["run_id"]
        self.ws_socket = socket.socket(fileno=spec["ws_fd"])
        self.api_socket = socket.socket(fileno=spec["api_fd"])
        self.bell_socket = socket.socket(fileno=spec["bell_fd"])
        self.segments = [Segment.attach(path) for path in spec["segments"]]
        self.loop: asyncio.AbstractEventLoop | None = None
        self.sessions: set[ClientSession] = set()
        self.subscribers = SubscriberIndex(self.config.write_buffer_limit, self._cut_off_slow_reader)
        self.own_segment = self.segments[self.bus_slot]
        self.doorbells = Doorbells(self.run_id, self.bell_socket, self.segments)
        self.bus = BusEngine(
            self.bus_slot,
            self.segments,
            self._deliver,
            self._acknowledge,
            self.doorbells.ring,
            role=spec["role"],
            poll_done=self.subscribers.flush,
        )
        # token -> (future for the API, or (session, request id) for a client), timeout handle
        self.pending: dict[int, tuple[Any, asyncio.TimerHandle]] = {}
        self.ws_server: asyncio.Server | None = None
        self.accepting = False
        self.stopping = False  # refusing new sessions: stopping or draining
        self.drain: Drain | None = None
        self.msgs_in = 0
        self.slow_disconnects = 0
        self.handshakes_refused = 0
        self._poll_scheduled = False
        self.horizon_watch = HorizonWatch(self.own_segment.ring, self.config.history_ttl, f"worker {self.slot}")

    # -- lifecycle --

    async def run(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.loop.add_reader(self.bell_socket.fileno(), self._on_doorbell)
        self.loop.add_signal_handler(signal.SIGINT, self._on_stop_signal)
        self.loop.add_signal_handler(signal.SIGTERM, self._on_drain_signal, False)
        self.loop.add_signal_handler(signal.SIGUSR1, self._on_drain_signal, True)
        self.loop.add_signal_handler(signal.SIGUSR2, self._on_take_role_signal)
        await self._start_accepting()
        api_factory = make_api_protocol_factory(
            self, health=lambda: not self.stopping, max_body_size=self.bus.max_request_size()
        )
        self.api_server = await start_api_server(self.loop, self.api_socket, api_factory)
        self.stopped = self.loop.create_future()
        Periodic(self.loop, TICK_S, self._tick, "bus tick").start()
        self._write_stats()
        role = self.bus.role
        duty = f"sequencing role {role}" if role is not None else "stand-by until its predecessor exits"
        log.info(
            "worker %d serving (pid %d, bus slot %d, %s, up to %d connections)",
            self.slot, os.getpid(), self.bus_slot, duty, self.connection_limit,
        )  # fmt: skip
        self.bus.poll()
        await self.stopped

    async def _start_accepting(self) -> None:
        # Serve on a duplicate of the slot's socket: closing the asyncio server to stop accepting
        # closes only the duplicate, so the slot keeps its place in the kernel's reuseport group.
        listener = socket.socket(fileno=os.dup(self.ws_socket.fileno()))
        self.ws_server = await picows.ws_create_server(
            self._route, sock=listener, **picows_server_kwargs(self.config.max_message_size)
        )
        self.accepting = True

    def _stop_accepting(self, reason: str) -> None:
        if self.ws_server is not None:
            self.ws_server.close()
            self.ws_server = None
        self.accepting = False
        log.warning("worker %d stopped accepting: %s", self.slot, reason)

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
        if self.ws_server is not None:
            self.ws_server.close()
            self.ws_server = None
        self.accepting = False
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
        window = self.own_segment.drain_window_s() or self.config.drain_window
        self.stopping = True
        if hand_over and self.ws_server is not None:
            self.ws_server.close()
            self.ws_server = None
            self.accepting = False
        self.drain = Drain(self, window, hand_over)
        self._write_stats()

    def _on_take_role_signal(self) -> None:
        role = self.own_segment.role_to_take()
        if role is None or self.bus.role is not None:
            return
        self.bus.take_role(role)
        log.info("worker %d took over sequencing role %d", self.slot, role)

    async def _finish_stop(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.sessions and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        self.api_server.close()
        self._write_stats()
        if not self.stopped.done():
            self.stopped.set_result(None)

    # -- routing of HTTP requests on the WebSocket port --

    def _route(self, request: WSUpgradeRequest) -> Any:
        path = request.path.split(b"?", 1)[0]
        if path == b"/ws":
            # A hand-over drain still serves handshakes that reached this process: its successor
            # takes all new connections, and refusing these would fail them.
            if self.stopping and not (self.drain is not None and self.drain.hand_over):
                self.handshakes_refused += 1
                return WSUpgradeResponseWithListener(
                    WSUpgradeResponse.create_error_response(
                        503, b"draining: reconnect to another server\n", {"Retry-After": "1"}
                    ),
                    None,
                )
            # The worker's slot in a response header: tests and operators see where a client landed.
            return WSUpgradeResponseWithListener(
                WSUpgradeResponse.create_101_response({"X-Wsd-Worker": str(self.slot)}),
                ClientSession(self, self.config.max_message_size),
            )
        if path == b"/healthz":
            if self.stopping:
                return WSUpgradeResponseWithListener(
                    WSUpgradeResponse.create_error_response(
                        503, b"draining\n", {"Retry-After": "1", "X-Wsd-Clients": str(self._server_connections())}
                    ),
                    None,
                )
            return WSUpgradeResponseWithListener(WSUpgradeResponse.create_ok_response(b"ok"), None)
        if self.config.echo_path is not None and path == self.config.echo_path.encode():
            return EchoListener(self.config.max_message_size)
        response = static_response(path, self.slot)
        if response is not None:
            return WSUpgradeResponseWithListener(response, None)
        return None  # picows answers 404

    def _server_connections(self) -> int:
        """Clients still connected to the whole server (a front removes a drained node at 0)."""
        fresh_after = time.time_ns() - 2_000_000_000
        total = 0
        for segment in self.segments:
            stats = segment.read_stats()
            if stats["heartbeat_ns"] > fresh_after and stats["pid"]:
                total += stats["connections"]
        return total

    # -- sessions --

    def session_opened(self, session: ClientSession) -> None:
        self.sessions.add(session)
        if self.drain is not None:
            self.drain.add(session)
        if self.accepting and len(self.sessions) >= self.connection_limit:
            self._stop_accepting(f"{len(self.sessions)} connections reached the limit {self.connection_limit}")

    def session_closed(self, session: ClientSession) -> None:
        self.sessions.discard(session)
        session.drop_subscriptions()
        if (
            not self.accepting
            and not self.stopping
            and len(self.sessions) < self.connection_limit * RESUME_ACCEPTING_AT
        ):
            self.accepting = True  # set now so only one restart is scheduled
            self.loop.create_task(self._resume_accepting())

    async def _resume_accepting(self) -> None:
        await self._start_accepting()
        log.info("worker %d accepting again (%d connections)", self.slot, len(self.sessions))

    def _cut_off_slow_reader(self, session: ClientSession) -> None:
        if session.raw is None or session.raw.is_closing():
            return
        self.slow_disconnects += 1
        log.info(
            "worker %d: slow reader cut off (write buffer over %d bytes)", self.slot, self.config.write_buffer_limit
        )
        session.drop_subscriptions()
        session.close(WSCloseCode.TRY_AGAIN_LATER, "too slow: write buffer limit exceeded")
        raw = session.raw
        self.loop.call_later(SLOW_CLOSE_GRACE_S, lambda: raw.is_closing() and raw.abort())

    # -- subscriptions, used by ClientSession --

    def subscribe(self, session: ClientSession, channel: str) -> tuple[int, int]:
        chan_hash = channel_hash(channel.encode())
        if chan_hash in self.subscribers.by_channel:
            self.subscribers.add(chan_hash, session.raw, session)
            return self.channel_position(channel)
        # First local subscriber: start tracking first; the catch-up inside may deliver to others,
        # and this session must only get what follows the position it is told.
        epoch, offset = self.bus.subscribe(channel)
        self.subscribers.add(chan_hash, session.raw, session)
        return epoch, offset

    def unsubscribe(self, session: ClientSession, channel: str) -> None:
        chan_hash = channel_hash(channel.encode())
        if self.subscribers.remove(chan_hash, session.raw):
            self.bus.unsubscribe(channel)

    def history(self, channel: str, epoch: int, after: int, upto: int) -> list[tuple[int, bytes]] | None:
        not_before_ns = time.time_ns() - int(self.config.history_ttl * 1e9)
        return self.bus.history(channel, epoch, after, upto, self.config.history_size, not_before_ns)

    def channel_position(self, channel: str) -> tuple[int, int]:
        tracked = self.bus.tracked.get(channel_hash(channel.encode()))
        return (tracked.epoch, tracked.offset) if tracked else (0, 0)

    # -- publishing --

    def publish_for_client(self, session: ClientSession, request: Publish) -> None:
        try:
            offset, token = self.bus.publish(request.channel, request.data_json)
        except BusError as exc:
            session.send_text(err_reply(request.id, PUBLISH_FAILED, str(exc)))
            return
        self._schedule_poll()
        if token == 0:
            session.send_text(ok_reply(request.id, off=offset))
            return
        self._await_ack(token, (session, request.id))

    async def publish(self, channel: str, data_json: bytes) -> int:
        """The publish API's entry point (wsd.server.http_api calls it)."""
        outcome = self.start_publish(channel, data_json)
        return outcome if isinstance(outcome, int) else await outcome

    def start_publish(self, channel: str, data_json: bytes) -> int | asyncio.Future:
        """Put a publish on the bus now: its offset, or a future of it when another worker sequences
        the channel. The publish API starts a whole batch this way before awaiting any of it."""
        self.msgs_in += 1
        try:
            offset, token = self.bus.publish(channel, data_json)
        except MessageTooLarge as exc:
            raise PublishError(413, str(exc)) from None
        except BusError as exc:
            raise PublishError(503, str(exc)) from None
        self._schedule_poll()
        if token == 0:
            return offset
        future = self.loop.create_future()
        self._await_ack(token, future)
        return future

    def _await_ack(self, token: int, waiter: Any) -> None:
        timer = self.loop.call_later(PUBLISH_TIMEOUT_S, self._publish_timed_out, token)
        self.pending[token] = (waiter, timer)

    def _publish_timed_out(self, token: int) -> None:
        entry = self.pending.pop(token, None)
        self.bus.forget_token(token)
        if entry is None:
            return
        message = f"timed out after {PUBLISH_TIMEOUT_S:g}s waiting for the channel's owner worker"
        self._settle(entry[0], PublishError(503, message))

    def _acknowledge(self, token: int, offset: int) -> None:
        entry = self.pending.pop(token, None)
        if entry is None:
            return
        entry[1].cancel()
        self._settle(entry[0], offset)

    def _settle(self, waiter: Any, result: Any) -> None:
        if isinstance(waiter, asyncio.Future):
            if waiter.done():
                return
            if isinstance(result, Exception):
                waiter.set_exception(result)
            else:
                waiter.set_result(result)
            return
        session, request_id = waiter
        if isinstance(result, Exception):
            session.send_text(err_reply(request_id, PUBLISH_FAILED, str(result)))
        else:
            session.send_text(ok_reply(request_id, off=result))

    # -- the bus --

    def _deliver(self, chan_hash: int, channel: bytes, epoch: int, offset: int, data: bytes, ts_ns: int) -> None:
        self.subscribers.fan_out(chan_hash, channel, offset, data)

    def _schedule_poll(self) -> None:
        # Coalesce: many publishes in one loop iteration are read back in one pass.
        if not self._poll_scheduled:
            self._poll_scheduled = True
            self.loop.call_soon(self._poll_now)

    def _poll_now(self) -> None:
        self._poll_scheduled = False
        self.bus.poll()

    def _on_doorbell(self) -> None:
        self.doorbells.acknowledge(self.bus_slot)
        self.bus.poll()

    def _tick(self) -> None:
        self.doorbells.acknowledge(self.bus_slot)
        self.bus.poll()
        now = time.monotonic()
        if now - getattr(self, "_stats_at", 0.0) >= STATS_EVERY_S:
            self._stats_at = now
            self._write_stats()
            self.horizon_watch.check(time.time_ns())

    def _write_stats(self) -> None:
        drain = self.drain
        self.own_segment.write_stats(
            {
                "pid": os.getpid(),
                "draining": int(drain is not None),
                "drain_remaining": len(self.sessions) if drain is not None else 0,
                "heartbeat_ns": time.time_ns(),
                "connections": len(self.sessions),
                "max_connections": self.connection_limit,
                "accepting": int(self.accepting),
                "channels": self.subscribers.channel_count,
                "msgs_in": self.msgs_in,
                "msgs_out": self.subscribers.deliveries,
                "overruns": self.bus.overruns,
                "lost_bytes": self.bus.lost_bytes,
                "gaps": self.bus.gaps,
                "slow_disconnects": self.slow_disconnects,
                "bus_lag": self.bus.lag_bytes(),
                "handshakes_refused": self.handshakes_refused,
                "bad_entries": self.bus.bad_entries,
            }
        )


class Drain:
    """Close a worker's clients with 1012 spread evenly over a window, then stop the worker.

    Never all at once: a reconnect storm is what takes the next server down. Each tick closes as
    many sessions as the elapsed share of the window says; clients that still arrive (in-flight
    handshakes during a hand-over) join the queue. When the window runs out, or on a second
    request, whoever is left gets 1001 and the worker stops.
    """

    TICK_S = 0.02

    def __init__(self, worker: Worker, window_s: float, hand_over: bool):
        self.worker = worker
        self.window_s = max(window_s, 0.0)
        self.hand_over = hand_over
        self.started = time.monotonic()
        self.queue = list(worker.sessions)
        random.shuffle(self.queue)
        self.next_index = 0
        self._last_logged_tenth = 0
        log.info(
            "worker %d draining %d clients over %gs (%s)", worker.slot, len(self.queue), self.window_s,
            "hand-over to a new process" if hand_over else "/healthz and new handshakes answer 503",
        )  # fmt: skip
        self._timer = worker.loop.call_soon(self._tick)

    def add(self, session: ClientSession) -> None:
        self.queue.append(session)

    def _tick(self) -> None:
        elapsed = time.monotonic() - self.started
        if elapsed >= self.window_s:
            self.finish_now("drain window over")
            return
        # Spread over the first 90% of the window: a loop delayed by load still closes everyone
        # with 1012 before the window runs out (then the rest would get 1001).
        due = min(len(self.queue), int(len(self.queue) * elapsed / (0.9 * self.window_s)) + 1)
        while self.next_index < due:
            session = self.queue[self.next_index]
            self.next_index += 1
            session.close(WSCloseCode.SERVICE_RESTART, "server restarting: reconnect")
        tenth = int(10 * elapsed / self.window_s)
        if tenth > self._last_logged_tenth:
            self._last_logged_tenth = tenth
            log.info(
                "worker %d drain %d%%: %d clients left", self.worker.slot, 10 * tenth, len(self.worker.sessions)
            )
        # Keep answering 503 until the window ends, even with no client left: the front needs
        # time to see /healthz fail.
        self._timer = self.worker.loop.call_later(self.TICK_S, self._tick)

    def finish_now(self, reason: str) -> None:
        self._timer.cancel()
        left = self.queue[self.next_index :]
        self.next_index = len(self.queue)
        if left:
            log.info("worker %d drain ends (%s): closing %d clients with 1001", self.worker.slot, reason, len(left))
        else:
            log.info("worker %d drain complete (%s): every client was moved with 1012", self.worker.slot, reason)
        for session in left:
            session.close(WSCloseCode.GOING_AWAY, "server stopping")
        self.worker.loop.create_task(self.worker._finish_stop(2.0))


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
    spec = json.loads(os.environ.pop("WSD_WORKER_SPEC"))
    _stop_when_the_supervisor_dies(spec["supervisor_pid"])
    setup_logging(spec["config"]["log_level"], f"worker {spec['slot']}")
    try:
        from setproctitle import setproctitle

        setproctitle(f"wsd: worker {spec['slot']}")
    except ImportError:  # pragma: no cover - setproctitle is a declared dependency
        pass
    worker = Worker(spec)
    uvloop.run(worker.run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
