"""Tests of the publish API's asyncio adapter (wsd.server.api.server) over real sockets.

The server runs on a uvloop loop in a background thread, listening on an ephemeral 127.0.0.1 port, with
an in-memory publisher; the tests talk to it with http.client or raw bytes. What can be tested without
a socket is tested in test_api_http11.py (the connection) and test_api_routes.py (the endpoints); here
are the things only a socket shows: responses in order across a publisher that answers later, flow
control, lingering close, timeouts, the connection cap, TLS.
"""

import asyncio
import http.client
import json
import logging
import random
import select
import socket
import ssl
import subprocess
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httptools
import pytest
import uvloop

from wsd.server.api import (
    ApiProtocolFactory,
    PublishError,
    Request,
    Response,
    make_api_protocol_factory,
    start_api_server,
)

SOCKET_TIMEOUT_SECONDS = 5.0


class InMemoryPublisher:
    """Gives out offsets per channel when called, like the bus does; can be told to fail, or to answer
    through a future a few loop iterations later (`jitter`)."""

    def __init__(self) -> None:
        self.next_offset: dict[str, int] = defaultdict(int)
        self.published: list[tuple[str, bytes, int]] = []
        # Exceptions to raise, keyed by channel name, one per publish.
        self.failures: dict[str, list[Exception]] = defaultdict(list)
        # When set, every publish answers through a future resolved after a random number of loop
        # iterations, so that a server that served requests concurrently would visibly reorder them.
        self.jitter = False

    def publish(self, channel: str, data_json: bytes) -> "int | asyncio.Future[int]":
        failure = self.failures[channel].pop(0) if self.failures[channel] else None
        if not self.jitter:
            if failure is not None:
                raise failure
            return self._sequence(channel, data_json)
        future = asyncio.get_running_loop().create_future()
        outcome = failure if failure is not None else self._sequence(channel, data_json)
        self._resolve_later(future, outcome, random.randrange(4))
        return future

    def _sequence(self, channel: str, data_json: bytes) -> int:
        offset = self.next_offset[channel]
        self.next_offset[channel] += 1
        self.published.append((channel, data_json, offset))
        return offset

    def _resolve_later(self, future: asyncio.Future, outcome: Any, turns: int) -> None:
        if turns:
            asyncio.get_running_loop().call_soon(self._resolve_later, future, outcome, turns - 1)
        elif isinstance(outcome, Exception):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)


@dataclass
class ApiServer:
    port: int
    publisher: InMemoryPublisher
    factory: ApiProtocolFactory | None = None
    healthy: list[bool] = field(default_factory=lambda: [True])

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=SOCKET_TIMEOUT_SECONDS)

    def raw_socket(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=SOCKET_TIMEOUT_SECONDS)

    def wait_for_open_connections(self, count: int) -> None:
        assert self.factory is not None
        deadline = time.monotonic() + SOCKET_TIMEOUT_SECONDS
        while self.factory.open_connections != count:
            assert time.monotonic() < deadline, f"{self.factory.open_connections} connections open, not {count}"
            time.sleep(0.01)


@pytest.fixture
def start_server() -> Iterator[Callable[..., ApiServer]]:
    """Start API servers on a uvloop loop in a background thread; stop them all after the test."""
    loop = uvloop.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="api-server-loop", daemon=True)
    thread.start()
    servers: list[asyncio.Server] = []

    def start(ssl_context: ssl.SSLContext | None = None, **options: Any) -> ApiServer:
        publisher = InMemoryPublisher()
        api = ApiServer(port=0, publisher=publisher)
        api.factory = make_api_protocol_factory(publisher, health=lambda: api.healthy[0], **options)
        listening_socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listening_socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        listening_socket.bind(("127.0.0.1", 0))
        listening_socket.listen(128)
        api.port = listening_socket.getsockname()[1]
        server = asyncio.run_coroutine_threadsafe(
            start_api_server(loop, listening_socket, api.factory, ssl=ssl_context), loop
        ).result(SOCKET_TIMEOUT_SECONDS)
        servers.append(server)
        return api

    yield start

    async def stop_servers() -> None:
        for server in servers:
            server.close()
            await server.wait_closed()

    asyncio.run_coroutine_threadsafe(stop_servers(), loop).result(SOCKET_TIMEOUT_SECONDS)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(SOCKET_TIMEOUT_SECONDS)
    loop.close()


