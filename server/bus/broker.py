"""The shared-memory bus of one host as a Broker (wsd.server.node.broker): the BusEngine of this
process wired to its event loop.

It owns what the engine leaves to its caller: when to read the rings (a doorbell, a publish of our
own, a periodic tick that covers a doorbell lost while a writer restarted), the publishes waiting
for another worker to sequence them (a future each, failed after PUBLISH_TIMEOUT_S), and the watch
on its ring's history horizon.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable

from wsd.server.bus.doorbell import Doorbells
from wsd.server.bus.engine import BatchPublishError, BusEngine, BusError, MessageTooLarge
from wsd.server.bus.segment import Segment
from wsd.server.bus.status import HorizonWatch, ring_horizon_s
from wsd.server.bus.tick import Periodic
from wsd.server.node.broker import BrokerError, DeliverCallback, Pending, StreamPosition

log = logging.getLogger("wsd.bus")

PUBLISH_TIMEOUT_S = 5.0
TICK_S = 0.05  # bus poll fallback: covers a doorbell lost while a writer was restarting
HORIZON_CHECK_S = 0.5


class BatchWait:
    """The items of one publish_batch that another worker sequences: their offsets come in as
    acknowledgements; the future resolves to the batch's offsets once the last one has."""

    __slots__ = ("future", "offsets", "remaining", "timer")

    def __init__(self, future: asyncio.Future, offsets: list[int], remaining: int):
        self.future = future
        self.offsets = offsets
        self.remaining = remaining
        self.timer: asyncio.TimerHandle | None = None

    def acknowledge(self, index: int, offset: int) -> None:
        self.offsets[index] = offset
        self.remaining -= 1
        if self.remaining == 0:
            if self.timer is not None:
                self.timer.cancel()
            if not self.future.done():
                self.future.set_result(self.offsets)


