"""A WebSocket client of wsd for the cluster tests: it records every message and `gap` per channel
(in arrival order) and matches replies to requests by id; `check_sequence` is the verdict on what a
subscriber received (contiguous offsets, or a `gap` in between, never a hole or a duplicate)."""

from __future__ import annotations

import asyncio
import json
import socket
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
    its channels with `since` = the last offset it saw; `received` holds everything of every
    connection, per channel, so the whole sequence can be checked across reconnections."""

    def __init__(self, connect_url, channels: list[str]):
        # connect_url(): awaitable Client (a fresh connection, e.g. through a namespace)
        self.connect_url = connect_url
        self.channels = channels
        self.received: dict[str, list[tuple]] = {channel: [] for channel in channels}
        self.positions: dict[str, tuple[int, int]] = {}
        self.first: dict[str, int] = {}  # the first offset expected on each channel
        self.reconnects = 0
        self.replies: list[dict] = []
        self.failures: list[str] = []
        self._stop = False
        self._task: asyncio.Task | None = None
        self._connected = asyncio.Event()
        self.client: Client | None = None

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())
        await asyncio.wait_for(self._connected.wait(), 20)

    async def _run(self) -> None:
        while not self._stop:
            try:
                client = await self.connect_url()
            except (OSError, TimeoutError, Exception) as exc:  # noqa: BLE001 - a failed handshake: retry
                self.failures.append(repr(exc))
                await asyncio.sleep(0.2)
                continue
            self.client = client
            try:
                for channel in self.channels:
                    since = self.positions.get(channel)
                    reply = await client.sub(channel, since=since)
                    self.replies.append(reply)
                    if reply["op"] != "ok":
                        raise RuntimeError(f"sub {channel}: {reply}")
                    if since is None:
                        self.positions[channel] = (reply["off"], reply["epoch"])
                        self.first[channel] = reply["off"] + 1
                    elif not reply.get("recovered"):
                        self.received[channel].append(("gap", reply["off"], reply["epoch"]))
                        self.positions[channel] = (reply["off"], reply["epoch"])
                self._connected.set()
                while not client.closed and not self._stop:
                    self._collect(client)
                    await asyncio.sleep(0.02)
                self._collect(client)
            except (ConnectionClosed, RuntimeError, TimeoutError, OSError) as exc:
                self.failures.append(repr(exc))
                self._collect(client)
            if not self._stop:
                self.reconnects += 1
                await client.close()
                await asyncio.sleep(0.05)

    def _collect(self, client: Client) -> None:
        """Move what the connection received into the whole record, tracking each position."""
        for channel, entries in client.received.items():
            if channel not in self.received:
                continue
            taken = entries[:]
            del entries[: len(taken)]
            for entry in taken:
                self.received[channel].append(entry)
                off, epoch = self.positions.get(channel, (0, 0))
                if entry[0] == "gap":
                    self.positions[channel] = (entry[1], entry[2])
                elif entry[1] > off:
                    self.positions[channel] = (entry[1], epoch)

    def offsets(self, channel: str) -> list[int]:
        return [entry[1] for entry in self.received[channel] if entry[0] == "msg"]

    def problems(self, channel: str) -> list[str]:
        return check_sequence(self.received[channel], self.first.get(channel, 1))

    async def stop(self) -> None:
        self._stop = True
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        if self.client is not None:
            self._collect(self.client)
            await self.client.close()
