"""The host's side of a channel's Redis subscription, kept by the worker holding the channel's role.

With `--cluster`, one process per host holds each channel's Redis subscription: the holder of the
channel's role on the bus (`h1 % workers`, h1 its keyed hash), so that a message from Redis enters the
shared-memory bus once, in the holder's ring, and fans out to the workers as a local message does.
`ChannelOwner` is that holder's bookkeeping for the channels of its role:

- which workers of the host want a channel (their bus slots, from INTEREST records or its own
  node); the first one takes the Redis subscription, and its answer waits until Redis confirmed
  it and the ring is at Redis's position (so nothing published after the `ok` can be missed);
- every publication Redis sends is appended to the ring as the channel's next MSG, with Redis's
  epoch and offset; one that does not follow the ring's last (a hole after a pub/sub rebuild, a
  new epoch) starts a catch-up from the channel's stream, and live ones wait meanwhile;
- a catch-up that cannot recover the missing stretch (Redis lost it: a new epoch, or its stream no
  longer reaches back) appends a GAP record, so that each worker tells its subscribers, before any
  message after it;
- the subscription is dropped LINGER_S after the last worker left (and workers that died without
  saying so are found by their interest map).

What to do with a read of the stream is a pure function, `plan_catch_up`, unit-tested alone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from wsd.server.bus.engine import BusEngine
from wsd.server.cluster.client import ClusterClient
from wsd.server.cluster.errors import ClusterError
from wsd.server.cluster.model import HistoryResult, StreamPosition
from wsd.server.cluster.records import TAG_GAP, TAG_INTEREST_REPLY, encode_gap, encode_interest_reply

log = logging.getLogger("wsd.cluster")

LINGER_S = 2.0  # a channel's subscription outlives its last subscriber this long (against churn)
SWEEP_S = 0.5
CONFIRMED_GRACE_S = 3.0  # a worker confirmed this long ago must show its interest in its interest map
MAX_BUFFERED = 10_000  # live messages kept per channel during a catch-up; beyond, the catch-up reads them

# waiter(error): the subscription is ready (error None) or could not be taken (error says why).
Waiter = Callable[[str | None], None]
# (epoch, offset, data, ts_ns, sender) of a live publication (sender: the publishing client's user
# id, UTF-8; b"" for an API publish)
Live = tuple[int, int, bytes, int, bytes]


def sender_of(user: str | None) -> bytes:
    return user.encode() if user else b""


@dataclass
class CatchUp:
    """What to write to the ring after reading a channel's stream (see plan_catch_up)."""

    jump: tuple[int, int] | None = None  # (epoch, offset) the ring starts at: nobody delivered it before
    gap: tuple[int, int] | None = None  # (epoch, offset) after a loss: a GAP record, deliveries continue after it
    appends: list[Live] = field(default_factory=list)  # messages, in offset order
    again: bool = False  # the live messages went past what the read saw with a hole: read again


def plan_catch_up(current: tuple[int, int] | None, read: HistoryResult, live: Sequence[Live]) -> CatchUp:
    """The ring's entries that bring a channel from `current` (the ring's (epoch, offset), None if
    it has none) to Redis's position in `read` (a read of the stream after `current`), then through
    the live publications that arrived meanwhile.

    The read's messages continue the ring without a hole, or could not be recovered (another epoch,
    trimmed, expired): then a gap at Redis's position. Live messages the read already covered are
    dropped; one that does not follow is left for another read (`again`), as are those after it.
    """
    plan = CatchUp()
    if current is None:
        plan.jump = (read.epoch, read.offset)
    elif read.publications is None:
        plan.gap = (read.epoch, read.offset)
    else:
        plan.appends = [
            (p.epoch, p.offset, p.data, p.ts_ns, sender_of(p.user)) for p in read.publications if p.offset > current[1]
        ]
    epoch, offset = read.epoch, read.offset
    for item in live:
        if item[0] == epoch and item[1] == offset + 1:
            plan.appends.append(item)
            offset = item[1]
        elif item[0] == epoch and item[1] <= offset:
            continue
        else:
            plan.again = True
            break
    return plan


@dataclass
class Held:
    """One channel of our role that some worker of the host wants."""

    slots: dict[int, float] = field(default_factory=dict)  # bus slot -> monotonic time confirmed (0: pending)
    waiters: list[tuple[int, Waiter, bool]] = field(default_factory=list)  # (slot, waiter, resync)
    subscribing: bool = False
    subscribed: bool = False  # Redis confirmed (the client keeps it across reconnections)
    ready: bool = False  # the ring reached Redis's position once: answers go out at once
    syncing: bool = False
    sync_again: bool = False
    catch_up: bool = False  # the next read is a catch-up (after a rebuild or a hole), counted as such
    parked: bool = False  # a subscribe or read failed (Redis down): retried once its shard is up
    live: list[Live] = field(default_factory=list)  # publications waiting for the read in flight
    idle_since: float | None = None


