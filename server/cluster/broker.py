"""The Broker of a worker with `--cluster`: the host's shared-memory bus fed by Redis.

Publishes go straight to Redis from any worker (the atomic script gives the offset, global per
channel) and are answered with Redis's offset. Deliveries come through the bus as without
`--cluster`: the worker holding a channel's role holds its Redis subscription for the whole host
and appends what Redis sends into its ring (wsd.server.cluster.owner), and every worker delivers
from the rings. A worker's first local subscriber of a channel asks the role's holder over the bus
(an INTEREST record, answered when Redis confirmed: wsd.server.cluster.records); the holder itself
asks its own ChannelOwner. History comes from the ring when it holds the range, else from Redis
(coalesced per process). A GAP record from the holder reaches the node as `on_gap`.

While Redis is unreachable, `unavailable()` refuses new subscriptions and publishes fail with
BrokerError code `unavailable` (the publish API's 503); nothing else changes for connected clients.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass

from wsd.server.bus.broker import ShmBroker
from wsd.server.bus.segment import Segment
from wsd.server.bus.tick import Periodic
from wsd.server.cluster.client import ClusterClient
from wsd.server.cluster.errors import ClusterError, ClusterReplyError
from wsd.server.cluster.host import shard_states, status_path, write_status
from wsd.server.cluster.model import StreamPosition as RedisPosition
from wsd.server.cluster.owner import SWEEP_S, ChannelOwner
from wsd.server.cluster.pubsub import BURST_WAIT_S
from wsd.server.cluster.records import (
    RESYNC,
    SUBSCRIBE,
    TAG_GAP,
    TAG_INTEREST,
    TAG_INTEREST_REPLY,
    TAG_OWNER,
    UNSUBSCRIBE,
    decode_gap,
    decode_interest,
    decode_interest_reply,
    decode_owner,
    encode_interest,
    encode_owner,
    peek_interest_role,
    peek_reply_origin,
)
from wsd.server.node.broker import BrokerError, DeliverCallback, StreamPosition
from wsd.server.protocol import PUBLISH_FAILED, UNAVAILABLE

log = logging.getLogger("wsd.cluster")

STATUS_EVERY_S = 0.5

# on_gap(channel name, epoch, offset): the channel's messages up to `offset` of `epoch` are lost here.
GapCallback = Callable[[bytes, int, int], None]


@dataclass
class _Asking:
    """A subscribe this worker asked another worker's ChannelOwner for."""

    channel: str
    role: int
    future: asyncio.Future
    timer: asyncio.TimerHandle


