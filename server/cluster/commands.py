"""The command path to one Redis server: requests issued together go out pipelined in one write and
one round trip, and each request knows whether it was sent, so a failure is reported truthfully.

Requests queue up and one flush per event-loop iteration takes all of them (up to `max_batch`) at
once; while a batch is on the wire the next ones queue, so the batch size grows with the load. One
batch in flight at a time keeps publishes in the order they were issued.

Failure: a request that was never written (no connection within the timeout, connection refused)
raises ClusterUnavailable and is dropped: it can never reach Redis later. One that was written but
whose reply did not come back raises ClusterOutcomeUnknown. Redis's own error replies (NOSCRIPT is
handled here) are returned as ResponseError values for the caller to judge.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from collections import deque
from collections.abc import Callable

import hiredis
from redis.exceptions import NoScriptError, RedisError, ResponseError

from wsd.server.cluster.connection import make_connection
from wsd.server.cluster.errors import ClusterOutcomeUnknown, ClusterUnavailable
from wsd.server.cluster.scripts import SCRIPTS
from wsd.server.cluster.urls import RedisTarget

log = logging.getLogger("wsd.cluster")

QUEUED, SENT = 0, 1


class Request:
    """One command waiting for its reply; `state` says whether it has been written yet."""

    __slots__ = ("args", "future", "state")

    def __init__(self, args: tuple, future: asyncio.Future):
        self.args = args
        self.future = future
        self.state = QUEUED


class ShardCommands:
    """Pipelined, batched requests to one Redis server over one connection."""

    def __init__(
        self, target: RedisTarget, *, timeout_s: float, client_name: str | None = None, max_batch: int = 512,
        on_state: Callable[[bool, str], None] | None = None,
    ):  # fmt: skip
        self.target = target
        self.timeout_s = timeout_s
        self.max_batch = max_batch
        self.on_state = on_state
        self.connection = make_connection(target, connect_timeout_s=timeout_s, client_name=client_name)
        self.up: bool | None = None  # None until the first batch
        self.last_error = ""
        self.round_trips = 0
        self.commands_sent = 0
        self._rtts: deque[float] = deque(maxlen=101)
        self._queue: deque[Request] = deque()
        self._flush_scheduled = False
        self._task: asyncio.Task | None = None
        self._closed = False

    # -- issuing requests --

    def submit(self, *args) -> Request:
        """Queue one command (name and arguments); it goes out with the next batch."""
        if self._closed:
            raise ClusterUnavailable(f"{self.target.shown}: the cluster client is closed")
        request = Request(args, asyncio.get_running_loop().create_future())
        self._queue.append(request)
        if not self._flush_scheduled and self._task is None:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._start_flush)
        return request

    async def wait(self, request: Request, timeout_s: float | None = None):
        """The reply of one request (a ResponseError value for Redis's error replies), or raise
        ClusterUnavailable (never sent) / ClusterOutcomeUnknown (sent, reply lost)."""
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                return await request.future
        except TimeoutError:
            raise self._timeout_error(request, timeout_s) from None

    async def wait_all(self, requests: list[Request], timeout_s: float | None = None) -> list:
        """Replies of several requests, with one deadline; failures are returned as exceptions."""
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        return await wait_requests([(self, request) for request in requests], timeout_s)

    async def execute(self, *args, timeout_s: float | None = None):
        """submit() and wait(); a Redis error reply is raised as ResponseError."""
        reply = await self.wait(self.submit(*args), timeout_s)
        if isinstance(reply, ResponseError):
            raise reply
        return reply

    def _timeout_error(self, request: Request, timeout_s: float) -> ClusterUnavailable:
        if not request.future.done():
            request.future.cancel()  # a queued request is dropped by the flush; a sent one's reply ignored
        if request.state == QUEUED:
            return ClusterUnavailable(f"{self.target.shown}: no connection within {timeout_s:g} s")
        return ClusterOutcomeUnknown(f"{self.target.shown}: no reply within {timeout_s:g} s")

    # -- the flush --

    def _start_flush(self) -> None:
        self._flush_scheduled = False
        if self._task is None and self._queue:
            self._task = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        try:
            while self._queue and not self._closed:
                await self._run_batch()
        finally:
            self._task = None
            if self._queue and not self._closed:
                self._start_flush()

    async def _connect(self) -> None:
        connection = self.connection
        if connection.is_connected:
            # A connection the server closed (restart, CLIENT KILL, idle timeout) shows as readable:
            # replace it before anything is written, so the first request after an outage is not
            # reported as "outcome unknown" for a write that could never have arrived.
            try:
                if not await connection.can_read():
                    return
            except (RedisError, OSError):
                pass
            await connection.disconnect(nowait=True)
        await connection.connect()

    async def _run_batch(self) -> None:
        try:
            async with asyncio.timeout(self.timeout_s):
                await self._connect()
        except (RedisError, OSError, TimeoutError) as exc:
            self._fail_queued(exc)
            return
        batch: list[Request] = []
        while self._queue and len(batch) < self.max_batch:
            request = self._queue.popleft()
            if not request.future.done():  # timed out while queued: it must never be sent
                request.state = SENT
                batch.append(request)
        if not batch:
            return
        replies: list = []
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout_s):
                # hiredis's C packer: redis-py's own (pure Python) took half the client's CPU per publish.
                await self.connection.send_packed_command(
                    b"".join([hiredis.pack_command(request.args) for request in batch]), check_health=False
                )
                for _ in batch:
                    try:
                        replies.append(await self.connection.read_response())
                    except ResponseError as exc:
                        replies.append(exc)
        except (RedisError, OSError, TimeoutError) as exc:
            await self.connection.disconnect(nowait=True)
            detail = str(exc) or f"no reply within {self.timeout_s:g} s"
            self._set_state(False, detail)
            self._resolve(batch[: len(replies)], replies)
            for index, request in enumerate(batch):
                if not request.future.done():  # replied NOSCRIPT (did not run), or no reply at all
                    error = ClusterUnavailable if index < len(replies) else ClusterOutcomeUnknown
                    request.future.set_exception(error(f"{self.target.shown}: {detail}"))
            return
        self._rtts.append(time.perf_counter() - started)
        self.round_trips += 1
        self.commands_sent += len(batch)
        self._set_state(True, "")
        retry = [request for request, reply in zip(batch, replies, strict=True) if isinstance(reply, NoScriptError)]
        if retry:
            await self._load_scripts_and_requeue(retry)
        self._resolve(batch, replies)

    def _resolve(self, batch: list[Request], replies: list) -> None:
        for request, reply in zip(batch, replies, strict=False):
            if not request.future.done() and not isinstance(reply, NoScriptError):
                request.future.set_result(reply)

    async def _load_scripts_and_requeue(self, requests: list[Request]) -> None:
        """Redis lost its script cache (restart, SCRIPT FLUSH): a NOSCRIPT reply means the script did
        not run, so loading the scripts and sending those requests again is safe."""
        try:
            async with asyncio.timeout(self.timeout_s):
                await self.connection.send_packed_command(
                    self.connection.pack_commands([("SCRIPT", "LOAD", text) for text in SCRIPTS.values()]),
                    check_health=False,
                )
                for _ in SCRIPTS:
                    await self.connection.read_response()
        except (RedisError, OSError, TimeoutError) as exc:
            await self.connection.disconnect(nowait=True)
            for request in requests:
                if not request.future.done():
                    request.future.set_exception(ClusterUnavailable(f"{self.target.shown}: loading scripts: {exc}"))
            return
        for request in reversed(requests):
            if not request.future.done():
                request.state = QUEUED
                self._queue.appendleft(request)

    def _fail_queued(self, exc: BaseException) -> None:
        detail = str(exc) or f"no connection within {self.timeout_s:g} s"
        self._set_state(False, detail)
        while self._queue:
            request = self._queue.popleft()
            if not request.future.done():
                request.future.set_exception(ClusterUnavailable(f"{self.target.shown}: {detail}"))

    def _set_state(self, up: bool, detail: str) -> None:
        if up != self.up:
            self.up = up
            self.last_error = detail
            if self.on_state is not None:
                self.on_state(up, detail)
        elif not up:
            self.last_error = detail

    # -- status and shutdown --

    @property
    def rtt_median_ms(self) -> float | None:
        return round(statistics.median(self._rtts) * 1000, 3) if self._rtts else None

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        while self._queue:
            request = self._queue.popleft()
            if not request.future.done():
                request.future.set_exception(ClusterUnavailable(f"{self.target.shown}: the cluster client is closed"))
        await self.connection.disconnect(nowait=True)


async def wait_requests(pairs: list[tuple[ShardCommands, Request]], timeout_s: float) -> list:
    """Replies of requests on any shards with one deadline: each a reply value, a ResponseError, or
    the ClusterUnavailable / ClusterOutcomeUnknown that request ended with."""
    futures = [request.future for _, request in pairs]
    if futures:
        await asyncio.wait(futures, timeout=timeout_s)
    results: list = []
    for shard, request in pairs:
        future = request.future
        if not future.done():
            results.append(shard._timeout_error(request, timeout_s))
        elif future.cancelled():
            results.append(ClusterUnavailable(f"{shard.target.shown}: cancelled"))
        elif future.exception() is not None:
            results.append(future.exception())
        else:
            results.append(future.result())
    return results