@pytest.fixture
def api(start_server: Callable[..., ApiServer]) -> ApiServer:
    return start_server()


# --- Client helpers ---------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> object:
        assert self.headers["content-type"] == "application/json", self.headers
        return json.loads(self.body)


def request(
    conn: http.client.HTTPConnection, method: str, path: str, body: object = None, **headers: str
) -> Answer:
    """Send one request on a (possibly kept-alive) connection; `body` that is not bytes is sent as JSON."""
    if body is not None and not isinstance(body, bytes):
        body = json.dumps(body).encode()
        headers.setdefault("Content_Type", "application/json")
    conn.request(method, path, body=body, headers={k.replace("_", "-"): v for k, v in headers.items()})
    response = conn.getresponse()
    return Answer(
        response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    )


class _ResponseCollector:
    """httptools callbacks gathering the responses read from a raw socket."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.responses: list[Answer] = []
        self._headers: dict[str, str] = {}
        self._body = bytearray()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode().lower()] = value.decode()

    def on_body(self, chunk: bytes) -> None:
        self._body += chunk

    def on_message_complete(self) -> None:
        self.responses.append(Answer(self.parser.get_status_code(), self._headers, bytes(self._body)))
        self._headers, self._body = {}, bytearray()


def read_responses(sock: socket.socket, count: int) -> tuple[list[Answer], bool]:
    """Read `count` responses from a raw socket; also say whether the server then closed the connection."""
    collector = _ResponseCollector()
    while len(collector.responses) < count:
        data = sock.recv(65536)
        assert data, f"connection closed after {len(collector.responses)} of {count} responses"
        collector.parser.feed_data(data)
    sock.settimeout(0.3)
    try:
        closed = sock.recv(1) == b""
    except TimeoutError:
        closed = False
    finally:
        sock.settimeout(SOCKET_TIMEOUT_SECONDS)
    return collector.responses, closed


def publish_request(channel: str, data: object, extra_headers: str = "") -> bytes:
    body = json.dumps({"channel": channel, "data": data}).encode()
    return (
        f"POST /api/publish HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n{extra_headers}"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def assert_json_error(response: Answer, status: int, *fragments: str) -> None:
    assert response.status == status, (response.status, response.body)
    assert response.headers["content-type"] == "application/json"
    message = response.json()["error"]  # type: ignore[index]
    assert isinstance(message, str) and message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


# --- Publishing -------------------------------------------------------------------------------------


def test_publish_returns_the_offset_of_the_message(api: ApiServer) -> None:
    conn = api.connection()
    response = request(conn, "POST", "/api/publish", {"channel": "news", "data": {"a": 1}})
    assert response.status == 200
    assert response.json() == {"offset": 0}
    response = request(conn, "POST", "/api/publish", {"channel": "news", "data": "second"})
    assert response.json() == {"offset": 1}
    response = request(conn, "POST", "/api/publish", {"channel": "sport", "data": None})
    assert response.json() == {"offset": 0}


def test_batch_returns_offsets_in_request_order(api: ApiServer) -> None:
    api.publisher.jitter = True
    batch = [{"channel": "a" if i % 3 else "b", "data": i} for i in range(30)]
    response = request(api.connection(), "POST", "/api/publish_batch", batch)
    assert response.status == 200
    expected_offsets, next_offset = [], {"a": 0, "b": 0}
    for item in batch:
        expected_offsets.append(next_offset[item["channel"]])
        next_offset[item["channel"]] += 1
    assert response.json() == {"offsets": expected_offsets}
    assert [(channel, json.loads(data)) for channel, data, _ in api.publisher.published] == [
        (item["channel"], item["data"]) for item in batch
    ]


def test_keep_alive_serves_several_requests_on_one_connection(api: ApiServer) -> None:
    conn = api.connection()
    assert request(conn, "GET", "/healthz").status == 200
    first_socket = conn.sock
    for i in range(10):
        response = request(conn, "POST", "/api/publish", {"channel": "k", "data": i})
        assert response.json() == {"offset": i}
        assert conn.sock is first_socket, "the server closed a keep-alive connection"
    assert_json_error(request(conn, "GET", "/nope"), 404)
    assert request(conn, "POST", "/api/publish_batch", [{"channel": "k", "data": 0}]).json() == {
        "offsets": [10]
    }
    assert conn.sock is first_socket


def test_pipelined_requests_are_answered_in_request_order(api: ApiServer) -> None:
    api.publisher.jitter = True
    batch_body = json.dumps([{"channel": "p", "data": "x"}, {"channel": "q", "data": "y"}]).encode()
    pipeline = b"".join(
        [
            publish_request("p", 0),
            b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n",
            publish_request("p", 1),
            b"GET /missing HTTP/1.1\r\nHost: t\r\n\r\n",
            b"POST /api/publish_batch HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(batch_body)
            + batch_body,
            publish_request("bad name", 2),
            publish_request("p", 3),
        ]
    )
    with api.raw_socket() as sock:
        sock.sendall(pipeline)
        responses, closed = read_responses(sock, 7)
    assert [r.status for r in responses] == [200, 200, 200, 404, 200, 400, 200]
    assert responses[0].json() == {"offset": 0}
    assert responses[1].body == b"ok\n"
    assert responses[2].json() == {"offset": 1}
    assert responses[4].json() == {"offsets": [2, 0]}
    assert responses[6].json() == {"offset": 3}
    assert not closed


def test_many_pipelined_publishes_keep_their_order(api: ApiServer) -> None:
    api.publisher.jitter = True
    count = 500  # more than the server queues before it stops reading the socket
    with api.raw_socket() as sock:
        sock.sendall(b"".join(publish_request("order", i) for i in range(count)))
        responses, _ = read_responses(sock, count)
    assert [r.json() for r in responses] == [{"offset": i} for i in range(count)]
    assert [json.loads(data) for _, data, _ in api.publisher.published] == list(range(count))


def test_expect_100_continue_gets_an_interim_response(api: ApiServer) -> None:
    body = json.dumps({"channel": "c", "data": 1}).encode()
    with api.raw_socket() as sock:
        sock.sendall(
            b"POST /api/publish HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n"
            % len(body)
        )
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        responses, _ = read_responses(sock, 1)
    assert responses[0].json() == {"offset": 0}


# --- Health ---------------------------------------------------------------------------------------


def test_healthz_answers_ok_then_draining_when_unhealthy(api: ApiServer) -> None:
    conn = api.connection()
    response = request(conn, "GET", "/healthz")
    assert (response.status, response.body) == (200, b"ok\n")
    assert response.headers["content-type"].startswith("text/plain")
    api.healthy[0] = False
    response = request(conn, "GET", "/healthz")
    assert (response.status, response.body) == (503, b"draining\n")
    response = request(conn, "HEAD", "/healthz")
    assert (response.status, response.body) == (503, b"")
    assert response.headers["content-length"] == "9"


def test_draining_ends_keep_alive_connections_after_the_current_request(api: ApiServer) -> None:
    with api.raw_socket() as sock:
        sock.sendall(publish_request("d", 0))
        responses, closed = read_responses(sock, 1)
        assert responses[0].json() == {"offset": 0}
        assert not closed
        api.healthy[0] = False
        sock.sendall(publish_request("d", 1) + publish_request("d", 2))
        responses, closed = read_responses(sock, 1)
    assert responses[0].json() == {"offset": 1}
    assert responses[0].headers["connection"] == "close"
    assert closed


# --- Errors -----------------------------------------------------------------------------------------


def test_errors_answered_by_the_endpoints_keep_the_connection(api: ApiServer) -> None:
    conn = api.connection()
    assert_json_error(request(conn, "POST", "/api/publsh", {}), 404, "/api/publish")
    response = request(conn, "GET", "/api/publish")
    assert_json_error(response, 405, "POST")
    assert response.headers["allow"] == "POST"
    assert_json_error(request(conn, "POST", "/api/publish", b"{not json", Content_Type="application/json"), 400)
    assert_json_error(request(conn, "POST", "/api/publish", b"{}", Content_Type="text/html"), 415)
    first_socket = conn.sock
    assert request(conn, "GET", "/healthz").status == 200
    assert conn.sock is first_socket, "the server closed the connection after an error"
    assert api.publisher.published == []



def test_batch_over_max_batch_is_413(start_server: Callable[..., ApiServer]) -> None:
    api = start_server(max_batch=3)
    conn = api.connection()
    batch = [{"channel": "c", "data": i} for i in range(4)]
    assert_json_error(request(conn, "POST", "/api/publish_batch", batch), 413, "4", "3")
    assert api.publisher.published == []
    assert request(conn, "POST", "/api/publish_batch", batch[:3]).json() == {"offsets": [0, 1, 2]}


def test_body_over_max_body_size_is_413_and_ends_the_connection(
    start_server: Callable[..., ApiServer],
) -> None:
    api = start_server(max_body_size=100)
    conn = api.connection()
    fits = {"channel": "c", "data": "x" * 50}
    assert request(conn, "POST", "/api/publish", fits).status == 200
    too_big = {"channel": "c", "data": "x" * 200}
    response = request(conn, "POST", "/api/publish", too_big)
    assert_json_error(response, 413, "100 bytes")
    assert response.headers["connection"] == "close"
    assert len(api.publisher.published) == 1


def test_large_body_over_the_limit_is_answered_not_reset(api: ApiServer) -> None:
    # The client is still sending when the 413 is written; the server must not reset the connection
    # before the client can read the response.
    body = b"x" * (3 << 20)
    with api.raw_socket() as sock:
        sock.sendall(b"POST /api/publish HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % len(body))
        try:
            sock.sendall(body)
        except (BrokenPipeError, ConnectionResetError):
            pass
        responses, closed = read_responses(sock, 1)
    assert_json_error(responses[0], 413, "1048576 bytes")
    assert closed


def test_oversized_headers_are_431(api: ApiServer) -> None:
    with api.raw_socket() as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * (100 * 1024) + b"\r\n\r\n")
        responses, closed = read_responses(sock, 1)
    assert_json_error(responses[0], 431)
    assert closed


def test_malformed_http_is_400_and_closes_only_that_connection(api: ApiServer) -> None:
    with api.raw_socket() as good, api.raw_socket() as bad:
        good.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        assert read_responses(good, 1)[0][0].status == 200
        # A valid request, then garbage: the valid one is still answered, in order, before the 400.
        bad.sendall(publish_request("m", 1) + b"GARBAGE\x01 / HTTP/9\r\n\r\n")
        responses, closed = read_responses(bad, 2)
        assert responses[0].json() == {"offset": 0}
        assert_json_error(responses[1], 400, "malformed HTTP")
        assert closed
        good.sendall(publish_request("m", 2))
        responses, closed = read_responses(good, 1)
        assert responses[0].json() == {"offset": 1}
        assert not closed


def test_connection_close_is_honored_and_later_pipelined_requests_ignored(api: ApiServer) -> None:
    with api.raw_socket() as sock:
        closing_request = publish_request("cc", 0, extra_headers="Connection: close\r\n")
        sock.sendall(closing_request + publish_request("cc", 1))
        responses, closed = read_responses(sock, 1)
    assert responses[0].json() == {"offset": 0}
    assert responses[0].headers["connection"] == "close"
    assert closed
    assert len(api.publisher.published) == 1


def test_http_1_0_without_keep_alive_is_closed_after_the_response(api: ApiServer) -> None:
    with api.raw_socket() as sock:
        sock.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        responses, closed = read_responses(sock, 1)
    assert responses[0].status == 200
    assert closed


@pytest.mark.parametrize("publisher_suspends", [False, True])
def test_requests_sent_before_a_half_close_are_still_answered(api: ApiServer, publisher_suspends: bool) -> None:
    api.publisher.jitter = publisher_suspends
    for _ in range(20):  # the EOF can arrive before, during or after serving; try a few interleavings
        with api.raw_socket() as sock:
            sock.sendall(publish_request("h", 0) + b"GET /healthz HTTP/1.1\r\n\r\n" + publish_request("h", 1))
            sock.shutdown(socket.SHUT_WR)
            responses, closed = read_responses(sock, 3)
        assert [r.status for r in responses] == [200, 200, 200]
        assert responses[1].body == b"ok\n"
        assert closed


# --- Publisher failures ---------------------------------------------------------------------------


def test_publish_error_is_answered_with_its_status_and_the_connection_keeps_working(api: ApiServer) -> None:
    api.publisher.failures["busy"].append(PublishError(503, "the server is draining; retry on another"))
    conn = api.connection()
    response = request(conn, "POST", "/api/publish", {"channel": "busy", "data": 1})
    assert_json_error(response, 503, "draining")
    assert request(conn, "POST", "/api/publish", {"channel": "busy", "data": 2}).json() == {"offset": 0}


def test_unexpected_publisher_exception_is_500_logged_and_the_server_stays_up(
    api: ApiServer, caplog: pytest.LogCaptureFixture
) -> None:
    api.publisher.failures["boom"].append(RuntimeError("ring is on fire"))
    conn = api.connection()
    with caplog.at_level(logging.ERROR, logger="wsd.server.api"):
        response = request(conn, "POST", "/api/publish", {"channel": "boom", "data": 1})
    assert_json_error(response, 500, "internal error", "ring is on fire")
    assert any(record.exc_info and "boom" in record.getMessage() for record in caplog.records)
    assert request(conn, "POST", "/api/publish", {"channel": "boom", "data": 2}).json() == {"offset": 0}
    assert request(api.connection(), "GET", "/healthz").status == 200




# --- Timeouts -----------------------------------------------------------------------------------------


def wait_for_close(sock: socket.socket, within: float) -> tuple[bytes, float]:
    """Read until the server closes; what it sent, and how long that took."""
    started = time.monotonic()
    sock.settimeout(within)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received, time.monotonic() - started


def test_an_idle_kept_alive_connection_is_closed_after_the_idle_timeout(
    start_server: Callable[..., ApiServer],
) -> None:
    api = start_server(idle_timeout=0.5)
    busy = api.connection()
    with api.raw_socket() as idle:
        idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        read_responses(idle, 1)
        started = time.monotonic()
        for i in range(8):  # a connection that keeps sending requests stays open past the timeout
            assert request(busy, "POST", "/api/publish", {"channel": "i", "data": i}).json() == {"offset": i}
            time.sleep(0.1)
        first_socket = busy.sock
        received, _ = wait_for_close(idle, within=3.0)
        assert received == b"", "closed without a response nobody asked for"
        assert time.monotonic() - started >= 0.4
        assert request(busy, "GET", "/healthz").status == 200
        assert busy.sock is first_socket
    busy.close()
    api.wait_for_open_connections(0)


def test_one_header_byte_at_a_time_does_not_hold_a_connection(start_server: Callable[..., ApiServer]) -> None:
    api = start_server(request_timeout=0.5)
    head = b"POST /api/publish HTTP/1.1\r\nHost: t\r\nX-Slow: " + b"a" * 100
    with api.raw_socket() as sock:
        started = time.monotonic()
        for byte in head:  # one byte every 50 ms, until the server answers
            sock.sendall(bytes([byte]))
            time.sleep(0.05)
            if select.select([sock], [], [], 0)[0] or time.monotonic() - started > 3.0:
                break
        responses, closed = read_responses(sock, 1)
    assert_json_error(responses[0], 408, "headers", "0.5 s")
    assert closed
    assert time.monotonic() - started < 2.0
    api.wait_for_open_connections(0)


def test_a_body_that_does_not_arrive_in_time_is_408(start_server: Callable[..., ApiServer]) -> None:
    api = start_server(request_timeout=0.3)
    with api.raw_socket() as sock:
        sock.sendall(b"POST /api/publish HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n{")
        responses, closed = read_responses(sock, 1)
    assert_json_error(responses[0], 408, "body")
    assert closed
    assert api.publisher.published == []


def test_a_connection_that_sends_nothing_is_closed_after_the_request_timeout(
    start_server: Callable[..., ApiServer],
) -> None:
    api = start_server(request_timeout=0.3, idle_timeout=60.0)
    with api.raw_socket() as sock:
        received, elapsed = wait_for_close(sock, within=3.0)
    assert received == b""
    assert elapsed < 2.0


def test_a_client_that_does_not_read_its_responses_is_cut_off(start_server: Callable[..., ApiServer]) -> None:
    api = start_server(idle_timeout=0.5)
    assert api.factory is not None
    big = Response(200, b"x" * (1 << 20), b"application/octet-stream")
    api.factory.router.add("GET", "/big", lambda request: big)
    with api.raw_socket() as sock:
        sock.sendall(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n" * 64)  # 64 MiB of responses it never reads
        api.wait_for_open_connections(0)


# --- The connection cap, the API key, TLS ---------------------------------------------------------------


def test_connections_over_the_cap_get_503_and_are_closed(start_server: Callable[..., ApiServer]) -> None:
    api = start_server(max_connections=2)
    assert api.factory is not None
    with api.raw_socket() as first, api.raw_socket() as second:
        api.wait_for_open_connections(2)
        with api.raw_socket() as third:
            third.sendall(publish_request("cap", 0))
            responses, closed = read_responses(third, 1)
            assert_json_error(responses[0], 503, "too many connections", "2")
            assert closed
        api.wait_for_open_connections(2)
        for sock in (first, second):  # the two within the cap are served
            sock.sendall(publish_request("cap", 0))
            assert read_responses(sock, 1)[0][0].status == 200
    api.wait_for_open_connections(0)
    with api.raw_socket() as again:  # and once they are gone, there is room again
        again.sendall(publish_request("cap", 0))
        assert read_responses(again, 1)[0][0].status == 200
    assert [offset for _, _, offset in api.publisher.published] == [0, 1, 2]


def test_the_api_key_is_required_when_set(start_server: Callable[..., ApiServer]) -> None:
    api = start_server(api_key="s3cret")
    conn = api.connection()
    response = request(conn, "POST", "/api/publish", {"channel": "k", "data": 1})
    assert_json_error(response, 401, "Authorization: Bearer")
    assert response.headers["www-authenticate"].startswith("Bearer")
    wrong = request(conn, "POST", "/api/publish", {"channel": "k", "data": 1}, Authorization="Bearer no")
    assert_json_error(wrong, 401, "wrong API key")
    ok = request(conn, "POST", "/api/publish", {"channel": "k", "data": 1}, Authorization="Bearer s3cret")
    assert ok.json() == {"offset": 0}
    assert request(conn, "GET", "/healthz").status == 200
    assert len(api.publisher.published) == 1


@pytest.fixture
def self_signed_certificate(tmp_path: Path) -> tuple[Path, Path]:
    openssl = subprocess.run(["which", "openssl"], capture_output=True, text=True).stdout.strip()
    if not openssl:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def test_the_api_speaks_tls_when_given_a_context(
    start_server: Callable[..., ApiServer], self_signed_certificate: tuple[Path, Path]
) -> None:
    cert, key = self_signed_certificate
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    api = start_server(ssl_context=server_context)
    client_context = ssl.create_default_context(cafile=str(cert))
    conn = http.client.HTTPSConnection("127.0.0.1", api.port, timeout=SOCKET_TIMEOUT_SECONDS, context=client_context)
    for expected in range(3):  # kept alive over TLS
        assert request(conn, "POST", "/api/publish", {"channel": "tls", "data": expected}).json() == {
            "offset": expected
        }
    assert request(conn, "GET", "/healthz").body == b"ok\n"
    conn.close()
    with api.raw_socket() as plain:  # plain HTTP on the TLS port is refused by the TLS layer
        plain.sendall(b"GET /healthz HTTP/1.1\r\n\r\n")
        received, _ = wait_for_close(plain, within=3.0)
        assert b"ok" not in received
    api.wait_for_open_connections(0)


def test_added_endpoints_are_served(start_server: Callable[..., ApiServer]) -> None:
    api = start_server()
    assert api.factory is not None

    async def channels(request: Request) -> Response:
        await asyncio.sleep(0.01)
        return Response(200, json.dumps({"channel": request.params["name"]}).encode(), b"application/json")

    api.factory.router.add("GET", "/api/channels/{name}", channels)
    api.factory.router.add(
        "GET",
        "/metrics",
        lambda request: Response(200, request.header(b"accept") or b"none", b"text/plain"),
        headers=["Accept"],
    )
    conn = api.connection()
    assert request(conn, "GET", "/api/channels/room:1").json() == {"channel": "room:1"}
    assert request(conn, "GET", "/metrics", Accept="text/plain;version=0.0.4").body == b"text/plain;version=0.0.4"
    assert request(conn, "POST", "/api/publish", {"channel": "x", "data": 1}).json() == {"offset": 0}
