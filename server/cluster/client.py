"""ClusterClient: one per worker process, the façade of the Redis layer. It routes each channel to
its Redis server (rendezvous hash over independent instances, or the hash slot's master in a Redis
Cluster), publishes through the atomic script, holds the pub/sub subscriptions it is asked for,
reads (coalesced) history, and reports its state.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections.abc import Iterable, Sequence

from redis.exceptions import AskError, ClusterDownError, MovedError, ResponseError, TryAgainError

from wsd.server.cluster import keys
from wsd.server.cluster.commands import Request, ShardCommands, wait_requests
from wsd.server.cluster.errors import ClusterError, ClusterOutcomeUnknown, ClusterReplyError, ClusterUnavailable
from wsd.server.cluster.history import HistoryCoalescer
from wsd.server.cluster.model import (
    HistoryResult,
    Publication,
    PublicationCallback,
    PublishResult,
    RebuiltCallback,
    StreamPosition,
)
from wsd.server.cluster.pubsub import PubSubLink
from wsd.server.cluster.scripts import history_args, parse_history_reply, parse_publish_reply, publish_args
from wsd.server.cluster.sharding import Rendezvous
from wsd.server.cluster.topology import SlotMap, discover
from wsd.server.cluster.urls import ClusterSpec, RedisTarget, parse_cluster_urls

log = logging.getLogger("wsd.cluster")

# Replies that mean "this server does not serve that slot (now)": the script did not run, so sending
# it again to the right master is safe.
_REROUTE = (MovedError, AskError, TryAgainError, ClusterDownError)
DEFAULT_META_TTL_S = 30 * 86400


def new_node_id() -> str:
    """An id unique to this run of a host: its name plus random bits (hosts may share a name)."""
    return f"{socket.gethostname()}-{secrets.token_hex(4)}"


class Shard:
    """One Redis server: its command path, its pub/sub connection, and its state for status."""

    def __init__(self, client: ClusterClient, target: RedisTarget, slots: list[tuple[int, int]] | None,
                 wanted: Iterable[str] = ()):  # fmt: skip
        self.target = target
        self.slots = slots
        self.catch_ups = 0
        self.up: bool | None = None
        self._client = client
        name = f"wsd:{client.node_id}"
        self.commands = ShardCommands(target, timeout_s=client.timeout_s, client_name=name,
                                      max_batch=client.max_batch, on_state=self._commands_state)  # fmt: skip
        self.link = PubSubLink(
            target, sharded=slots is not None, timeout_s=client.timeout_s, probe_interval_s=client.probe_interval_s,
            probe_token=f"{client.node_id}.{os.getpid()}.{secrets.token_hex(3)}", slots=slots,
            on_publication=client._deliver, on_rebuilt=client._rebuilt, probe_publish=self._probe_publish,
            client_name=name, on_moved=client._topology_changed, on_state=self._link_state, wanted=wanted,
        )  # fmt: skip

    def start(self) -> None:
        self.link.start()

    async def close(self) -> None:
        await self.link.close()
        await self.commands.close()

    async def _probe_publish(self, channel: str) -> int:
        command = "SPUBLISH" if self.slots is not None else "PUBLISH"
        reply = await self.commands.wait(self.commands.submit(command, channel, b"probe"))
        if isinstance(reply, ResponseError):
            raise ClusterReplyError(f"{self.target.shown}: probe: {reply}")
        return int(reply)

    def _commands_state(self, up: bool, detail: str) -> None:
        self._update(detail)

    def _link_state(self, up: bool, detail: str) -> None:
        if up and self.commands.up is False:
            self.commands.submit("PING")  # let the command path find out it is back, too
        if not up and self._client.spec.mode == "cluster":
            self._client._topology_changed()
        self._update(detail)

    def _update(self, detail: str) -> None:
        up = self.link.up and self.commands.up is not False
        if up == self.up:
            return
        if up:
            if self.up is not None:
                log.warning("cluster: %s is up again", self.target.shown)
        else:
            error = detail or self.commands.last_error or self.link.last_error
            log.warning("cluster: %s is down: %s", self.target.shown, error)
        self.up = up

    @property
    def state(self) -> str:
        return "up" if self.link.up and self.commands.up is not False else "down"

    def status(self) -> dict:
        return {
            "url": self.target.shown,
            "state": self.state,
            "pubsub": "up" if self.link.up else "down",
            "error": "" if self.state == "up" else (self.commands.last_error or self.link.last_error),
            "channels": len(self.link.active),
            "publish_rtt_ms": self.commands.rtt_median_ms,
            "round_trips": self.commands.round_trips,
            "commands": self.commands.commands_sent,
            "messages_received": self.link.messages,
            "rebuilds": self.link.rebuilds,
            "probes": self.link.probes,
            "probe_failures": self.link.probe_failures,
            "catch_ups": self.catch_ups,
        }


class ClusterClient:
    """The Redis layer of one worker process. See docs/cluster.md for keys, payloads and failures.

    on_publication(channel, epoch, offset, data, ts_ns, user) is called for every message Redis
    delivers on a subscribed channel, in the order Redis sent them (per channel: offset order).
    on_rebuilt(channels) is called when a pub/sub connection was rebuilt (or channels moved to
    another cluster master) and those channels are subscribed again: messages published meanwhile
    must be caught up with read_since().
    """

    def __init__(
        self, urls: Sequence[str] | str | ClusterSpec, *, node_id: str | None = None, timeout_s: float = 2.0,
        history_size: int = 100, history_ttl_s: float = 300.0, meta_ttl_s: float | None = None,
        probe_interval_s: float = 5.0, max_batch: int = 512, topology_refresh_s: float = 10.0,
        on_publication: PublicationCallback | None = None, on_rebuilt: RebuiltCallback | None = None,
    ):  # fmt: skip
        self.spec = urls if isinstance(urls, ClusterSpec) else parse_cluster_urls(urls)
        if timeout_s <= 0:
            raise ClusterError(f"cluster timeout must be > 0 seconds, got {timeout_s}")
        if history_size < 0 or history_ttl_s < 0:
            raise ClusterError("history size and TTL must be >= 0")
        self.node_id = node_id or new_node_id()
        self.timeout_s = timeout_s
        self.history_size = history_size
        self.history_ttl_s = history_ttl_s
        # The epoch lives as long as the channel's meta hash: much longer than its messages, so an
        # idle channel keeps its epoch (and clients with old positions get recovered:false, not a gap).
        meta_ttl = DEFAULT_META_TTL_S if meta_ttl_s is None else meta_ttl_s
        self.meta_ttl_s = max(int(meta_ttl), int(history_ttl_s) * 2, 1)
        self.probe_interval_s = probe_interval_s
        self.max_batch = max_batch
        self.topology_refresh_s = topology_refresh_s
        self.on_publication = on_publication
        self.on_rebuilt = on_rebuilt
        self.catch_ups = 0
        self._rendezvous = Rendezvous([t.key for t in self.spec.targets]) if self.spec.mode == "instances" else None
        self._slot_map: SlotMap | None = None
        self._slot_shards: list[Shard] = []
        self._history = HistoryCoalescer(self._read_history, history_ttl_s, history_size)
        self._refresh_task: asyncio.Task | None = None
        self._refresh_wanted = False
        self._periodic: asyncio.Task | None = None
        self._closed = False
        self._started = False
        # Independent instances are known up front (routing works before start); cluster masters
        # are found by start().
        self.shards: list[Shard] = []
        if self.spec.mode == "instances":
            self.shards = [Shard(self, target, None) for target in self.spec.targets]

    # -- life cycle --

    async def start(self) -> None:
        """Create the connections; returns at once even if Redis is unreachable (the links keep
        trying, and requests fail with ClusterUnavailable meanwhile)."""
        if self._started:
            return
        self._started = True
        if self.spec.mode == "instances":
            for shard in self.shards:
                shard.start()
            return
        try:
            self._apply_topology(await discover(self.spec.targets, self.timeout_s, f"wsd:{self.node_id}"))
        except ClusterUnavailable as exc:
            log.warning("cluster: %s; retrying in the background", exc)
            self._topology_changed()
        self._periodic = asyncio.get_running_loop().create_task(self._refresh_periodically())

    async def wait_up(self, timeout_s: float) -> bool:
        """Wait until every shard is up (or timeout_s passed); True if they are."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.shards and all(shard.link.up for shard in self.shards):
                return True
            await asyncio.sleep(0.01)
        return False

    async def close(self) -> None:
        self._closed = True
        for task in (self._periodic, self._refresh_task):
            if task is not None:
                task.cancel()
        for shard in self.shards:
            await shard.close()

    # -- routing --

    def shard_for(self, channel: str) -> Shard:
        """The shard that serves `channel`; ClusterUnavailable if none does (cluster topology unknown)."""
        if "{" in channel or "}" in channel:
            raise ValueError(f"channel names must not contain braces, got {channel!r}")
        if self._rendezvous is not None:
            return self.shards[self._rendezvous.pick(channel)]
        if self._slot_map is None:
            raise ClusterUnavailable("the Redis Cluster's slot map is not known yet")
        index = self._slot_map.owner[keys.slot_of(channel)]
        if index < 0:
            raise ClusterUnavailable(f"no Redis Cluster master serves the slot of {channel!r}")
        return self._slot_shards[index]

    # -- publishing --

    def _publish_request(self, channel: str, data: bytes, user: str | None) -> tuple[Shard, Request]:
        shard = self.shard_for(channel)
        args = publish_args(
            keys.meta_key(channel), keys.stream_key(channel), keys.pubsub_channel(channel), data, user,
            history_size=self.history_size if self.history_ttl_s > 0 else 0,
            history_ttl_s=max(int(self.history_ttl_s + 0.999), 1), meta_ttl_s=self.meta_ttl_s,
            sharded=self.spec.mode == "cluster",
        )  # fmt: skip
        return shard, shard.commands.submit("EVALSHA", *args)

    async def publish(self, channel: str, data: bytes, user: str | None = None) -> PublishResult:
        """Publish JSON bytes to a channel: the next offset, the stream and pub/sub in one script.
        Raises ClusterUnavailable (not sent; never delivered) or ClusterOutcomeUnknown (sent, no
        reply) within the timeout, ClusterReplyError if Redis refused it."""
        (result,) = await self.publish_batch([(channel, data, user)])
        if isinstance(result, BaseException):
            raise result
        return result

    async def publish_batch(self, items: Sequence[tuple[str, bytes, str | None]]) -> list[PublishResult | ClusterError]:
        """Publish several messages in as few round trips as possible (one per Redis server); the
        results are in item order, each a PublishResult or the ClusterError of that item."""
        deadline = time.monotonic() + self.timeout_s
        results: list[PublishResult | ClusterError | None] = [None] * len(items)
        todo = list(range(len(items)))
        for _ in range(3):  # a cluster reroute (MOVED) is retried, within the same deadline
            pairs: list[tuple[ShardCommands, Request]] = []
            sent: list[int] = []
            for index in todo:
                channel, data, user = items[index]
                try:
                    shard, request = self._publish_request(channel, data, user)
                except ClusterError as exc:
                    results[index] = exc
                    continue
                pairs.append((shard.commands, request))
                sent.append(index)
            replies = await wait_requests(pairs, max(deadline - time.monotonic(), 0.001))
            todo = []
            for index, (commands, _), reply in zip(sent, pairs, replies, strict=True):
                if isinstance(reply, _REROUTE):
                    todo.append(index)
                    results[index] = ClusterUnavailable(f"{commands.target.shown}: {reply}")
                elif isinstance(reply, ClusterError):
                    results[index] = reply
                elif isinstance(reply, ResponseError):
                    results[index] = ClusterReplyError(f"{commands.target.shown}: publish refused: {reply}")
                else:
                    results[index] = PublishResult(*parse_publish_reply(reply))
            if not todo or time.monotonic() >= deadline:
                break
            await self._refresh_topology_now(deadline)
        return results  # type: ignore[return-value]

    # -- subscriptions --

    def _by_shard(self, channels: Iterable[str]) -> dict[Shard, list[str]]:
        groups: dict[Shard, list[str]] = {}
        for channel in dict.fromkeys(channels):
            groups.setdefault(self.shard_for(channel), []).append(channel)
        return groups

    async def subscribe(self, channels: Iterable[str]) -> None:
        """Subscribe this process to channels in Redis; returns when Redis confirmed every one.
        ClusterUnavailable if any shard is down or does not confirm in time: then none of the
        channels newly asked for stays subscribed."""
        groups = self._by_shard(channels)
        results = await asyncio.gather(*(shard.link.subscribe(chs) for shard, chs in groups.items()),
                                       return_exceptions=True)  # fmt: skip
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            done = [chs for (shard, chs), r in zip(groups.items(), results, strict=True) if r is None]
            await self.unsubscribe([channel for chs in done for channel in chs])
            raise failures[0]

    async def unsubscribe(self, channels: Iterable[str]) -> None:
        """Drop channels' Redis subscriptions; returns when Redis confirmed (never raises for an
        outage: a down connection holds no subscription, and is not resubscribed to these)."""
        try:
            groups = self._by_shard(channels)
        except ClusterUnavailable:
            return
        await asyncio.gather(*(shard.link.unsubscribe(chs) for shard, chs in groups.items()))

    def subscribed(self) -> set[str]:
        """Channels Redis confirmed on the current connections."""
        return set().union(*(shard.link.active for shard in self.shards)) if self.shards else set()

    def _deliver(self, channel: str, epoch: int, offset: int, data: bytes, ts_ns: int, user: str | None) -> None:
        if self.on_publication is not None:
            self.on_publication(channel, epoch, offset, data, ts_ns, user)

    def _rebuilt(self, channels: list[str]) -> None:
        if self.on_rebuilt is not None:
            self.on_rebuilt(channels)

    # -- history --

    async def history(
        self, channel: str, since: StreamPosition | None, *, limit: int | None = None, upto: int | None = None
    ) -> HistoryResult:
        """Messages after `since` (at most `limit`, default the history size; up to offset `upto`
        if given), coalesced with concurrent reads of the channel in this process. See HistoryResult."""
        limit = self.history_size if limit is None else limit
        return await self._history.get(channel, since, limit, upto)

    async def read_since(self, channel: str, since: StreamPosition) -> HistoryResult:
        """history() for an owner catching a channel up after on_rebuilt (counted as a catch-up)."""
        self.catch_ups += 1
        try:
            self.shard_for(channel).catch_ups += 1
        except ClusterUnavailable:
            pass
        return await self._history.get(channel, since, self.history_size)

    async def position(self, channel: str) -> StreamPosition:
        """The channel's current (epoch, offset) in Redis; creates its epoch if it has none yet."""
        return (await self._history.get(channel, None, 0)).position

    async def _read_history(self, channel: str, after: int, count: int) -> tuple[int, int, int, list[Publication]]:
        deadline = time.monotonic() + self.timeout_s
        for _ in range(3):
            shard = self.shard_for(channel)
            args = history_args(keys.meta_key(channel), keys.stream_key(channel), after, count, self.meta_ttl_s)
            try:
                reply = await shard.commands.wait(shard.commands.submit("EVALSHA", *args),
                                                  max(deadline - time.monotonic(), 0.001))  # fmt: skip
            except ClusterOutcomeUnknown as exc:
                raise ClusterUnavailable(f"{shard.target.shown}: history read got no reply") from exc
            if isinstance(reply, _REROUTE) and time.monotonic() < deadline:
                await self._refresh_topology_now(deadline)
                continue
            if isinstance(reply, ResponseError):
                raise ClusterReplyError(f"{shard.target.shown}: history read refused: {reply}")
            return parse_history_reply(channel, reply)
        raise ClusterUnavailable(f"the slot of {channel!r} kept moving")

    # -- cluster topology --

    def _topology_changed(self) -> None:
        """Something says the slot map moved (MOVED, a dropped shard channel, a lost master)."""
        if self.spec.mode != "cluster" or self._closed:
            return
        self._refresh_wanted = True
        if self._refresh_task is None or self._refresh_task.done():
            self._refresh_task = asyncio.get_running_loop().create_task(self._refresh_loop())

    async def _refresh_loop(self) -> None:
        delay = 0.1
        while self._refresh_wanted and not self._closed:
            self._refresh_wanted = False
            try:
                self._apply_topology(await discover(self._seeds(), self.timeout_s, f"wsd:{self.node_id}"))
                delay = 0.1
            except ClusterUnavailable as exc:
                log.debug("cluster: topology refresh failed: %s", exc)
                self._refresh_wanted = True
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def _refresh_topology_now(self, deadline: float) -> None:
        self._topology_changed()
        task = self._refresh_task
        if task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(task), max(deadline - time.monotonic(), 0.001))
            except (TimeoutError, asyncio.CancelledError):
                pass

    async def _refresh_periodically(self) -> None:
        while not self._closed:
            await asyncio.sleep(self.topology_refresh_s)
            self._topology_changed()

    def _seeds(self) -> list[RedisTarget]:
        known = [shard.target for shard in self.shards]
        return list(self.spec.targets) + [t for t in known if t.key not in {s.key for s in self.spec.targets}]

    def _apply_topology(self, slot_map: SlotMap) -> None:
        """Switch to a new slot map. A master whose slots did not change keeps its connections;
        every other one gets new ones, created with the channels that now belong to it, so they are
        subscribed there and reported to on_rebuilt (their messages meanwhile are caught up)."""
        if self._slot_map is not None and slot_map == self._slot_map:
            return
        seed = self.spec.targets[0]
        old = {(shard.target.host, shard.target.port): shard for shard in self.shards}
        wanted = set().union(*(shard.link.wanted for shard in self.shards)) if self.shards else set()
        new_shards: list[Shard] = []
        for index, (host, port) in enumerate(slot_map.masters):
            ranges = slot_map.ranges(index)
            kept = old.get((host, port))
            if kept is not None and kept.slots == ranges:
                new_shards.append(kept)
                del old[(host, port)]
                continue
            mine = [ch for ch in wanted if slot_map.owner[keys.slot_of(ch)] == index]
            shard = Shard(self, seed.with_address(host, port), ranges, wanted=mine)
            new_shards.append(shard)
        if self._slot_map is not None:
            log.warning("cluster: the Redis Cluster's slot map changed: %d masters", len(slot_map.masters))
        self._slot_map = slot_map
        self._slot_shards = new_shards
        self.shards = new_shards
        for shard in new_shards:
            shard.start()
        for shard in old.values():
            asyncio.get_running_loop().create_task(shard.close())

    # -- status --

    def status(self) -> dict:
        """The cluster's state for `ctl status` (no password anywhere)."""
        shards = [shard.status() for shard in self.shards]
        return {
            "node_id": self.node_id,
            "mode": self.spec.mode,
            "state": "up" if shards and all(s["state"] == "up" for s in shards) else "down",
            "channels": sum(s["channels"] for s in shards),
            "catch_ups": self.catch_ups,
            "history_reads": self._history.reads,
            "history_requests": self._history.requests,
            "shards": shards,
        }
