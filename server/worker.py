"""A worker process: one uvloop loop serving WebSocket (picows) and the publish API on its slot's
SO_REUSEPORT sockets, wired to the cross-worker bus.

Started by the supervisor as `python -m server.worker` with its sockets inherited and a JSON spec
in the WSD_WORKER_SPEC environment variable; it shares nothing with other workers but the bus.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import sys
import time
from typing import Any

import picows
import uvloop
from picows import WSCloseCode, WSUpgradeRequest, WSUpgradeResponse, WSUpgradeResponseWithListener

from ext.hashing import channel_hash
from server.bus.doorbell import Doorbells
from server.bus.engine import BusEngine, BusError
from server.bus.segment import Segment
from server.client_session import ClientSession
from server.config import Config
from server.http_api import PublishError, make_api_protocol_factory, start_api_server
from server.logs import setup_logging
from server.pages import static_response
from server.protocol import PUBLISH_FAILED, Publish, err_reply, ok_reply
from server.subscribers import SubscriberIndex
from server.ws_conformance import EchoListener, picows_server_kwargs

log = logging.getLogger("wsd.worker")

PUBLISH_TIMEOUT_S = 5.0
TICK_S = 0.05  # bus poll fallback: covers a doorbell lost while a writer was restarting
STATS_EVERY_S = 0.5
SLOW_CLOSE_GRACE_S = 5.0  # a slow reader closed with 1013 gets this long to take the close frame
RESUME_ACCEPTING_AT = 0.95  # of the connection limit


class Worker:
    def __init__(self, spec: dict[str, Any]):
        self.slot: int = spec["slot"]
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
        self.doorbells = Doorbells(self.run_id, self.bell_socket, self.segments)
        self.bus = BusEngine(self.slot, self.segments, self._deliver, self._acknowledge, self.doorbells.ring)
        # token -> (future for the API, or (session, request id) for a client), timeout handle
        self.pending: dict[int, tuple[Any, asyncio.TimerHandle]] = {}
        self.ws_server: asyncio.Server | None = None
        self.accepting = False
        self.stopping = False
        self.msgs_in = 0
        self.slow_disconnects = 0
        self.handshakes_refused = 0
        self._poll_scheduled = False

    # -- lifecycle --

    async def run(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.loop.add_reader(self.bell_socket.fileno(), self._on_doorbell)
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self._on_stop_signal)
        await self._start_accepting()
        api_factory = make_api_protocol_factory(self, health=lambda: not self.stopping)
        self.api_server = await start_api_server(self.loop, self.api_socket, api_factory)
        self.stopped = self.loop.create_future()
        self.loop.call_later(TICK_S, self._tick)
        self._write_stats()
        log.info("worker %d serving (pid %d, up to %d connections)", self.slot, os.getpid(), self.connection_limit)
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
        if self.stopping:
            log.warning("worker %d: second stop signal, exiting now", self.slot)
            os._exit(1)
        self.stopping = True
        log.info("worker %d stopping: closing %d clients with 1001", self.slot, len(self.sessions))
        if self.ws_server is not None:
            self.ws_server.close()
            self.ws_server = None
        self.accepting = False
        for session in list(self.sessions):
            session.close(WSCloseCode.GOING_AWAY, "server shutting down")
        self.loop.create_task(self._finish_stop())

    async def _finish_stop(self) -> None:
        deadline = time.monotonic() + self.config.stop_timeout
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
            if self.stopping:
                self.handshakes_refused += 1
                return WSUpgradeResponseWithListener(
                    WSUpgradeResponse.create_error_response(503, b"shutting down\n", {"Retry-After": "1"}), None
                )
            # The worker's slot in a response header: tests and operators see where a client landed.
            return WSUpgradeResponseWithListener(
                WSUpgradeResponse.create_101_response({"X-Wsd-Worker": str(self.slot)}),
                ClientSession(self, self.config.max_message_size),
            )
        if path == b"/healthz":
            if self.stopping:
                return WSUpgradeResponseWithListener(
                    WSUpgradeResponse.create_error_response(503, b"stopping\n"), None
                )
            return WSUpgradeResponseWithListener(WSUpgradeResponse.create_ok_response(b"ok"), None)
        if self.config.echo_path is not None and path == self.config.echo_path.encode():
            return EchoListener(self.config.max_message_size)
        response = static_response(path, self.slot)
        if response is not None:
            return WSUpgradeResponseWithListener(response, None)
        return None  # picows answers 404

    # -- sessions --

    def session_opened(self, session: ClientSession) -> None:
        self.sessions.add(session)
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
        first = self.subscribers.add(chan_hash, session.raw, session)
        if not first:
            epoch, offset = self.channel_position(channel)
            return epoch, offset
        # First local subscriber: start tracking; the catch-up inside may deliver to others.
        self.subscribers.remove(chan_hash, session.raw)
        epoch, offset = self.bus.subscribe(channel)
        self.subscribers.add(chan_hash, session.raw, session)
        return epoch, offset

    def unsubscribe(self, session: ClientSession, channel: str) -> None:
        chan_hash = channel_hash(channel.encode())
        if self.subscribers.remove(chan_hash, session.raw):
            self.bus.unsubscribe(channel)

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
        """The publish API's entry point (server.http_api calls it)."""
        self.msgs_in += 1
        try:
            offset, token = self.bus.publish(channel, data_json)
        except BusError as exc:
            raise PublishError(503, str(exc)) from None
        self._schedule_poll()
        if token == 0:
            return offset
        future = self.loop.create_future()
        self._await_ack(token, future)
        return await future

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
        self.doorbells.acknowledge(self.slot)
        self.bus.poll()

    def _tick(self) -> None:
        self.doorbells.acknowledge(self.slot)
        self.bus.poll()
        now = time.monotonic()
        if now - getattr(self, "_stats_at", 0.0) >= STATS_EVERY_S:
            self._stats_at = now
            self._write_stats()
        self.loop.call_later(TICK_S, self._tick)

    def _write_stats(self) -> None:
        self.segments[self.slot].write_stats(
            {
                "pid": os.getpid(),
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
            }
        )


def main() -> int:
    spec = json.loads(os.environ.pop("WSD_WORKER_SPEC"))
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
