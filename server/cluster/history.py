"""History reads of one process, coalesced per channel: however many callers want a channel's
history at once, Redis is read once for all of them (and once more for those who came while that
read was on the wire and could not use it).

A read also serves, for RECENT_S, callers whose range it holds (the same epoch, a start at or after
the read's, an end at or before its top): a channel's messages never change within an epoch, so 60
clients resuming one channel over a few milliseconds cost one read, not one per wave of arrivals.

The rules that decide what a caller gets from a read are a pure function, `answer()`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from wsd.server.cluster.model import HistoryResult, Publication, StreamPosition

RECENT_S = 1.0  # how long a read's result serves callers whose range it holds

# read(channel, after, count) -> (epoch, top offset, Redis now ns, publications after max(after, top-count))
HistoryReader = Callable[[str, int, int], Awaitable[tuple[int, int, int, list[Publication]]]]


def answer(
    since: StreamPosition | None, limit: int, upto: int | None, ttl_ns: int,
    epoch: int, top: int, now_ns: int, publications: list[Publication],
) -> HistoryResult:  # fmt: skip
    """What one caller gets from a read of the channel (epoch, top, now_ns, publications).

    No `since`: only the position. Otherwise the messages after since.offset up to `upto` (or top),
    or None (not recoverable) if since is of another epoch, if since or upto is ahead of Redis, if
    more than `limit` are missing, or if any of them is no longer in the stream (trimmed, expired,
    older than ttl_ns).
    """
    if since is None:
        return HistoryResult(epoch, top, [])
    if since.epoch != epoch or since.offset > top or (upto is not None and upto > top):
        return HistoryResult(epoch, top, None)
    end = top if upto is None else min(upto, top)
    if since.offset >= end:
        return HistoryResult(epoch, top, [])
    if end - since.offset > limit:
        return HistoryResult(epoch, top, None)
    wanted = [p for p in publications if since.offset < p.offset <= end]
    if len(wanted) != end - since.offset or wanted[0].offset != since.offset + 1:
        return HistoryResult(epoch, top, None)
    if ttl_ns and wanted[0].ts_ns < now_ns - ttl_ns:
        return HistoryResult(epoch, top, None)
    return HistoryResult(epoch, top, wanted)


@dataclass
class _Waiter:
    since: StreamPosition | None
    limit: int
    upto: int | None
    future: asyncio.Future
    retried: bool = False


@dataclass
class _Recent:
    """A finished read, kept for callers whose range it holds."""

    after: int
    epoch: int
    top: int
    now_ns: int
    publications: list[Publication]
    at: float  # loop time of the answer

    def holds(self, since: StreamPosition | None, upto: int | None) -> bool:
        return (since is not None and upto is not None and 0 <= self.after <= since.offset
                and since.epoch == self.epoch and upto <= self.top)  # fmt: skip


@dataclass
class _Read:
    waiters: list[_Waiter] = field(default_factory=list)
    after: int = -1
    count: int = 0

    def covers(self, waiter: _Waiter) -> bool:
        """Whether this read, once sent, can still serve a newcomer: it reads everything the stream
        holds after `after`, so any later start is covered."""
        return waiter.since is None or 0 <= self.after <= waiter.since.offset


class HistoryCoalescer:
    """Coalesce concurrent history (and position) reads per channel into one Redis read."""

    def __init__(self, read: HistoryReader, ttl_s: float, capacity: int):
        self._read = read
        self.ttl_ns = int(ttl_s * 1e9)
        self.capacity = capacity  # entries a stream holds (the history size): what one read asks for
        self._queued: dict[str, _Read] = {}
        self._inflight: dict[str, _Read] = {}
        self._recent: dict[str, _Recent] = {}
        self.reads = 0  # Redis reads made, for status and tests
        self.requests = 0
        self.served_recent = 0

    async def get(
        self, channel: str, since: StreamPosition | None, limit: int, upto: int | None = None
    ) -> HistoryResult:
        """The channel's history after `since` (see answer()); raises what the read raised."""
        self.requests += 1
        recent = self._recent.get(channel)
        if recent is not None:
            now = asyncio.get_running_loop().time()
            if now - recent.at > RECENT_S:
                del self._recent[channel]
            elif recent.holds(since, upto):
                self.served_recent += 1
                now_ns = recent.now_ns + int((now - recent.at) * 1e9)
                return answer(since, limit, upto, self.ttl_ns, recent.epoch, recent.top, now_ns, recent.publications)
        waiter = _Waiter(since, limit, upto, asyncio.get_running_loop().create_future())
        inflight = self._inflight.get(channel)
        if inflight is not None and inflight.covers(waiter):
            inflight.waiters.append(waiter)
        else:
            self._queue(channel, waiter)
        return await waiter.future

    def _forget_recent(self, channel: str, recent: _Recent) -> None:
        if self._recent.get(channel) is recent:
            del self._recent[channel]

    def _queue(self, channel: str, waiter: _Waiter) -> None:
        queued = self._queued.get(channel)
        if queued is None:
            queued = self._queued[channel] = _Read()
            if channel not in self._inflight:
                asyncio.get_running_loop().call_soon(self._dispatch, channel)
        queued.waiters.append(waiter)

    def _dispatch(self, channel: str) -> None:
        read = self._queued.pop(channel, None)
        if read is None:
            return
        positions = [w.since.offset for w in read.waiters if w.since is not None]
        read.after = min(positions) if positions else -1
        read.count = self.capacity if positions else 0
        self._inflight[channel] = read
        asyncio.get_running_loop().create_task(self._run(channel, read))

    async def _run(self, channel: str, read: _Read) -> None:
        self.reads += 1
        try:
            epoch, top, now_ns, publications = await self._read(channel, read.after, read.count)
        except Exception as exc:
            self._inflight.pop(channel, None)
            for waiter in read.waiters:
                if not waiter.future.done():
                    waiter.future.set_exception(exc)
        else:
            self._inflight.pop(channel, None)
            if read.after >= 0:
                loop = asyncio.get_running_loop()
                recent = self._recent[channel] = _Recent(read.after, epoch, top, now_ns, publications, loop.time())
                loop.call_later(RECENT_S, self._forget_recent, channel, recent)
            for waiter in read.waiters:
                if waiter.future.done():
                    continue
                if waiter.upto is not None and waiter.upto > top and not waiter.retried:
                    # The caller already saw an offset this read predates (it joined late): read again.
                    waiter.retried = True
                    self._queue(channel, waiter)
                    continue
                waiter.future.set_result(answer(
                    waiter.since, waiter.limit, waiter.upto, self.ttl_ns, epoch, top, now_ns, publications
                ))  # fmt: skip
        if channel in self._queued:
            self._dispatch(channel)