class ShmBroker:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        bus_slot: int,
        segments: list[Segment],
        doorbell_socket: socket.socket,
        doorbell_senders: list[socket.socket],
        role: int | None,
        deliver: DeliverCallback,
        deliveries_done: Callable[[], None],
        history_size: int,
        history_ttl_s: float,
    ):
        self.loop = loop
        self.bus_slot = bus_slot
        self.segments = segments
        self.own_segment = segments[bus_slot]
        self.history_size = history_size
        self.history_ttl_s = history_ttl_s
        self.doorbell_socket = doorbell_socket
        self.doorbells = Doorbells(doorbell_socket, doorbell_senders, segments)
        # token -> (future of the offset, its timeout)
        self.pending: dict[int, tuple[asyncio.Future, asyncio.TimerHandle]] = {}
        # token -> (the batch waiting for it, its index in the batch): publish_batch's requests
        self.batch_pending: dict[int, tuple[BatchWait, int]] = {}
        self.engine = BusEngine(
            bus_slot, segments, deliver, self._acknowledge, self.doorbells.ring, role=role, poll_done=deliveries_done
        )
        self._poll_scheduled = False
        self.horizon_watch = HorizonWatch(self.own_segment.ring, history_ttl_s, f"bus slot {bus_slot}")

    def start(self) -> None:
        self.loop.add_reader(self.doorbell_socket.fileno(), self._on_doorbell)
        Periodic(self.loop, TICK_S, self._tick, "bus tick").start()
        Periodic(self.loop, HORIZON_CHECK_S, lambda: self.horizon_watch.check(time.time_ns()), "horizon check").start()
        self.engine.poll()

    def max_request_size(self) -> int:
        """The largest publish API request body: one ring entry (see BusEngine.max_request_size)."""
        return self.engine.max_request_size()

    @property
    def role(self) -> int | None:
        return self.engine.role

    def take_role(self, role: int) -> None:
        """Become the sequencer of `role` (its last holder exited)."""
        self.engine.take_role(role)

    # -- Broker --

    def unavailable(self, channel: str) -> None:
        return None  # the host's own bus is always there

    def publish(self, channel: str, data_json: bytes, sender: bytes = b"") -> Pending[int]:
        try:
            offset, token = self.engine.publish(channel, data_json, sender)
        except MessageTooLarge as exc:
            raise BrokerError(str(exc), status=413) from None
        except BusError as exc:
            raise BrokerError(str(exc)) from None
        self._schedule_poll()
        if token == 0:
            return offset
        future = self.loop.create_future()
        timer = self.loop.call_later(PUBLISH_TIMEOUT_S, self._publish_timed_out, token)
        self.pending[token] = (future, timer)
        return future

    def publish_batch(
        self, items: list[tuple[str, bytes]], sender: bytes = b""
    ) -> tuple[list[int], asyncio.Future | None, tuple[int, BrokerError] | None]:
        """Publish every (channel, data_json) in order: (offsets, waiting, failure).

        `offsets` has one entry per item published (0 for those another worker sequences);
        `waiting`, when some are, resolves to the list with every offset once they are all
        acknowledged (or fails with BrokerError after PUBLISH_TIMEOUT_S): one future and one timer
        for the batch, not one per item. `failure` is (index, error) of the item that could not be
        published; the items after it were not."""
        failure: tuple[int, BrokerError] | None = None
        try:
            results = self.engine.publish_batch(items, sender)
        except BatchPublishError as exc:
            results = exc.results
            too_large = isinstance(exc.error, MessageTooLarge)
            failure = (exc.index, BrokerError(str(exc.error), status=413 if too_large else 503))
        if results:
            self._schedule_poll()
        offsets = [offset for offset, _token in results]
        tokens = [(index, token) for index, (_offset, token) in enumerate(results) if token]
        if not tokens:
            return offsets, None, failure
        batch = BatchWait(self.loop.create_future(), offsets, len(tokens))
        batch.timer = self.loop.call_later(PUBLISH_TIMEOUT_S, self._batch_timed_out, batch, [t for _, t in tokens])
        pending = self.batch_pending
        for index, token in tokens:
            pending[token] = (batch, index)
        return offsets, batch.future, failure

    def subscribe(self, channel: str) -> StreamPosition:
        epoch, offset = self.engine.subscribe(channel)
        return StreamPosition(offset, epoch)

    def unsubscribe(self, channel: str) -> None:
        self.engine.unsubscribe(channel)

    def position(self, channel: str) -> StreamPosition:
        epoch, offset = self.engine.position(channel)
        return StreamPosition(offset, epoch)

    def latest(self, channel: str) -> StreamPosition:
        # The role's channel table is in shared memory: any process reads it, no round trip.
        h1, h2 = self.engine.hash(channel.encode())
        # For a channel the table lacks: offset 0, and the epoch its first message will have.
        epoch, offset = self.segments[self.engine.role_of(h1)].table.state(h1, h2)[:2]
        return StreamPosition(offset, epoch)

    def history(self, channel: str, since: StreamPosition, upto: int) -> list[tuple[int, bytes, bytes]] | None:
        not_before_ns = time.time_ns() - int(self.history_ttl_s * 1e9)
        return self.engine.history(channel, since.epoch, since.offset, upto, self.history_size, not_before_ns)

    # -- acknowledgements of publishes another worker sequences --

    def _acknowledge(self, token: int, offset: int) -> None:
        entry = self.pending.pop(token, None)
        if entry is None:
            waiting = self.batch_pending.pop(token, None)
            if waiting is not None:
                waiting[0].acknowledge(waiting[1], offset)
            return
        future, timer = entry
        timer.cancel()
        if not future.done():
            future.set_result(offset)

    def _publish_timed_out(self, token: int) -> None:
        entry = self.pending.pop(token, None)
        self.engine.forget_token(token)
        if entry is None or entry[0].done():
            return
        entry[0].set_exception(
            BrokerError(f"timed out after {PUBLISH_TIMEOUT_S:g}s waiting for the channel's owner worker")
        )

    def _batch_timed_out(self, batch: BatchWait, tokens: list[int]) -> None:
        for token in tokens:
            if self.batch_pending.pop(token, None) is not None:
                self.engine.forget_token(token)
        if not batch.future.done():
            batch.future.set_exception(
                BrokerError(f"timed out after {PUBLISH_TIMEOUT_S:g}s waiting for the channel's owner worker")
            )

    # -- when to read the rings --

    def _schedule_poll(self) -> None:
        # Coalesce: many publishes in one loop iteration are read back in one pass.
        if not self._poll_scheduled:
            self._poll_scheduled = True
            self.loop.call_soon(self._poll_now)

    def _poll_now(self) -> None:
        self._poll_scheduled = False
        self.engine.poll()

    def _on_doorbell(self) -> None:
        self.doorbells.acknowledge(self.bus_slot)
        self.engine.poll()

    def _tick(self) -> None:
        self.doorbells.acknowledge(self.bus_slot)
        self.engine.poll()

    # -- numbers for the stats block --

    @property
    def overruns(self) -> int:
        return self.engine.overruns

    @property
    def lost_bytes(self) -> int:
        return self.engine.lost_bytes

    @property
    def gaps(self) -> int:
        return self.engine.gaps

    @property
    def bad_entries(self) -> int:
        return self.engine.bad_entries

    @property
    def channels_forgotten(self) -> int:
        return self.engine.evictions

    @property
    def read_bytes(self) -> int:
        return self.engine.read_bytes

    def table_fill(self) -> tuple[int, int]:
        """(entries used, slots) of the channel table of the role this process sequences; (0, 0)
        without a role."""
        role = self.engine.role
        if role is None:
            return 0, 0
        table = self.segments[role].table
        return len(table), table.slots

    def history_s(self, now_ns: int) -> float:
        """Seconds of messages this process's ring holds (0 while it is empty)."""
        horizon, _lapped = ring_horizon_s(self.own_segment.ring, now_ns)
        return horizon or 0.0

    def lag_bytes(self) -> int:
        return self.engine.lag_bytes()
