"""The server API across hosts with `--cluster`: "disconnect this user", "unsubscribe", "how many
subscribers" carried out on every worker of every other host, over Redis pub/sub.

Every worker process of every host (not only one per host: no election, and during a rolling
reload the old and new process of a slot both answer, as over the intercom) does three things:

- it is a member: once it listens (below), and then every REFRESH_S, it puts itself into the sorted
  set `wsd:{#api}:members`, scored with Redis's clock plus MEMBER_TTL_S (a script, so hosts' clocks
  do not matter), and drops the expired members; joining, it drops its host's member of the same
  bus slot (a process that died: a bus slot is unique among a host's live processes); a clean stop
  removes it at once.
- it listens on one pub/sub connection to `wsd:{#api}:requests` and to its own reply channel
  `wsd:{#api}:reply:TOKEN`. A request from another host (`"from"` is not our node id) is carried
  out on this worker alone (ServerApi.local) and answered on the requester's reply channel.
- it asks: ServerApi.gathered asks the local workers over the intercom and the other hosts here:
  read the live members of other hosts, publish the request, wait for each of them (at most the
  cluster timeout). A member that did not answer (a frozen host) is named, like a frozen local
  worker is; if Redis cannot be reached the answer says the other hosts could not be asked.

Everything lives in one hash slot (tag `{#api}`: `#` is never in a channel name, so no wsd channel's
keys can collide) and so on one Redis: `ClusterClient.shard_for(ROUTING_NAME)`, the rendezvous pick
among independent instances or the slot's master in a Redis Cluster (SSUBSCRIBE/SPUBLISH there).

The message encoding, the member names and the combining of answers (`Gathering`) are sans-I/O.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from redis.exceptions import RedisError, ResponseError

from wsd.server.cluster.connection import make_connection
from wsd.server.cluster.errors import ClusterError

log = logging.getLogger("wsd.cluster")

ROUTING_NAME = "#api"  # routed like a channel of this name: one deterministic Redis for all of it
MEMBERS_KEY = "wsd:{#api}:members"
REQUESTS_CHANNEL = "wsd:{#api}:requests"
REPLY_PREFIX = "wsd:{#api}:reply:"
MEMBER_TTL_S = 10.0
REFRESH_S = 3.0
PING = b"ping"  # published to our own reply channel each refresh: proves the subscription delivers

# KEYS[1] the members set; ARGV[1] the member, ARGV[2] its TTL in ms, ARGV[3] "NODE_ID BUS_SLOT " on
# joining: a member of that host and bus slot with another token is a process that died (a bus slot
# is unique among a host's live processes), so it is not waited for until it expires. Scored by
# Redis's clock.
REFRESH_SCRIPT = """
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ms)
if ARGV[3] ~= '' then
  for _, member in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
    if member ~= ARGV[1] and string.sub(member, 1, string.len(ARGV[3])) == ARGV[3] then
      redis.call('ZREM', KEYS[1], member)
    end
  end
end
redis.call('ZADD', KEYS[1], ms + tonumber(ARGV[2]), ARGV[1])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) * 3 then
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 3)
end
return 1
"""
LIVE_SCRIPT = """
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ms, '+inf')
"""

Handler = Callable[[dict[str, Any]], dict[str, Any]]


# -- sans-I/O: names, messages, combining --


@dataclass(frozen=True)
class Member:
    """One worker process of one host, as the members set names it: `NODE_ID BUS_SLOT TOKEN`."""

    node_id: str
    bus_slot: int
    token: str

    def encode(self) -> str:
        return f"{self.node_id} {self.bus_slot} {self.token}"

    @property
    def reply_channel(self) -> str:
        return REPLY_PREFIX + self.token

    @classmethod
    def parse(cls, text: str | bytes) -> Member | None:
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        parts = text.split(" ")
        if len(parts) != 3 or not parts[0] or not parts[1].isdigit() or not parts[2]:
            return None
        return cls(parts[0], int(parts[1]), parts[2])


def encode_request(request_id: str, sender: Member, request: dict[str, Any]) -> bytes:
    return orjson.dumps({"id": request_id, "from": sender.node_id, "reply": sender.reply_channel,
                         "request": request})  # fmt: skip


def encode_answer(request_id: str, member: Member, answer: dict[str, Any]) -> bytes:
    return orjson.dumps({"id": request_id, "member": member.encode(), "answer": answer})


def decode_request(data: bytes) -> dict[str, Any] | None:
    """A request message, or None for anything that is not one (it is ignored)."""
    message = _json_object(data)
    if message is None or not isinstance(message.get("id"), str) or not isinstance(message.get("from"), str):
        return None
    reply, request = message.get("reply"), message.get("request")
    # Answers go only to reply channels: a bad message cannot make us publish elsewhere.
    if not isinstance(reply, str) or not reply.startswith(REPLY_PREFIX) or not isinstance(request, dict):
        return None
    return message


def decode_answer(data: bytes) -> dict[str, Any] | None:
    message = _json_object(data)
    if message is None or not isinstance(message.get("id"), str) or not isinstance(message.get("answer"), dict):
        return None
    if not isinstance(message.get("member"), str) or Member.parse(message["member"]) is None:
        return None
    return message


def _json_object(data: bytes) -> dict[str, Any] | None:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def answer_locally(handler: Handler, request: dict[str, Any]) -> dict[str, Any]:
    """The handler's answer, or {"error"} (a bad or failing request never ends the listener)."""
    try:
        answer = handler(request)
    except Exception as exc:
        log.warning("cluster: server API request %r from another host failed: %r", request.get("op"), exc)
        return {"error": f"{request.get('op')!r} failed: {exc!r}"}
    return answer if isinstance(answer, dict) else {"error": "the operation gave no answer"}


