"""A Python client that follows the same reconnect and resume rules as server/static/wsd.js.

Reconnects on 1012/1013/1006/1001 with exponential backoff and full jitter, stops on 1008, and
resubscribes every channel with `since` so the application sees each message once, in order (the rules
themselves are harness.resume's, which the load generator's resuming mode shares). Used by the
acceptance tests (and usable from benchmarks).
"""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import dataclass, field

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from harness.resume import NOT_RECOVERED, RECONNECT_CODES, RESUMED, ChannelPosition


@dataclass
class ChannelState(ChannelPosition):
    messages: list[tuple[int, object]] = field(default_factory=list)


class ResumingClient:
    def __init__(self, url: str, channels: list[str], base_s: float = 0.1, cap_s: float = 2.0):
        self.url = url
        self.channels = {name: ChannelState() for name in channels}
        self.base_s = base_s
        self.cap_s = cap_s
        self.connects = 0
        self.failed_handshakes: list[str] = []
        self.close_codes: list[int | None] = []
        self.resumes = 0  # successful `recovered: true` resubscriptions
        self.not_recovered = 0
        self.stopped = False
        self.ready = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        self.stopped = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass

    async def _run(self) -> None:
        attempt = 0
        while not self.stopped:
            try:
                async with connect(self.url, open_timeout=10, close_timeout=2) as ws:
                    self.connects += 1
                    attempt = 0
                    await self._session(ws)
                    code = ws.close_code
            except InvalidStatus as exc:
                self.failed_handshakes.append(f"HTTP {exc.response.status_code}")
                code = 1006
            except (TimeoutError, OSError) as exc:
                self.failed_handshakes.append(f"{type(exc).__name__}: {exc}")
                code = 1006
            except ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd else 1006
            self.close_codes.append(code)
            if code not in RECONNECT_CODES and code is not None:
                return
            attempt += 1
            await asyncio.sleep(random.uniform(0, min(self.cap_s, self.base_s * 2**attempt)))

    async def _session(self, ws) -> None:
        for request_id, (name, state) in enumerate(self.channels.items(), 1):
            await ws.send(json.dumps(state.subscribe_request(name, request_id)))
        async for raw in ws:
            message = json.loads(raw)
            op = message["op"]
            if op == "msg":
                state = self.channels[message["ch"]]
                if state.delivered(message["off"]):
                    state.messages.append((message["off"], message["data"]))
            elif op == "ok":
                name = list(self.channels)[message["id"] - 1]
                kind = self.channels[name].subscribed(message)
                self.resumes += kind == RESUMED
                self.not_recovered += kind == NOT_RECOVERED
                if all(s.epoch is not None for s in self.channels.values()):
                    self.ready.set()