class ChannelOwner:
    def __init__(self, engine: BusEngine, client: ClusterClient, loop: asyncio.AbstractEventLoop,
                 linger_s: float = LINGER_S):  # fmt: skip
        self.engine = engine
        self.client = client
        self.loop = loop
        self.linger_s = linger_s
        self.channels: dict[bytes, Held] = {}
        self._woken: set[int] = set()
        self._flush_scheduled = False
        self._tasks: set[asyncio.Task] = set()
        self._closed = False
        self.appended = 0  # publications from Redis put on the bus
        self.catch_ups = 0
        self.gaps = 0
        self.subscribes = 0
        self.unsubscribes = 0

    # -- interest of the host's workers --

    def want(self, channel: bytes, slot: int, waiter: Waiter | None, resync: bool = False) -> None:
        """A worker (bus slot) wants the channel's messages in the ring; `waiter` is answered once
        they flow (or the subscription failed). `resync`: it delivers the channel already."""
        held = self.channels.get(channel)
        if held is None:
            held = self.channels[channel] = Held()
        held.idle_since = None
        if held.ready:
            held.slots[slot] = time.monotonic()
            if waiter is not None:
                waiter(None)
            return
        held.slots.setdefault(slot, 0.0)
        held.waiters.append((slot, waiter or _nobody, resync))
        self._subscribe(channel, held)

    def unwant(self, channel: bytes, slot: int) -> None:
        held = self.channels.get(channel)
        if held is None:
            return
        held.slots.pop(slot, None)
        held.waiters = [w for w in held.waiters if w[0] != slot]
        if not held.slots:
            held.idle_since = time.monotonic()

    def sweep(self) -> None:
        """Periodic: forget workers that died without unsubscribing; drop subscriptions idle for
        the linger time; retry what failed while Redis was down, once it is up."""
        now = time.monotonic()
        own = self.engine.bus_slot
        for channel, held in list(self.channels.items()):
            if held.parked and held.slots and self._shard_up(channel):
                held.parked = False
                self._subscribe(channel, held)
            for slot, confirmed in list(held.slots.items()):
                if slot != own and confirmed and now - confirmed > CONFIRMED_GRACE_S:
                    if not self.engine.marks_interest(slot, channel):
                        self.unwant(channel, slot)
            if not held.slots and held.idle_since is not None and now - held.idle_since >= self.linger_s:
                self._drop(channel, held)

    def _shard_up(self, channel: bytes) -> bool:
        try:
            return self.client.shard_for(channel.decode()).state == "up"
        except ClusterError:
            return False

    def _drop(self, channel: bytes, held: Held) -> None:
        if held.subscribing:
            return  # the sweep drops it once the subscribe answered (an unsubscribe must not pass it)
        del self.channels[channel]
        if held.subscribed or held.subscribing:
            self.unsubscribes += 1
            self._spawn(self.client.unsubscribe([channel.decode()]))

    # -- the Redis subscription and the first read --

    def _subscribe(self, channel: bytes, held: Held) -> None:
        if held.subscribing or self._closed:
            return
        if held.subscribed:
            self._sync(channel, held)
            return
        held.subscribing = True
        self._spawn(self._take_subscription(channel, held))

    async def _take_subscription(self, channel: bytes, held: Held) -> None:
        self.subscribes += 1
        try:
            await self.client.subscribe([channel.decode()])
        except ClusterError as exc:
            held.subscribing = False
            self._failed(channel, held, str(exc))
            return
        held.subscribing = False
        held.subscribed = True
        self._sync(channel, held)

    def _failed(self, channel: bytes, held: Held, error: str) -> None:
        """The subscription could not be taken or the stream not read: answer the new workers with
        the error; workers that deliver the channel already (resync) keep it, and it is retried."""
        waiters, held.waiters = held.waiters, []
        for slot, waiter, resync in waiters:
            if resync:
                held.waiters.append((slot, waiter, resync))
            else:
                held.slots.pop(slot, None)
                waiter(error)
        if self.channels.get(channel) is not held:
            return
        if not held.slots:
            held.idle_since = time.monotonic() - self.linger_s  # nobody waits: drop it now
            self._drop(channel, held)
        else:
            held.parked = True

    # -- keeping the ring at Redis's position --

    def _sync(self, channel: bytes, held: Held, catch_up: bool = False) -> None:
        held.catch_up = held.catch_up or catch_up
        held.parked = False
        if held.syncing:
            held.sync_again = True
            return
        held.syncing = True
        self._spawn(self._read(channel, held))

    async def _read(self, channel: bytes, held: Held) -> None:
        name = channel.decode()
        try:
            while not self._closed:
                held.sync_again = False
                current = self.engine.table_position(channel)
                catch_up, held.catch_up = held.catch_up, False
                try:
                    if current is None:
                        read = await self.client.history(name, None)
                    elif catch_up:
                        self.catch_ups += 1
                        read = await self.client.read_since(name, StreamPosition(*current))
                    else:
                        read = await self.client.history(name, StreamPosition(*current))
                except ClusterError as exc:
                    # The outage itself is logged by the client, once; this is what it costs (the
                    # log writes one line of this kind per 10 s, with the count of the others).
                    log.warning("cluster: cannot read the stream of %r (retried when Redis answers): %s", name, exc)
                    held.catch_up = held.catch_up or catch_up
                    if not held.ready:
                        self._failed(channel, held, str(exc))
                    else:
                        held.parked = True  # retried by the sweep, or at once by a live message
                    return
                if self.channels.get(channel) is not held:
                    return
                self._apply(channel, held, self.engine.table_position(channel), read)
                if not held.sync_again:
                    break
        finally:
            held.syncing = False
        if not held.ready and self.channels.get(channel) is held:
            held.ready = True
            now = time.monotonic()
            waiters, held.waiters = held.waiters, []
            for slot, waiter, _resync in waiters:
                if slot in held.slots:
                    held.slots[slot] = now
                    waiter(None)

    def _apply(self, channel: bytes, held: Held, current: tuple[int, int] | None, read: HistoryResult) -> None:
        live, held.live = held.live, []
        plan = plan_catch_up(current, read, live)
        engine = self.engine
        if plan.jump is not None:
            engine.set_position(channel, *plan.jump)
        if plan.gap is not None:
            self.gaps += 1
            epoch, offset = plan.gap
            log.warning(
                "cluster: %r lost messages in Redis (the ring was at %s; Redis is at epoch %d offset %d): "
                "its subscribers get a gap", channel.decode(), current, epoch, offset,
            )  # fmt: skip
            engine.append_record(TAG_GAP, encode_gap(channel, epoch, offset))
            self._woken.add(engine.set_position(channel, epoch, offset))
        for epoch, offset, data, ts_ns, sender in plan.appends:
            self._woken.add(engine.append_external(channel, epoch, offset, ts_ns, data, sender))
            self.appended += 1
        if plan.again:
            held.sync_again = True
            held.catch_up = True
        self._schedule_flush()

    # -- publications and rebuilt connections (the ClusterClient's callbacks) --

    def on_publication(self, channel_name: str, epoch: int, offset: int, data: bytes, ts_ns: int,
                       user: str | None) -> None:  # fmt: skip
        channel = channel_name.encode()
        sender = sender_of(user)
        held = self.channels.get(channel)
        if held is None:
            return  # dropped, or an unsubscribe still on its way
        if not held.ready or held.syncing:
            if len(held.live) < MAX_BUFFERED:
                held.live.append((epoch, offset, data, ts_ns, sender))
            else:
                held.sync_again = held.catch_up = True  # the next read covers what is not kept
            return
        current = self.engine.table_position(channel)
        if current is not None and current[0] == epoch:
            if offset == current[1] + 1:
                self._woken.add(self.engine.append_external(channel, epoch, offset, ts_ns, data, sender))
                self.appended += 1
                self._schedule_flush()
                return
            if offset <= current[1]:
                return  # seen in a catch-up already
        # A hole (messages lost on the way: the pub/sub connection was rebuilt) or a new epoch:
        # read the stream from where the ring is; live messages wait for that read.
        held.live.append((epoch, offset, data, ts_ns, sender))
        self._sync(channel, held, catch_up=True)

    def on_rebuilt(self, channel_names: list[str]) -> None:
        """The pub/sub connection was rebuilt: catch every channel up from its stream."""
        for name in channel_names:
            channel = name.encode()
            held = self.channels.get(channel)
            if held is not None and held.subscribed:
                self._sync(channel, held, catch_up=True)

    # -- writing to the bus --

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Wake the workers that want the appended channels and deliver them here (one pass for
        every publication of this loop iteration)."""
        self._flush_scheduled = False
        woken, self._woken = self._woken, set()
        if woken:
            self.engine.wake_interested(woken)
        self.engine.poll()

    def reply(self, slot: int, token: int, error: str | None) -> None:
        """Answer a worker's INTEREST subscribe: after everything this ring holds for the channel."""
        self.engine.append_record(TAG_INTEREST_REPLY, encode_interest_reply(slot, token, error or ""))
        self.engine.ring_doorbell(slot)

    # -- housekeeping --

    def _spawn(self, coroutine) -> None:
        task = self.loop.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("cluster: a channel task failed", exc_info=task.exception())

    def close(self) -> None:
        self._closed = True
        for task in list(self._tasks):
            task.cancel()

    def status(self) -> dict:
        return {
            "channels": len(self.channels),
            "subscribed": sum(1 for held in self.channels.values() if held.subscribed),
            "appended": self.appended,
            "catch_ups": self.catch_ups,
            "gaps": self.gaps,
        }


def _nobody(_error: str | None) -> None:
    pass