@dataclass
class Gathering:
    """The answers to one request from the members of the other hosts."""

    expected: list[Member]
    answers: dict[Member, dict[str, Any]] = field(default_factory=dict)

    def add(self, message: dict[str, Any]) -> None:
        """A decoded answer. One of a member that was not expected (it joined since the members
        were read) counts too: its sessions are part of the cluster."""
        member = Member.parse(message["member"])
        if member is not None:
            self.answers.setdefault(member, message["answer"])

    @property
    def complete(self) -> bool:
        return all(member in self.answers for member in self.expected)

    def outcome(self, timeout_s: float) -> tuple[list[dict[str, Any]], list[str]]:
        """(the answers to add up, what went wrong: one text per host that did not fully answer)."""
        good = [answer for answer in self.answers.values() if "error" not in answer]
        silent: dict[str, list[int]] = {}
        for member in self.expected:
            if member not in self.answers:
                silent.setdefault(member.node_id, []).append(member.bus_slot)
        failures = [f"host {node_id}: worker(s) at bus slot(s) {', '.join(map(str, sorted(slots)))} did not "
                    f"answer within {timeout_s:g} s" for node_id, slots in sorted(silent.items())]  # fmt: skip
        for member, answer in sorted(self.answers.items(), key=lambda item: item[0].encode()):
            if "error" in answer:
                failures.append(f"host {member.node_id}: worker at bus slot {member.bus_slot}: {answer['error']}")
        return good, failures


def cannot_ask(reason: str) -> str:
    return f"the other hosts could not be asked: {reason}"


# -- the I/O: one per worker process --


