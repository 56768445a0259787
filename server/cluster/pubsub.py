"""The pub/sub connection to one Redis server: (S)SUBSCRIBE changes batched and confirmed, messages
handed to the publication callback, a liveness probe, and a rebuild after any loss.

subscribe() returns once Redis confirmed every channel, so nothing published after that can be
missed. It fails when Redis answers nothing for the timeout, not when a burst of subscribes takes
longer than that to confirm while Redis keeps answering.

Changes issued in one event-loop iteration go out in one write: consecutive subscribes form one
SUBSCRIBE command (in a cluster one SSUBSCRIBE per hash slot, as Redis requires), consecutive
unsubscribes one UNSUBSCRIBE, in the order they were asked for. Redis confirms each command's channels
in order, so a FIFO of sent commands pairs every confirmation (or error reply) with its waiters.

A lost connection is rebuilt with backoff (50 ms doubling to 1 s); every wanted channel is
subscribed again and `on_rebuilt(channels)` tells the owner to catch them up from their streams. A
connection that stays open but stops delivering (failover, a NAT or proxy that dropped the flow) is
found by the probe: after `probe_interval_s` without any message, a probe is published to this
connection's own probe channel; if it does not come back within another interval (or Redis reports
no subscriber for it), the connection is rebuilt.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable

from redis.exceptions import MovedError, RedisError, ResponseError

from wsd.server.cluster import keys
from wsd.server.cluster.connection import make_connection
from wsd.server.cluster.errors import ClusterError, ClusterUnavailable
from wsd.server.cluster.model import PublicationCallback, RebuiltCallback
from wsd.server.cluster.scripts import decode_payload
from wsd.server.cluster.urls import RedisTarget

log = logging.getLogger("wsd.cluster")

# Channels per (S)SUBSCRIBE command: keeps single commands and their replies of moderate size.
CHANNELS_PER_COMMAND = 1000
# A subscribe waits at most this long while Redis keeps answering (see _confirmation).
BURST_WAIT_S = 30.0
STALL_S = 0.1  # a wait that ends this much later than asked followed a stalled loop
_MESSAGE_KINDS = (b"message", b"smessage")
_SUBSCRIBE_KINDS = (b"subscribe", b"ssubscribe")
_UNSUBSCRIBE_KINDS = (b"unsubscribe", b"sunsubscribe")


class _Waiter:
    """One subscribe()/unsubscribe() call waiting for the commands that carry its channels."""

    __slots__ = ("future", "pending")

    def __init__(self) -> None:
        self.future: asyncio.Future = asyncio.get_running_loop().create_future()
        self.pending = 0

    def command_done(self) -> None:
        self.pending -= 1
        if self.pending == 0 and not self.future.done():
            self.future.set_result(None)

    def fail(self, error: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(error)


class _Sent:
    """One (un)subscribe command on the wire: which confirmations it still expects."""

    __slots__ = ("subscribe", "names", "index", "waiters")

    def __init__(self, subscribe: bool, names: list[bytes], waiters: set[_Waiter]):
        self.subscribe = subscribe
        self.names = names
        self.index = 0
        self.waiters = waiters


class _LinkLost(Exception):
    """Ends a pub/sub session so that the connection is rebuilt."""


class PubSubLink:
    """The (sharded) pub/sub connection of one Redis server, kept alive and subscribed."""

    def __init__(
        self, target: RedisTarget, *, sharded: bool, timeout_s: float, probe_interval_s: float,
        probe_token: str, on_publication: PublicationCallback, on_rebuilt: RebuiltCallback | None,
        probe_publish: Callable[[str], Awaitable[int]], slots: list[tuple[int, int]] | None = None,
        client_name: str | None = None, on_moved: Callable[[], None] | None = None,
        on_state: Callable[[bool, str], None] | None = None, wanted: Iterable[str] = (),
    ):  # fmt: skip
        self.target = target
        self.sharded = sharded
        self.timeout_s = timeout_s
        self.probe_interval_s = probe_interval_s
        self.probe_channel = keys.probe_channel(probe_token, slots)
        self.on_publication = on_publication
        self.on_rebuilt = on_rebuilt
        self.on_moved = on_moved
        self.on_state = on_state
        self._probe_publish = probe_publish
        self._client_name = client_name
        # Channels that should be subscribed, kept across rebuilds. A link created with some (they
        # moved here from another server) subscribes them and reports them to on_rebuilt at once.
        self.wanted: set[str] = set(wanted)
        self.active: set[str] = set()  # channels Redis confirmed on the current connection
        self.up = False
        self.last_error = ""
        self.sessions = 0  # connections established and fully subscribed
        self.rebuilds = 0  # of those, the ones that resubscribed channels after a loss
        self.probes = 0
        self.probe_failures = 0
        self.messages = 0
        self.subscribe_commands = 0  # (S)(UN)SUBSCRIBE commands sent, for tests and status
        self.write_batches = 0
        self._received = 0
        self._ops: list[tuple[bool, str, _Waiter | None]] = []
        self._unsubscribes = 0  # unsubscribe ops queued or sent, not yet confirmed
        self._ops_scheduled = False
        self._inflight: deque[_Sent] = deque()
        self._connection = None
        self._write_lock = asyncio.Lock()
        self._task: asyncio.Task | None = None
        self._closed = False
        self._logged_down = False

    # -- life cycle --

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        self._task = None

    def rebuild(self, reason: str) -> None:
        """Drop the current connection (if any); the run loop reconnects and resubscribes."""
        connection = self._connection
        if connection is not None:
            self.last_error = reason
            log.warning("cluster: pub/sub connection to %s: %s; rebuilding it", self.target.shown, reason)
            asyncio.get_running_loop().create_task(connection.disconnect(nowait=True))

    # -- subscriptions --

    async def subscribe(self, channels: Iterable[str]) -> None:
        """Subscribe channels; returns once Redis confirmed all of them. ClusterUnavailable if the
        connection is down or Redis does not confirm within the timeout (none of them then stays
        subscribed)."""
        if not self.up:
            raise ClusterUnavailable(f"{self.target.shown}: pub/sub connection is down ({self.last_error})")
        channels = list(dict.fromkeys(channels))
        added = [channel for channel in channels if channel not in self.wanted]
        self.wanted.update(channels)
        # A confirmed channel needs no command, unless an unsubscribe may still be on its way.
        needed = channels if self._unsubscribes else [ch for ch in channels if ch not in self.active]
        if not needed:
            return
        waiter = _Waiter()
        for channel in needed:
            self._ops.append((True, channel, waiter))
        self._schedule_ops()
        try:
            await self._confirmation(waiter)
        except BaseException as exc:
            for channel in added:
                self.wanted.discard(channel)
            if self.up and added:
                for channel in added:
                    self._ops.append((False, channel, None))
                self._unsubscribes += len(added)
                self._schedule_ops()
            if isinstance(exc, TimeoutError):
                waited = exc.args[0] if exc.args else self.timeout_s
                raise ClusterUnavailable(
                    f"{self.target.shown}: Redis did not confirm the subscription within {waited:g} s"
                ) from None
            raise

    async def _confirmation(self, waiter: _Waiter) -> None:
        """Wait for the waiter's commands. TimeoutError once Redis has answered nothing at all on
        this connection for `timeout_s`: while confirmations keep arriving, Redis is alive and we
        are behind a burst (thousands of channels subscribed at once, e.g. clients coming back after
        a restart; the loop reads each reply in Python), and failing the subscribes would only
        make every client try again. BURST_WAIT_S bounds the wait all the same.

        A wait that ends late (the loop was stalled) says nothing: timers run before the loop reads
        its sockets, so Redis's answers may be there unread. It is waited again."""
        loop = asyncio.get_running_loop()
        waited = 0.0
        while waited < BURST_WAIT_S:
            seen, started = self._received, loop.time()
            done, _ = await asyncio.wait({waiter.future}, timeout=self.timeout_s)
            if done:
                waiter.future.result()
                return
            elapsed = loop.time() - started
            waited += elapsed
            if not self.up:
                break
            stalled = elapsed - self.timeout_s > min(STALL_S, self.timeout_s / 2)
            if self._received == seen and not stalled:
                break
        raise TimeoutError(waited)

    async def unsubscribe(self, channels: Iterable[str]) -> None:
        """Unsubscribe channels; returns once Redis confirmed (or at once if the connection is down:
        then there is no subscription to drop, and a rebuild will not resubscribe them)."""
        channels = list(dict.fromkeys(channels))
        for channel in channels:
            self.wanted.discard(channel)
        if not self.up or not channels:
            return
        waiter = _Waiter()
        for channel in channels:
            self._ops.append((False, channel, waiter))
        self._unsubscribes += len(channels)
        self._schedule_ops()
        try:
            async with asyncio.timeout(self.timeout_s):
                await waiter.future
        except (TimeoutError, ClusterError) as exc:
            log.debug("cluster: unsubscribe on %s not confirmed: %s", self.target.shown, exc)

    def _schedule_ops(self) -> None:
        if not self._ops_scheduled:
            self._ops_scheduled = True
            asyncio.get_running_loop().call_soon(self._start_ops)

    def _start_ops(self) -> None:
        self._ops_scheduled = False
        if self._ops:
            asyncio.get_running_loop().create_task(self._send_ops())

    async def _send_ops(self) -> None:
        ops, self._ops = self._ops, []
        connection = self._connection
        if connection is None:
            error = ClusterUnavailable(f"{self.target.shown}: pub/sub connection is down ({self.last_error})")
            for _, _, waiter in ops:
                if waiter is not None:
                    waiter.fail(error)
            return
        await self._write(connection, self._group(ops))

    def _group(self, ops: Iterable[tuple[bool, str, _Waiter | None]]) -> list[tuple[bool, list[str], set[_Waiter]]]:
        """Consecutive ops of one kind become one command (one per slot in a cluster), in order;
        the result holds pub/sub channel names."""
        commands: list[tuple[bool, list[str], set[_Waiter]]] = []
        last_channel = ""
        for subscribe, channel, waiter in ops:
            if commands and commands[-1][0] == subscribe and self._fits(commands[-1][1], last_channel, channel):
                commands[-1][1].append(keys.pubsub_channel(channel))
            else:
                commands.append((subscribe, [keys.pubsub_channel(channel)], set()))
            last_channel = channel
            if waiter is not None:
                commands[-1][2].add(waiter)
        return commands

    def _fits(self, command_names: list[str], last_channel: str, channel: str) -> bool:
        if len(command_names) >= CHANNELS_PER_COMMAND:
            return False
        # SSUBSCRIBE with channels of several slots fails (CROSSSLOT): one command per slot.
        return not self.sharded or keys.slot_of(last_channel) == keys.slot_of(channel)

    async def _write(self, connection, commands: list[tuple[bool, list[str], set[_Waiter]]]) -> None:
        """Write (un)subscribe commands in one go and register the confirmations they expect."""
        if self.sharded:
            names = ("SSUBSCRIBE", "SUNSUBSCRIBE")
        else:
            names = ("SUBSCRIBE", "UNSUBSCRIBE")
        packed_commands = []
        for subscribe, channel_names, waiters in commands:
            packed_commands.append((names[0] if subscribe else names[1], *channel_names))
            for waiter in waiters:
                waiter.pending += 1
            self._inflight.append(_Sent(subscribe, [name.encode() for name in channel_names], waiters))
        self.subscribe_commands += len(packed_commands)
        self.write_batches += 1
        async with self._write_lock:
            try:
                await connection.send_packed_command(connection.pack_commands(packed_commands), check_health=False)
            except (RedisError, OSError) as exc:
                self.rebuild(f"write failed: {exc}")

    # -- one connection's life --

    async def _run(self) -> None:
        delay = 0.05
        while not self._closed:
            connection = make_connection(self.target, connect_timeout_s=self.timeout_s, client_name=self._client_name)
            started = time.monotonic()
            try:
                await self._session(connection)
                detail = self.last_error or "connection closed"
            except (RedisError, OSError, TimeoutError, _LinkLost) as exc:
                detail = str(exc) or f"no answer within {self.timeout_s:g} s"
            finally:
                self._end_session()
                await connection.disconnect(nowait=True)
            if self._closed:
                return
            self.last_error = detail
            if not self._logged_down:
                self._logged_down = True
                if self.on_state is not None:
                    self.on_state(False, detail)
            if time.monotonic() - started > 5:
                delay = 0.05
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, 1.0)

    async def _session(self, connection) -> None:
        async with asyncio.timeout(self.timeout_s):
            await connection.connect()
        self._connection = connection
        # Sorted by slot in a cluster, so that channels of one slot share an SSUBSCRIBE.
        channels = sorted(self.wanted, key=keys.slot_of) if self.sharded else sorted(self.wanted)
        waiter = _Waiter()
        commands = [(True, [self.probe_channel], {waiter}), *self._group((True, ch, waiter) for ch in channels)]
        await self._write(connection, commands)
        reader = asyncio.get_running_loop().create_task(self._read_loop(connection))
        probe = None
        try:
            # Resubscribing many channels takes longer than one round trip: allow for it.
            async with asyncio.timeout(self.timeout_s + len(channels) / 20_000):
                done, _ = await asyncio.wait({reader, waiter.future}, return_when=asyncio.FIRST_COMPLETED)
            if reader in done:
                reader.result()
                raise _LinkLost("connection closed while resubscribing")
            waiter.future.result()
            self.up = True
            self.sessions += 1
            self._logged_down = False
            if self.on_state is not None:
                self.on_state(True, f"{len(channels)} channels subscribed")
            if self.probe_interval_s > 0:
                probe = asyncio.get_running_loop().create_task(self._probe_loop())
            if channels:
                self.rebuilds += 1
                resubscribed = [channel for channel in channels if channel in self.active]
                if self.on_rebuilt is not None and resubscribed:
                    try:
                        self.on_rebuilt(resubscribed)
                    except Exception:
                        log.exception("cluster: on_rebuilt callback failed")
            await reader
        finally:
            if probe is not None:
                probe.cancel()
            if not reader.done():
                reader.cancel()
                try:
                    await reader
                except (asyncio.CancelledError, Exception):
                    pass

    def _end_session(self) -> None:
        self.up = False
        self._connection = None
        self.active.clear()
        self._unsubscribes = 0
        error = ClusterUnavailable(f"{self.target.shown}: pub/sub connection lost before Redis confirmed")
        while self._inflight:
            for waiter in self._inflight.popleft().waiters:
                waiter.fail(error)
        ops, self._ops = self._ops, []
        for _, _, waiter in ops:
            if waiter is not None:
                waiter.fail(error)

    async def _read_loop(self, connection) -> None:
        while True:
            try:
                response = await connection.read_response()
            except ResponseError as exc:
                self._command_failed(exc)
                continue
            self._received += 1
            try:
                self._dispatch(response)
            except Exception:
                log.exception("cluster: handling a pub/sub message from %s failed", self.target.shown)

    def _dispatch(self, response) -> None:
        kind = response[0]
        if kind in _MESSAGE_KINDS:
            channel = keys.channel_of(response[1])
            if channel is None:
                return  # our probe: counted in _received, which is all it is for
            try:
                epoch, offset, ts_ns, user, data = decode_payload(response[2])
            except (ValueError, UnicodeDecodeError):
                log.warning("cluster: ignoring a message on %r that is not wsd's format", response[1][:100])
                return
            self.messages += 1
            self.on_publication(channel, epoch, offset, data, ts_ns, user)
        elif kind in _SUBSCRIBE_KINDS or kind in _UNSUBSCRIBE_KINDS:
            self._confirmed(kind in _SUBSCRIBE_KINDS, response[1])

    def _confirmed(self, subscribe: bool, name: bytes) -> None:
        head = self._inflight[0] if self._inflight else None
        channel = keys.channel_of(name)
        if head is None or head.subscribe != subscribe or head.names[head.index] != name:
            # Not an answer to us: Redis dropped a shard channel on its own (its slot moved).
            if not subscribe and channel is not None:
                self.active.discard(channel)
                if channel in self.wanted and self.on_moved is not None:
                    self.on_moved()
            return
        if channel is not None:
            if subscribe:
                self.active.add(channel)
            else:
                self.active.discard(channel)
                self._unsubscribes -= 1
        head.index += 1
        if head.index == len(head.names):
            self._inflight.popleft()
            for waiter in head.waiters:
                waiter.command_done()

    def _command_failed(self, exc: ResponseError) -> None:
        """An error reply answers a whole command (e.g. MOVED: the slot is served elsewhere)."""
        if not self._inflight:
            log.warning("cluster: unexpected error from %s: %s", self.target.shown, exc)
            return
        head = self._inflight.popleft()
        if not head.subscribe:
            self._unsubscribes -= len(head.names) - head.index
        error = ClusterUnavailable(f"{self.target.shown}: subscribe refused: {exc}")
        for waiter in head.waiters:
            waiter.fail(error)
        if isinstance(exc, MovedError) and self.on_moved is not None:
            self.on_moved()

    # -- liveness --

    async def _probe_loop(self) -> None:
        while True:
            seen = self._received
            await asyncio.sleep(self.probe_interval_s)
            if self._received != seen:
                continue
            self.probes += 1
            try:
                receivers = await self._probe_publish(self.probe_channel)
            except ClusterError:
                continue  # the publish path is down; that says nothing about this connection
            deadline = time.monotonic() + self.probe_interval_s
            while self._received == seen and time.monotonic() < deadline and receivers:
                await asyncio.sleep(min(0.01, self.probe_interval_s / 10))
            if self._received == seen:
                self.probe_failures += 1
                why = "Redis has no subscriber for its probe" if not receivers else "its probe did not come back"
                self.rebuild(f"connection stopped delivering ({why})")
                return