class ClusterBroker(ShmBroker):
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
        *,
        cluster: ClusterClient,
        on_gap: GapCallback,
        status_path: str | None = None,
    ):
        # The role is taken below, once the records of cluster mode are handled: a new holder's
        # first read of the rings holds the requests its predecessor left.
        super().__init__(loop, bus_slot, segments, doorbell_socket, doorbell_senders, None, deliver, deliveries_done,
                         history_size, history_ttl_s)  # fmt: skip
        self.cluster = cluster
        self.on_gap = on_gap
        self.status_path = status_path
        self.owner = ChannelOwner(self.engine, cluster, loop)
        cluster.on_publication = self.owner.on_publication
        cluster.on_rebuilt = self.owner.on_rebuilt
        self.engine.on_record = self._on_record
        self.delivering: set[bytes] = set()  # channels this process tracks on the bus
        self.asking: dict[int, _Asking] = {}
        # The holder's own subscribe may wait out a burst while Redis keeps answering (up to
        # BURST_WAIT_S, wsd.server.cluster.pubsub); a holder that died is replaced and asked again
        # (_interest_again) long before this.
        self.ask_timeout_s = BURST_WAIT_S + 2 * cluster.timeout_s + 1.0
        self._incarnation = int.from_bytes(os.urandom(8), "little")
        # The server API's part across hosts (wsd.server.cluster.api_hosts.HostsApi.status), set by
        # the worker once it has one: its state goes into this process's status file.
        self.server_api_status: Callable[[], dict] | None = None
        self._tokens = 0
        if role is not None:
            self.engine.take_role(role)

    def start(self) -> None:
        super().start()
        Periodic(self.loop, SWEEP_S, self.owner.sweep, "cluster sweep").start()
        if self.status_path is not None:
            Periodic(self.loop, STATUS_EVERY_S, self._write_status, "cluster status").start()
        if self.engine.role is not None:
            self._announce(self.engine.role)

    async def connect(self) -> None:
        """Open the Redis connections; wait up to the timeout for them (serving starts either way:
        while Redis is unreachable, subscribes and publishes answer `unavailable`)."""
        await self.cluster.start()
        if not await self.cluster.wait_up(self.cluster.timeout_s):
            log.warning("cluster: Redis is not reachable yet (%s); serving meanwhile: subscriptions and publishes "
                        "answer 'unavailable' until it is", ", ".join(s["url"] for s in self.cluster.status()["shards"])
                        or "no shard known")  # fmt: skip

    async def close(self) -> None:
        self.owner.close()
        await self.cluster.close()

    def take_role(self, role: int) -> None:
        super().take_role(role)
        # Our own channels of the role, delivered or waited for: now ours to subscribe in Redis.
        for name in list(self.delivering):
            if self.engine.role_of_channel(name) == role:
                self.owner.want(name, self.bus_slot, None, resync=True)
        for token, asking in list(self.asking.items()):
            if asking.role == role:
                self.owner.want(asking.channel.encode(), self.bus_slot,
                                lambda error, token=token: self._answered(token, error))  # fmt: skip
        self._announce(role)

    def _announce(self, role: int) -> None:
        """Tell every worker we hold `role` now: they send their interest in its channels again."""
        self.engine.append_record(TAG_OWNER, encode_owner(role, self._incarnation))
        for slot in range(len(self.segments)):
            if slot != self.bus_slot:
                self.engine.ring_doorbell(slot)

    # -- Broker --

    def unavailable(self, channel: str) -> BrokerError | None:
        """Why a new subscription to `channel` cannot be taken now (Redis down), or None."""
        try:
            shard = self.cluster.shard_for(channel)
        except ClusterError as exc:
            return BrokerError(str(exc), code=UNAVAILABLE)
        if shard.state != "up":
            error = shard.status()["error"] or "not connected"
            return BrokerError(f"cluster unavailable: {shard.target.shown}: {error}", code=UNAVAILABLE)
        return None

    def publish(self, channel: str, data_json: bytes, sender: bytes = b""):
        too_large = self._too_large(channel, data_json, sender)
        if too_large is not None:
            raise too_large
        return self._publish(channel, data_json, sender.decode() if sender else None)

    def publish_batch(
        self, items: list[tuple[str, bytes]], sender: bytes = b""
    ) -> tuple[list[int], asyncio.Future | None, tuple[int, BrokerError] | None]:
        """The publish API's batch in one ClusterClient.publish_batch: every item's script sent to
        Redis pipelined, one write per Redis server, and one wait for all their replies. Item by
        item (a task, an `asyncio.wait` and their futures per item, pipelined all the same) cost
        ~57 µs more per message.

        Returns as ShmBroker.publish_batch does: `offsets` (0 until Redis answers); `waiting`,
        resolving to them all, or failing with the BrokerError of the first item Redis did not
        publish (the items after it were sent too, and may have been); `failure` for an item too
        large for the bus, which nothing after it was sent for. Redis runs one connection's scripts
        in order, and a channel always goes to the same server, so a channel's offsets follow the
        batch's order."""
        user = sender.decode() if sender else None
        sending: list[tuple[str, bytes, str | None]] = []
        failure: tuple[int, BrokerError] | None = None
        for index, (channel, data_json) in enumerate(items):
            too_large = self._too_large(channel, data_json, sender)
            if too_large is not None:
                failure = (index, too_large)
                break
            sending.append((channel, data_json, user))
        offsets = [0] * len(sending)
        if not sending:
            return offsets, None, failure
        return offsets, self.loop.create_task(self._publish_all(sending, offsets)), failure

    async def _publish_all(self, sending: list[tuple[str, bytes, str | None]], offsets: list[int]) -> list[int]:
        for index, result in enumerate(await self.cluster.publish_batch(sending)):
            if isinstance(result, ClusterError):
                raise _publish_error(result)
            offsets[index] = result.offset
        return offsets

    def _too_large(self, channel: str, data_json: bytes, sender: bytes) -> BrokerError | None:
        # Redis's message comes back into a ring entry, with the sender's id.
        limit = self.engine.max_data_size(channel) - len(sender)
        if len(data_json) <= limit:
            return None
        return BrokerError(
            f"message too large for the bus: {len(data_json)} bytes of data on channel {channel!r}, at most "
            f"{limit} (one bus ring entry is a quarter of --ring-size; raise it for larger messages)",
            status=413,
        )

    async def _publish(self, channel: str, data_json: bytes, user: str | None) -> int:
        try:
            result = await self.cluster.publish(channel, data_json, user)
        except ClusterError as exc:
            raise _publish_error(exc) from None
        return result.offset

    def subscribe(self, channel: str):
        error = self.unavailable(channel)
        if error is not None:
            raise error
        name = channel.encode()
        role = self.engine.role_of_channel(name)
        future = self.loop.create_future()
        if role == self.engine.role:
            self.owner.want(name, self.bus_slot, lambda error: _settle(future, error))
        else:
            self._ask(channel, role, future)
        return self._subscribed(channel, future)

    async def _subscribed(self, channel: str, answered: asyncio.Future) -> StreamPosition:
        error = await answered
        if error is not None:
            raise BrokerError(error, code=UNAVAILABLE)
        # The ring holds everything up to Redis's position: track the channel from where its table is.
        epoch, offset = self.engine.subscribe(channel)
        self.delivering.add(channel.encode())
        return StreamPosition(offset, epoch)

    def unsubscribe(self, channel: str) -> None:
        name = channel.encode()
        if name not in self.delivering:
            return
        self.delivering.discard(name)
        self.engine.unsubscribe(channel)
        role = self.engine.role_of_channel(name)
        if role == self.engine.role:
            self.owner.unwant(name, self.bus_slot)
        else:
            self._send_interest(UNSUBSCRIBE, role, 0, name)

    def history(self, channel: str, since: StreamPosition, upto: int):
        found = super().history(channel, since, upto)
        if found is not None:
            return found
        return self._redis_history(channel, since, upto)

    async def _redis_history(
        self, channel: str, since: StreamPosition, upto: int
    ) -> list[tuple[int, bytes, bytes]] | None:
        try:
            result = await self.cluster.history(channel, RedisPosition(since.epoch, since.offset), upto=upto)
        except ClusterError as exc:
            raise BrokerError(str(exc), code=UNAVAILABLE) from None
        if result.publications is None:
            return None
        return [(p.offset, p.data, p.user.encode() if p.user else b"") for p in result.publications]

    # -- asking the role's holder --

    def _ask(self, channel: str, role: int, future: asyncio.Future) -> None:
        self._tokens += 1
        token = self._tokens
        timer = self.loop.call_later(self.ask_timeout_s, self._ask_timed_out, token)
        self.asking[token] = _Asking(channel, role, future, timer)
        self._send_interest(SUBSCRIBE, role, token, channel.encode())

    def _send_interest(self, kind: int, role: int, token: int, name: bytes) -> None:
        self.engine.append_record(TAG_INTEREST, encode_interest(kind, role, self.bus_slot, token, name))
        holder = self.engine.role_holder(role)
        if holder is not None:
            self.engine.ring_doorbell(holder)  # with no holder (a hand-over), the next one reads it

    def _answered(self, token: int, error: str | None) -> None:
        asking = self.asking.pop(token, None)
        if asking is not None:
            asking.timer.cancel()
            _settle(asking.future, error)

    def _ask_timed_out(self, token: int) -> None:
        asking = self.asking.get(token)
        if asking is not None:
            self._answered(token, f"cluster unavailable: the worker holding the role of channel {asking.channel!r} "
                                  f"did not answer within {self.ask_timeout_s:g} s")  # fmt: skip

    # -- the records of cluster mode, in ring order --

    def _on_record(self, slot: int, tag: int, payload: bytes) -> None:
        if tag == TAG_INTEREST:
            if peek_interest_role(payload) != self.engine.role:
                return
            request = decode_interest(payload)
            if request.kind == SUBSCRIBE:
                origin, token = request.origin, request.token
                self.owner.want(request.channel, origin, lambda error: self.owner.reply(origin, token, error))
            elif request.kind == RESYNC:
                self.owner.want(request.channel, request.origin, None, resync=True)
            else:
                self.owner.unwant(request.channel, request.origin)
        elif tag == TAG_INTEREST_REPLY:
            if peek_reply_origin(payload) == self.bus_slot:
                reply = decode_interest_reply(payload)
                self._answered(reply.token, reply.error or None)
        elif tag == TAG_GAP:
            gap = decode_gap(payload)
            if self.engine.restart_tracked(gap.channel, gap.epoch, gap.offset):
                self.on_gap(gap.channel, gap.epoch, gap.offset)
        elif tag == TAG_OWNER and slot != self.bus_slot:
            role = decode_owner(payload).role
            if role != self.engine.role:
                self._interest_again(role)

    def _interest_again(self, role: int) -> None:
        """A new process holds `role`: it must learn what we deliver and what we wait for."""
        for name in self.delivering:
            if self.engine.role_of_channel(name) == role:
                self._send_interest(RESYNC, role, 0, name)
        for token, asking in self.asking.items():
            if asking.role == role:
                self._send_interest(SUBSCRIBE, role, token, asking.channel.encode())

    # -- status --

    def status(self) -> dict:
        """The cluster state of this process (wsd.server.cluster.host merges the host's)."""
        status = self.cluster.status()
        status["owner"] = self.owner.status()
        status["role"] = self.engine.role
        status["pid"] = os.getpid()
        if self.server_api_status is not None:
            status["server_api"] = self.server_api_status()
        return status

    def shard_states(self) -> list:
        """This process's view of each Redis, for readiness and the metrics (ShardState)."""
        return shard_states(self.cluster.status())

    def _write_status(self) -> None:
        write_status(self.status_path, self.status())


def _settle(future: asyncio.Future, error: str | None) -> None:
    if not future.done():
        future.set_result(error)


def cluster_broker(shm_arguments: tuple, config, node, node_id: str | None, status_dir: str | None) -> ClusterBroker:
    """The broker of a worker with `--cluster`: ShmBroker's arguments, the settings, the node (its
    deliveries and gap notices), the host's node id and status directory from the supervisor."""
    bus_slot = shm_arguments[1]
    client = ClusterClient(config.cluster, node_id=node_id, timeout_s=config.cluster_timeout,
                           history_size=config.history_size, history_ttl_s=config.history_ttl)  # fmt: skip
    path = status_path(status_dir, bus_slot) if status_dir else None
    return ClusterBroker(*shm_arguments, cluster=client, on_gap=node.deliver_gap, status_path=path)


def _publish_error(error: ClusterError) -> BrokerError:
    """The BrokerError a client or the API gets for a publish Redis did not take."""
    if isinstance(error, ClusterReplyError):
        return BrokerError(str(error), code=PUBLISH_FAILED, status=503)
    return BrokerError(str(error), code=UNAVAILABLE, status=503)
