"""A WebSocket client of wsd for the cluster tests: it records every message and `gap` per channel
(in arrival order) and matches replies to requests by id; `check_sequence` is the verdict on what a
subscriber received (contiguous offsets, or a `gap` in between, never a hole or a duplicate)."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed


@dataclass
class Client:
    websocket: ClientConnection
    # channel -> ("msg", off, data) / ("gap", off, epoch), in arrival order
    received: dict[str, list[tuple]] = field(default_factory=dict)
    replies: dict[Any, asyncio.Future] = field(default_factory=dict)
    errors: list[dict] = field(default_factory=list)
    notices: list[dict] = field(default_factory=list)
    closed: bool = False
    _ids: int = 0
    _reader: asyncio.Task | None = None

    @classmethod
    async def open(cls, url: str, sock: socket.socket | None = None, timeout: float = 10.0) -> Client:
        websocket = await connect(url, sock=sock, ping_interval=None, open_timeout=timeout, close_timeout=2,
                                  max_queue=None)  # fmt: skip
        client = cls(websocket)
        client._reader = asyncio.get_running_loop().create_task(client._read())
        return client

    async def _read(self) -> None:
        try:
            async for text in self.websocket:
                message = json.loads(text)
                op = message.get("op")
                if op == "msg":
                    self.received.setdefault(message["ch"], []).append(("msg", message["off"], message["data"]))
                elif op == "gap":
                    self.received.setdefault(message["ch"], []).append(("gap", message["off"], message["epoch"]))
                elif op == "unsub":  # a server notice: the server ended the subscription
                    self.notices.append(message)
                elif op in ("ok", "err"):
                    future = self.replies.pop(message.get("id"), None)
                    if future is not None and not future.done():
                        future.set_result(message)
                    elif op == "err":
                        self.errors.append(message)
        except ConnectionClosed:
            pass
        finally:
            self.closed = True

    async def request(self, message: dict, timeout: float = 10.0) -> dict:
        self._ids += 1
        message = {**message, "id": self._ids}
        future = asyncio.get_running_loop().create_future()
        self.replies[self._ids] = future
        await self.websocket.send(json.dumps(message))
        return await asyncio.wait_for(future, timeout)

    async def sub(self, channel: str, since: tuple[int, int] | None = None, timeout: float = 10.0) -> dict:
        message: dict[str, Any] = {"op": "sub", "ch": channel}
        if since is not None:
            message["since"] = {"off": since[0], "epoch": since[1]}
        return await self.request(message, timeout)

    async def unsub(self, channel: str) -> dict:
        return await self.request({"op": "unsub", "ch": channel})

    async def pub(self, channel: str, data: Any, timeout: float = 10.0) -> dict:
        return await self.request({"op": "pub", "ch": channel, "data": data}, timeout)

    def offsets(self, channel: str) -> list[int]:
        return [entry[1] for entry in self.received.get(channel, []) if entry[0] == "msg"]

    def data(self, channel: str) -> list[Any]:
        return [entry[2] for entry in self.received.get(channel, []) if entry[0] == "msg"]

    async def close(self) -> None:
        await self.websocket.close()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)


async def wait_for(condition, timeout: float, what: str, interval: float = 0.02) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)


def check_sequence(entries: list[tuple], first: int) -> list[str]:
    """Problems with what one subscriber received on one channel, starting after offset first - 1:
    every message follows the previous one (or the last `gap`), none repeats, none is skipped."""
    problems = []
    expected = first
    for entry in entries:
        if entry[0] == "gap":
            expected = entry[1] + 1
        elif entry[1] != expected:
            kind = "duplicate" if entry[1] < expected else "hole"
            problems.append(f"{kind}: offset {entry[1]} where {expected} was expected")
            expected = max(expected, entry[1] + 1)
        else:
            expected += 1
    return problems


class ResumingClient:
    """A client that, like wsd.js, reconnects when its connection closes and resubscribes each of
    its channels with `since` = the last offset it saw. `received(channel)` is everything of every
    connection, in order (a `sub` answered `recovered:false` counts as a gap), so the whole
    sequence can be checked across reconnections."""

    def __init__(self, connect, channels: list[str], reconnect_delay=lambda: 0.05):
        self.connect = connect  # connect(): awaitable Client (a fresh connection, e.g. through a namespace)
        self.reconnect_delay = reconnect_delay  # seconds before the next attempt (wsd.js: full jitter)
        self.channels = channels
        self.connections: list[Client] = []
        # channel -> (connection index, ("start" | "gap", off, epoch)): where a connection's `sub` began
        # the channel's sequence (the first one) or was not recovered (a gap)
        self.markers: dict[str, list[tuple[int, tuple]]] = {}
        self.first: dict[str, int] = {}  # the first offset expected on each channel
        self.handshake_failures: list[tuple[float, str]] = []  # (time.time(), what)
        self.other_failures: list[str] = []
        self.replies: list[dict] = []
        self._stop = False
        self._task: asyncio.Task | None = None
        self._subscribed = asyncio.Event()

    async def start(self, timeout: float = 30) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())
        await asyncio.wait_for(self._subscribed.wait(), timeout)

    @property
    def reconnects(self) -> int:
        return max(len(self.connections) - 1, 0)

    def received(self, channel: str) -> list[tuple]:
        entries: list[tuple] = []
        gaps = dict(self.markers.get(channel, []))
        for index, client in enumerate(self.connections):
            if index in gaps:
                entries.append(gaps[index])
            entries.extend(client.received.get(channel, []))
        return entries

    def position(self, channel: str) -> tuple[int, int] | None:
        """(last offset seen, its epoch) over every connection, None before the first `ok`."""
        position = None
        for entry in self.received(channel):
            if entry[0] == "gap" or entry[0] == "start":
                position = (entry[1], entry[2])
            elif position is not None:
                position = (entry[1], position[1])
        return position

    def offsets(self, channel: str) -> list[int]:
        return [entry[1] for entry in self.received(channel) if entry[0] == "msg"]

    def problems(self, channel: str) -> list[str]:
        entries = [entry for entry in self.received(channel) if entry[0] != "start"]
        return check_sequence(entries, self.first.get(channel, 1))

    async def _run(self) -> None:
        while not self._stop:
            try:
                client = await self.connect()
            except Exception as exc:  # noqa: BLE001 - a failed handshake: counted, and retried
                self.handshake_failures.append((time.time(), repr(exc)))
                await asyncio.sleep(self.reconnect_delay())
                continue
            index = len(self.connections)
            self.connections.append(client)
            try:
                for channel in self.channels:
                    since = self.position(channel)
                    reply = await client.sub(channel, since=since)
                    self.replies.append(reply)
                    if reply["op"] != "ok":
                        raise RuntimeError(f"sub {channel}: {reply}")
                    if since is None:
                        self.first[channel] = reply["off"] + 1
                    if since is None or not reply.get("recovered"):
                        marker = ("start" if since is None else "gap", reply["off"], reply["epoch"])
                        self.markers.setdefault(channel, []).append((index, marker))
                self._subscribed.set()
                await asyncio.gather(client._reader, return_exceptions=True)
            except (ConnectionClosed, RuntimeError, TimeoutError, OSError) as exc:
                self.other_failures.append(repr(exc))
            await client.close()
            if not self._stop:
                await asyncio.sleep(self.reconnect_delay())

    async def stop(self) -> None:
        self._stop = True
        if self.connections:
            await self.connections[-1].close()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
