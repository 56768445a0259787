"""What the operations tests share: scraping `/metrics`, a blocking WebSocket client that knows its
worker, and waiting for a condition."""

from __future__ import annotations

import json
import re
import struct
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.raw_ws import RawWebSocket

# The tests' clients (RawWebSocket) do not answer pings: keepalive would close them after 35 s.
NO_PINGS = ["--ping-interval", "3600", "--ping-timeout", "60"]


class Scrape:
    """One scrape of `/metrics`, parsed by prometheus_client's own parser."""

    def __init__(self, text: str):
        self.text = text
        self.families = {family.name: family for family in text_string_to_metric_families(text)}
        self.samples = [sample for family in self.families.values() for sample in family.samples]

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples called `name` whose labels include `labels` (the server's value
        when `worker` is not given)."""
        matches = [s.value for s in self.samples if s.name == name and labels.items() <= s.labels.items()]
        assert matches, f"no sample {name} {labels} in the exposition"
        return sum(matches)

    def by_worker(self, name: str, **labels: str) -> dict[str, float]:
        found: dict[str, float] = {}
        for s in self.samples:
            if s.name == name and labels.items() <= s.labels.items():
                found[s.labels["worker"]] = found.get(s.labels["worker"], 0.0) + s.value
        return found


def http(url: str, data: bytes | None = None, headers: dict | None = None, timeout: float = 10) -> tuple:
    """(status, headers, body) of one request; error statuses are answers, not exceptions."""
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def scrape(server, headers: dict | None = None) -> Scrape:
    status, headers, body = http(f"{server.api_url}/metrics", headers=headers)
    assert status == 200, body
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return Scrape(body.decode())


def api_json(
    server, method: str, path: str, payload: Any = None, timeout: float = 15, headers: dict | None = None
) -> tuple[int, Any]:
    data = None if payload is None else json.dumps(payload).encode()
    headers = {**({"Content-Type": "application/json"} if data is not None else {}), **(headers or {})}
    request = urllib.request.Request(f"{server.api_url}{path}", data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def wait_for(condition: Callable[[], Any], timeout: float = 5.0, every: float = 0.1, what: str = "") -> Any:
    """Poll until `condition()` is truthy; its value. Fails with the last value after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what or condition}; last {value!r}")
        time.sleep(every)


class Client:
    """A blocking `/ws` client over RawWebSocket: requests and their replies, messages kept."""

    def __init__(self, server, rcvbuf: int | None = None, token: str | None = None):
        path = "/ws" if token is None else f"/ws?token={token}"
        self.ws = RawWebSocket("127.0.0.1", server.port, path=path, rcvbuf=rcvbuf)
        assert self.ws.status == 101, self.ws.headers
        self.worker = int(re.search(r"X-Wsd-Worker: (\d+)", self.ws.headers, re.IGNORECASE)[1])
        self.next_id = 0
        self.messages: list[dict] = []

    def send(self, **request: Any) -> int:
        self.next_id += 1
        self.ws.send_text(json.dumps({**request, "id": self.next_id}))
        return self.next_id

    def call(self, **request: Any) -> dict:
        request_id = self.send(**request)
        while True:
            message = self.receive()
            if message.get("id") == request_id and message["op"] in ("ok", "err"):
                return message
            self.messages.append(message)

    def receive(self) -> dict:
        while True:
            opcode, payload = self.ws.recv_frame()
            if opcode == 0x8:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                raise ConnectionError(f"closed by the server with {code}")
            if opcode == 0x9:  # a keepalive ping: answer it, as a browser does
                self.ws.send_frame(0xA, payload)
            elif opcode == 0x1:
                return json.loads(payload)

    def message(self) -> dict:
        """The next `msg` (or server notice), kept ones first."""
        if self.messages:
            return self.messages.pop(0)
        return self.receive()

    def close(self, code: int = 1000) -> None:
        try:
            self.ws.send_frame(0x8, struct.pack("!H", code))
            self.ws.recv_close_code()
        except OSError:
            pass
        self.ws.close()


def clients_on_every_worker(
    server, workers: int, per_worker: int = 1, limit: int = 64, token: str | None = None
) -> list[Client]:
    """Open connections until every worker has `per_worker` of them (the kernel picks the worker)."""
    clients: list[Client] = []
    spare: list[Client] = []
    counts = dict.fromkeys(range(workers), 0)
    for _ in range(limit):
        client = Client(server, token=token)
        if counts[client.worker] < per_worker:
            counts[client.worker] += 1
            clients.append(client)
        else:
            spare.append(client)
        if all(count >= per_worker for count in counts.values()):
            break
    for client in spare:
        client.close()
    assert all(count >= per_worker for count in counts.values()), counts
    return clients