class HostsApi:
    """This worker's part in the cross-host server API (see the module docstring).

    `ask(request)` is ServerApi.other_hosts; `handler` is ServerApi.remote (checks, then local)."""

    def __init__(self, cluster: Any, bus_slot: int, handler: Handler, timeout_s: float | None = None):
        self.cluster = cluster  # wsd.server.cluster.ClusterClient
        self.handler = handler
        self.timeout_s = cluster.timeout_s if timeout_s is None else timeout_s
        self.member = Member(cluster.node_id, bus_slot, secrets.token_hex(6))
        self.sharded = cluster.spec.mode == "cluster"
        self.subscribed = False
        self.last_error = "not connected to Redis yet"
        self.requests_answered = 0
        self._pending: dict[str, tuple[Gathering, asyncio.Event]] = {}
        self._connection = None
        self._subscribed_at = 0.0
        self._ping_seen = 0.0
        self._tasks: list[asyncio.Task] = []
        self._background: set[asyncio.Task] = set()

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._listen()), loop.create_task(self._refresh())]

    async def close(self) -> None:
        """Stop listening and leave the members set (best effort: it expires anyway)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        try:
            await self._execute("ZREM", MEMBERS_KEY, self.member.encode(), timeout_s=min(self.timeout_s, 0.5))
        except (ClusterError, ResponseError):
            pass

    # -- asking the other hosts --

    async def ask(self, request: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
        """`request` on every worker of every other live host: (their answers, failures)."""
        if not self.subscribed:
            return [], [cannot_ask(self.last_error)]
        try:
            names = await self._execute("EVAL", LIVE_SCRIPT, 1, MEMBERS_KEY)
        except (ClusterError, ResponseError) as exc:
            return [], [cannot_ask(str(exc))]
        members = [member for member in map(Member.parse, names) if member is not None]
        expected = [member for member in members if member.node_id != self.member.node_id]
        if not expected:
            return [], []
        request_id = secrets.token_hex(8)
        gathering, arrived = Gathering(expected), asyncio.Event()
        self._pending[request_id] = (gathering, arrived)
        try:
            message = encode_request(request_id, self.member, request)
            await self._execute(self._publish_command, REQUESTS_CHANNEL, message)
            try:
                async with asyncio.timeout(self.timeout_s):
                    while not gathering.complete:
                        arrived.clear()
                        await arrived.wait()
            except TimeoutError:
                pass
        except (ClusterError, ResponseError) as exc:
            answers, _ = gathering.outcome(self.timeout_s)
            return answers, [cannot_ask(str(exc))]
        finally:
            del self._pending[request_id]
        return gathering.outcome(self.timeout_s)

    @property
    def _publish_command(self) -> str:
        return "SPUBLISH" if self.sharded else "PUBLISH"

    async def _execute(self, *args, timeout_s: float | None = None):
        shard = self.cluster.shard_for(ROUTING_NAME)  # ClusterUnavailable while a cluster's map is unknown
        return await shard.commands.execute(*args, timeout_s=timeout_s)

    # -- membership --

    async def _refresh(self) -> None:
        joined = False
        while True:
            if not joined and not self.subscribed:
                await asyncio.sleep(0.05)  # joined only once it hears requests: no one waits for it before
                continue
            try:
                predecessor = "" if joined else f"{self.member.node_id} {self.member.bus_slot} "
                await self._execute("EVAL", REFRESH_SCRIPT, 1, MEMBERS_KEY, self.member.encode(),
                                    int(MEMBER_TTL_S * 1000), predecessor)  # fmt: skip
                joined = True
                if self.subscribed:
                    await self._execute(self._publish_command, self.member.reply_channel, PING)
            except (ClusterError, ResponseError) as exc:
                log.debug("cluster: server API membership refresh failed: %s", exc)
            except Exception:  # the membership must go on whatever one round did
                log.exception("cluster: server API membership refresh failed")
            await asyncio.sleep(REFRESH_S)
            # A connection that stays open but no longer delivers (its pings stopped coming back).
            now = time.monotonic()
            stale = now - max(self._ping_seen, self._subscribed_at) > 2.5 * REFRESH_S
            if self.subscribed and stale and self._connection is not None:
                log.warning("cluster: the server API's pub/sub connection stopped delivering; rebuilding it")
                self._spawn(self._drop())

    async def _drop(self) -> None:
        connection = self._connection
        if connection is not None:
            await connection.disconnect(nowait=True)

    # -- listening --

    async def _listen(self) -> None:
        delay = 0.05
        while True:
            started = time.monotonic()
            try:
                await self._session()
            except (ClusterError, RedisError, OSError, TimeoutError, _Resubscribe) as exc:
                error = str(exc) or f"no answer within {self.timeout_s:g} s"
                if self.subscribed or error != self.last_error:
                    log.debug("cluster: server API subscription: %s", error)
                self.last_error = error
            except Exception as exc:  # anything unforeseen ends this connection, never the listener
                log.exception("cluster: server API subscription failed")
                self.last_error = f"subscription failed: {exc!r}"
            finally:
                self.subscribed = False
                connection, self._connection = self._connection, None
                if connection is not None:
                    await connection.disconnect(nowait=True)
            if self._subscribed_at > started:
                delay = 0.05  # it was subscribed: a new loss starts the back-off again
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, 1.0)

    async def _session(self) -> None:
        shard = self.cluster.shard_for(ROUTING_NAME)
        connection = self._connection = make_connection(shard.target, connect_timeout_s=self.timeout_s,
                                                        client_name=f"wsd:{self.member.node_id}:api")  # fmt: skip
        async with asyncio.timeout(self.timeout_s):
            await connection.connect()
            await connection.send_command("SSUBSCRIBE" if self.sharded else "SUBSCRIBE", REQUESTS_CHANNEL,
                                          self.member.reply_channel)  # fmt: skip
            for _ in range(2):
                response = await connection.read_response()
                if response[0] not in (b"subscribe", b"ssubscribe"):
                    raise _Resubscribe(f"unexpected reply to the subscription: {response!r:.200}")
        self.subscribed = True
        self._subscribed_at = time.monotonic()
        while True:
            response = await connection.read_response()
            kind = response[0]
            if kind in (b"message", b"smessage"):
                self._on_message(response[1], response[2])
            elif kind in (b"unsubscribe", b"sunsubscribe"):
                raise _Resubscribe("Redis dropped the subscription (its slot moved)")

    def _on_message(self, channel: bytes, data: bytes) -> None:
        if channel == REQUESTS_CHANNEL.encode():
            message = decode_request(data)
            if message is None or message["from"] == self.member.node_id:
                return  # our own host's workers are asked over the intercom
            answer = answer_locally(self.handler, message["request"])
            self.requests_answered += 1
            self._publish_soon(message["reply"], encode_answer(message["id"], self.member, answer))
            return
        if data == PING:
            self._ping_seen = time.monotonic()
            return
        message = decode_answer(data)
        if message is None:
            return
        pending = self._pending.get(message["id"])
        if pending is not None:
            gathering, arrived = pending
            gathering.add(message)
            arrived.set()

    def _publish_soon(self, channel: str, payload: bytes) -> None:
        async def publish() -> None:
            try:
                await self._execute(self._publish_command, channel, payload)
            except (ClusterError, ResponseError) as exc:
                log.warning("cluster: could not answer a server API request of another host: %s", exc)

        self._spawn(publish())

    def _spawn(self, coroutine) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)  # held until done: the loop keeps only weak references
        task.add_done_callback(self._background.discard)

    def status(self) -> dict[str, Any]:
        return {"subscribed": self.subscribed, "member": self.member.encode(), "error": "" if self.subscribed
                else self.last_error, "requests_answered": self.requests_answered}  # fmt: skip


class _Resubscribe(Exception):
    """Ends a listening session so that it starts again."""
