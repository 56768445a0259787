"""Publishes through wsd's HTTP API (`POST /api/publish`, `POST /api/publish_batch`) on one
keep-alive connection: the publishing side of the fan-out benchmarks. Every message's data carries
its publish time (`"t"`, ns since the epoch) first, where the load generator's listeners read it."""

from __future__ import annotations

import http.client
import json
import time

import orjson

from harness.listener import SHARED_CHANNEL


class ApiStatusError(RuntimeError):
    """The API answered with a status other than 200."""

    def __init__(self, path: str, status: int, body: bytes) -> None:
        super().__init__(f"POST {path} answered {status}: {body[:300]!r}")
        self.status = status


class Publisher:
    """One keep-alive HTTP connection to a publish API on 127.0.0.1:`api_port`."""

    def __init__(self, api_port: int, payload_bytes: int, channel: str = SHARED_CHANNEL, host: str = "127.0.0.1",
                 api_key: str | None = None, timeout: float = 60):  # fmt: skip
        self.connection = http.client.HTTPConnection(host, api_port, timeout=timeout)
        self.headers = {"Content-Type": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self.channel = channel
        # Pads each message's data to about `payload_bytes` of JSON.
        self.padding = "x" * max(0, payload_bytes - len('{"t":1700000000000000000,"seq":0,"pad":""}'))

    def post(self, path: str, body: bytes) -> dict:
        self.connection.request("POST", path, body, self.headers)
        response = self.connection.getresponse()
        payload = response.read()
        if response.status != 200:
            raise ApiStatusError(path, response.status, payload)
        return json.loads(payload)

    def publish_burst(self, messages: int) -> list[int]:
        """`messages` messages in one publish_batch; their offsets."""
        # Stamped once for the whole batch: burst latency is not what a burst measures.
        now = time.time_ns()
        batch = [{"channel": self.channel, "data": {"t": now, "seq": i, "pad": self.padding}} for i in range(messages)]
        return self.post("/api/publish_batch", orjson.dumps(batch))["offsets"]

    def publish_one(self, seq: int) -> int:
        """One message, stamped just before its request is sent; its offset."""
        data = {"t": time.time_ns(), "seq": seq, "pad": self.padding}
        return self.post("/api/publish", orjson.dumps({"channel": self.channel, "data": data}))["offset"]
