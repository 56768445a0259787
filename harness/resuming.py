"""The load generator's resuming clients (harness.loadgen with a `ResumePlan`): each reconnects when
its connection ends (a killed worker, a drain), with backoff and full jitter, and resubscribes every
channel with `since`, by the rules of harness.resume, as wsd.js does. Each counts what it saw: gaps,
duplicates, resumes, reconnects, the workers it was on.

Every client of one load-generator process also writes what it was delivered into the process's
`Ledger` (channel -> offset -> the publisher's `seq` in the data), so the coordinator can check, from a
few thousand entries instead of millions of deliveries, that an offset always carries the same message,
that no message got two offsets, and that the offsets the publisher was told are the ones delivered.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

import orjson
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from harness.resume import NOT_RECOVERED, RECONNECT_CODES, RESUMED, ChannelPosition

STARTED = time.monotonic()  # event times in a problem report are seconds since the process started

# Recent events each client keeps, for the report of a client that saw something wrong.
RECENT_EVENTS = 40

# Reconnect backoff: full jitter over base * 2**attempt, capped (wsd.js: 0.1 s .. 2 s here, so a
# resumed client is back within a few seconds and the test stays short).
BACKOFF_BASE_S = 0.1
BACKOFF_CAP_S = 2.0
HANDSHAKE_TIMEOUT_S = 10.0
READ_BUFFER_INIT_SIZE = 2048


@dataclass(frozen=True)
class ResumePlan:
    """Resuming mode: connection i subscribes to `channels_per_client` of `channels`, starting at
    channels[i % len(channels)]."""

    channels: list[str]
    channels_per_client: int = 1

    def channels_of(self, index: int) -> list[str]:
        count = len(self.channels)
        return [self.channels[(index + k) % count] for k in range(min(self.channels_per_client, count))]


class Ledger:
    """What the clients of one process were delivered: channel -> offset -> seq, and any offset
    delivered with two different messages."""

    def __init__(self) -> None:
        self.seqs: dict[str, dict[int, Any]] = {}
        self.conflicts: list[tuple[str, int, Any, Any]] = []

    def record(self, channel: str, offset: int, seq: Any) -> None:
        seen = self.seqs.setdefault(channel, {})
        previous = seen.setdefault(offset, seq)
        if previous != seq and len(self.conflicts) < 100:
            self.conflicts.append((channel, offset, previous, seq))

    def export(self) -> dict[str, Any]:
        return {
            "seqs": {channel: sorted(offsets.items()) for channel, offsets in self.seqs.items()},
            "conflicts": self.conflicts,
        }


class ResumingSubscriber:
    """One resuming client: its channels' positions and its reconnect loop."""

    def __init__(self, index: int, url: str, source: str, channels: list[str], ledger: Ledger) -> None:
        self.index = index
        self.url = url
        self.source = source
        self.ledger = ledger
        self.names = channels
        self.positions = {name: ChannelPosition() for name in channels}
        self.acked: set[str] = set()  # channels whose `sub` was answered on the current connection
        self.ever_ready = asyncio.Event()  # every channel subscribed once
        self.connects = 0
        self.failed_connects: Counter[str] = Counter()
        self.close_codes: list[int] = []
        self.resumes = 0
        self.not_recovered = 0
        self.errors: list[str] = []
        self.workers: list[str] = []  # X-Wsd-Worker of each connection, in order
        # (what, channel index, offset, ...) of the last frames and connections, for a problem report.
        self.recent: deque[tuple] = deque(maxlen=RECENT_EVENTS)
        self.stopping = False
        self.transport: WSTransport | None = None
        self.task: asyncio.Task | None = None

    def event(self, *what: object) -> None:
        self.recent.append((round(time.monotonic() - STARTED, 2), *what))

    @property
    def reconnects(self) -> int:
        return max(0, self.connects - 1)

    def start(self, first_connect: asyncio.Semaphore) -> None:
        self.task = asyncio.get_running_loop().create_task(self.run(first_connect))

    async def run(self, first_connect: asyncio.Semaphore) -> None:
        attempt = 0
        while not self.stopping:
            listener = None
            self.event("connecting")
            try:
                if self.connects == 0:
                    async with first_connect:  # the first ramp is throttled; reconnects are spread by jitter
                        transport, listener = await self._connect()
                else:
                    transport, listener = await self._connect()
            except Exception as exc:  # refused, reset, 503 in the handshake, timeout: all mean "try again"
                self.failed_connects[f"{type(exc).__name__}: {exc}"[:100]] += 1
                self.event("connect failed", f"{type(exc).__name__}: {exc}"[:80])
            else:
                if listener is None:  # picows returns without a listener when the handshake was cut short
                    self.failed_connects["handshake cut short (no WebSocket)"] += 1
                    self.event("connect failed", "handshake cut short")
                    if transport is not None and not transport.is_disconnected:
                        transport.disconnect()
            if listener is not None:
                self.connects += 1
                self.transport = transport
                self.workers.append(transport.response.headers.get("X-Wsd-Worker", "?"))
                self.event("connect", self.workers[-1])
                self.acked.clear()
                for request_id, name in enumerate(self.names, 1):
                    request = self.positions[name].subscribe_request(name, request_id)
                    transport.send(WSMsgType.TEXT, orjson.dumps(request))
                code = await listener.closed
                self.transport = None
                self.event("closed", int(code))
                self.close_codes.append(code)
                if code not in RECONNECT_CODES:
                    self.errors.append(f"closed with {code}: not a code to reconnect on")
                    return
                attempt = 0 if len(self.acked) == len(self.names) else attempt
            if self.stopping:
                return
            attempt += 1
            await asyncio.sleep(random.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**attempt)))

    async def _connect(self) -> tuple[WSTransport, ResumingListener]:
        # uvloop makes the socket (local_addr), not we: a socket handed to create_connection(sock=)
        # is not detached when the connect fails, and its __del__ later closes whatever connection
        # the kernel gave its number to, which then fails every new connect with "File descriptor N
        # is used by transport" (MagicStack/uvloop#738; seen in `make chaos` as clients that never
        # got back).
        return await ws_connect(
            lambda: ResumingListener(self),
            self.url,
            local_addr=(self.source, 0),
            read_buffer_init_size=READ_BUFFER_INIT_SIZE,
            use_aiofastnet=False,
            websocket_handshake_timeout=HANDSHAKE_TIMEOUT_S,
        )

    def stop(self) -> None:
        self.stopping = True
        if self.transport is not None and not self.transport.is_disconnected:
            self.transport.disconnect()
        if self.task is not None and not self.task.done():
            self.task.cancel()

    # What the connection delivers -----------------------------------------------------------------

    def on_text(self, payload: bytes) -> None:
        message = orjson.loads(payload)
        op = message.get("op")
        if op == "msg":
            channel = message["ch"]
            position = self.positions.get(channel)
            if position is None:
                self.errors.append(f"delivery on a channel not subscribed: {channel!r}")
                return
            self.event("msg", channel[-3:], message["off"])
            if position.delivered(message["off"]):
                data = message["data"]
                self.ledger.record(channel, message["off"], data.get("seq") if isinstance(data, dict) else data)
        elif op == "ok" and isinstance(message.get("id"), int) and 1 <= message["id"] <= len(self.names):
            name = self.names[message["id"] - 1]
            self.event("ok", name[-3:], message.get("off"), message.get("recovered"), message.get("worker"))
            kind = self.positions[name].subscribed(message)
            self.resumes += kind == RESUMED
            self.not_recovered += kind == NOT_RECOVERED
            self.acked.add(name)
            if len(self.acked) == len(self.names):
                self.ever_ready.set()
        elif len(self.errors) < 20:
            self.errors.append(str(message)[:200])

    def caught_up(self, final_offsets: dict[str, int]) -> bool:
        return all(self.positions[name].offset == final_offsets.get(name) for name in self.names)

    def summary(self, final_offsets: dict[str, int]) -> dict[str, Any]:
        gaps = [(name, gap) for name in self.names for gap in self.positions[name].gaps]
        return {
            "index": self.index,
            "connects": self.connects,
            "resumes": self.resumes,
            "not_recovered": self.not_recovered,
            "gaps": gaps[:5],
            "gap_count": len(gaps),
            "duplicates": sum(p.duplicates for p in self.positions.values()),
            "behind": {
                name: (self.positions[name].offset, final_offsets.get(name))
                for name in self.names
                if self.positions[name].offset != final_offsets.get(name)
            },
            "errors": self.errors[:3],
            "workers": self.workers,
            "close_codes": self.close_codes,
            "failed_connects": sum(self.failed_connects.values()),
            "recent": list(self.recent),
        }


class ResumingListener(WSListener):
    """One connection of a resuming client; `closed` resolves to the close code (1006 without one)."""

    def __init__(self, subscriber: ResumingSubscriber) -> None:
        super().__init__()
        self.subscriber = subscriber
        self.closed: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.close_code = 1006

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if not self.closed.done():
            self.closed.set_result(self.close_code)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.TEXT:
            self.subscriber.on_text(frame.get_payload_as_bytes())
        elif frame.msg_type == WSMsgType.CLOSE:
            self.close_code = frame.get_close_code()
            transport.send_close(frame.get_close_code())
            transport.disconnect()
