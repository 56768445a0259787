"""Unit tests of the publish HTTP API (server/http_api.py) and of channel name validation.

The server runs on a uvloop loop in a background thread, listening on an ephemeral 127.0.0.1 port, with
an in-memory publisher; the tests talk to it over real sockets with http.client or raw bytes.
"""

import asyncio
import http.client
import json
import logging
import random
import socket
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httptools
import pytest
import uvloop

from wsd.server.channel_names import channel_name_error
from wsd.server.http_api import PublishError, make_api_protocol_factory, start_api_server

SOCKET_TIMEOUT_SECONDS = 5.0


class InMemoryPublisher:
    """Counts offsets per channel, like the bus does; can be told to fail or to take its time."""

    def __init__(self) -> None:
        self.next_offset: dict[str, int] = defaultdict(int)
        self.published: list[tuple[str, bytes, int]] = []
        # Exceptions to raise, keyed by channel name, one per publish.
        self.failures: dict[str, list[BaseException]] = defaultdict(list)
        # When set, every publish yields to the loop a random number of times, so that a server that
        # served requests concurrently would visibly reorder them.
        self.jitter = False

    async def publish(self, channel: str, data_json: bytes) -> int:
        if self.jitter:
            for _ in range(random.randrange(4)):
                await asyncio.sleep(0)
        if self.failures[channel]:
            raise self.failures[channel].pop(0)
        offset = self.next_offset[channel]
        self.next_offset[channel] += 1
        self.published.append((channel, data_json, offset))
        return offset


@dataclass
class ApiServer:
    port: int
    publisher: InMemoryPublisher
    healthy: list[bool] = field(default_factory=lambda: [True])

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=SOCKET_TIMEOUT_SECONDS)

    def raw_socket(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=SOCKET_TIMEOUT_SECONDS)


@pytest.fixture
def start_server() -> Iterator[Callable[..., ApiServer]]:
    """Start API servers on a uvloop loop in a background thread; stop them all after the test."""
    loop = uvloop.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="api-server-loop", daemon=True)
    thread.start()
    servers: list[asyncio.Server] = []

    def start(**limits: int) -> ApiServer:
        publisher = InMemoryPublisher()
        api = ApiServer(port=0, publisher=publisher)
        factory = make_api_protocol_factory(publisher, health=lambda: api.healthy[0], **limits)
        listening_socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listening_socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        listening_socket.bind(("127.0.0.1", 0))
        listening_socket.listen(128)
        api.port = listening_socket.getsockname()[1]
        server = asyncio.run_coroutine_threadsafe(
            start_api_server(loop, listening_socket, factory), loop
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
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> object:
        assert self.headers["content-type"] == "application/json", self.headers
        return json.loads(self.body)


def request(
    conn: http.client.HTTPConnection, method: str, path: str, body: object = None, **headers: str
) -> Response:
    """Send one request on a (possibly kept-alive) connection; `body` that is not bytes is sent as JSON."""
    if body is not None and not isinstance(body, bytes):
        body = json.dumps(body).encode()
        headers.setdefault("Content_Type", "application/json")
    conn.request(method, path, body=body, headers={k.replace("_", "-"): v for k, v in headers.items()})
    response = conn.getresponse()
    return Response(
        response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    )


class _ResponseCollector:
    """httptools callbacks gathering the responses read from a raw socket."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.responses: list[Response] = []
        self._headers: dict[str, str] = {}
        self._body = bytearray()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode().lower()] = value.decode()

    def on_body(self, chunk: bytes) -> None:
        self._body += chunk

    def on_message_complete(self) -> None:
        self.responses.append(Response(self.parser.get_status_code(), self._headers, bytes(self._body)))
        self._headers, self._body = {}, bytearray()


def read_responses(sock: socket.socket, count: int) -> tuple[list[Response], bool]:
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


def assert_json_error(response: Response, status: int, *fragments: str) -> None:
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


def test_publisher_receives_data_reserialized_as_compact_json(api: ApiServer) -> None:
    body = b'{ "channel" : "room:1", "data" : { "text" : "h\\u00e9llo" ,\n "n": [1, 2.5, true] } }'
    response = request(api.connection(), "POST", "/api/publish", body, Content_Type="application/json")
    assert response.status == 200
    assert api.publisher.published == [("room:1", '{"text":"héllo","n":[1,2.5,true]}'.encode(), 0)]


def test_publish_accepts_a_missing_or_parameterized_json_content_type(api: ApiServer) -> None:
    conn = api.connection()
    body = json.dumps({"channel": "c", "data": 1}).encode()
    assert request(conn, "POST", "/api/publish", body).status == 200
    for content_type in ("application/json; charset=utf-8", "Application/JSON", "application/vnd.x+json"):
        assert request(conn, "POST", "/api/publish", body, Content_Type=content_type).status == 200


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


def test_chunked_request_body_is_accepted(api: ApiServer) -> None:
    body = json.dumps({"channel": "chunky", "data": "x" * 100}).encode()
    chunks = [body[:7], body[7:50], body[50:]]
    encoded = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks) + b"0\r\n\r\n"
    head = b"POST /api/publish HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
    with api.raw_socket() as sock:
        sock.sendall(head)
        for piece in (encoded[:10], encoded[10:60], encoded[60:]):
            sock.sendall(piece)
        responses, closed = read_responses(sock, 1)
    assert responses[0].status == 200
    assert responses[0].json() == {"offset": 0}
    assert api.publisher.published[0][1] == json.dumps("x" * 100).encode()
    assert not closed


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


def test_unknown_path_is_404(api: ApiServer) -> None:
    response = request(api.connection(), "POST", "/api/publsh", {})
    assert_json_error(response, 404, "/api/publsh", "/api/publish")


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", "/api/publish", "POST"),
        ("PUT", "/api/publish_batch", "POST"),
        ("POST", "/healthz", "GET, HEAD"),
        ("DELETE", "/healthz", "GET, HEAD"),
    ],
)
def test_wrong_method_is_405_with_allow(api: ApiServer, method: str, path: str, allow: str) -> None:
    conn = api.connection()
    response = request(conn, method, path)
    assert_json_error(response, 405, method, allow)
    assert response.headers["allow"] == allow
    assert request(conn, "GET", "/healthz").status == 200, "405 must not end the connection"


def test_non_json_content_type_is_415(api: ApiServer) -> None:
    body = json.dumps({"channel": "c", "data": 1}).encode()
    response = request(
        api.connection(), "POST", "/api/publish", body, Content_Type="application/x-www-form-urlencoded"
    )
    assert_json_error(response, 415, "application/json", "x-www-form-urlencoded")
    assert api.publisher.published == []


@pytest.mark.parametrize(
    ("body", "fragments"),
    [
        (b"", ["empty"]),
        (b"{not json", ["not valid JSON"]),
        (b"[1, 2]", ["JSON object", "a list"]),
        (b'"just a string"', ["JSON object", "a string"]),
        (b'{"data": 1}', ['"channel"']),
        (b'{"channel": "c"}', ['"data"']),
        (b'{"channel": "c", "data": 1, "ttl": 5}', ["ttl"]),
        (b'{"channel": "a b", "data": 1}', ["A-Z a-z 0-9 _ : . - @", "'a b'"]),
        (b'{"channel": "", "data": 1}', ["empty"]),
        (b'{"channel": 7, "data": 1}', ["not a string"]),
        (b'{"channel": "%s", "data": 1}' % (b"x" * 129), ["129 characters"]),
    ],
)
def test_bad_publish_body_is_400(api: ApiServer, body: bytes, fragments: list[str]) -> None:
    conn = api.connection()
    response = request(conn, "POST", "/api/publish", body, Content_Type="application/json")
    assert_json_error(response, 400, *fragments)
    assert api.publisher.published == []
    assert request(conn, "GET", "/healthz").status == 200, "a 400 for a bad body must not end the connection"


@pytest.mark.parametrize(
    ("body", "fragments"),
    [
        (b"[]", ["empty"]),
        (b'{"channel": "c", "data": 1}', ["non-empty JSON list", "an object"]),
        (b'[{"channel": "c", "data": 1}, 5]', ["batch item 1", "a number"]),
        (b'[{"channel": "c", "data": 1}, {"channel": "c"}]', ["batch item 1", '"data"']),
        (b'[{"channel": "ok", "data": 1}, {"channel": "no/slash", "data": 1}]', ["batch item 1", "'/'"]),
    ],
)
def test_bad_batch_is_400_and_publishes_nothing(api: ApiServer, body: bytes, fragments: list[str]) -> None:
    response = request(api.connection(), "POST", "/api/publish_batch", body, Content_Type="application/json")
    assert_json_error(response, 400, *fragments)
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


def test_chunked_body_over_max_body_size_is_413(start_server: Callable[..., ApiServer]) -> None:
    api = start_server(max_body_size=100)
    with api.raw_socket() as sock:
        sock.sendall(b"POST /api/publish HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(5):
            sock.sendall(b"20\r\n" + b"x" * 32 + b"\r\n")
        responses, closed = read_responses(sock, 1)
    assert_json_error(responses[0], 413, "100 bytes")
    assert closed


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


def test_tls_client_is_told_the_api_speaks_plain_http(api: ApiServer) -> None:
    with api.raw_socket() as sock:
        sock.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(32))
        responses, closed = read_responses(sock, 1)
    assert_json_error(responses[0], 400, "malformed HTTP", "TLS", "http://")
    assert closed


def test_upgrade_request_is_400_and_ends_the_connection(api: ApiServer) -> None:
    with api.raw_socket() as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x00")
        responses, closed = read_responses(sock, 1)
    assert_json_error(responses[0], 400, "upgrade")
    assert closed


def test_bad_content_length_is_400(api: ApiServer) -> None:
    with api.raw_socket() as sock:
        sock.sendall(b"POST /api/publish HTTP/1.1\r\nHost: t\r\nContent-Length: nope\r\n\r\n{}")
        responses, closed = read_responses(sock, 1)
    assert_json_error(responses[0], 400)
    assert closed


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
    with caplog.at_level(logging.ERROR, logger="wsd.server.http_api"):
        response = request(conn, "POST", "/api/publish", {"channel": "boom", "data": 1})
    assert_json_error(response, 500, "internal error", "ring is on fire")
    assert any(record.exc_info and "boom" in record.getMessage() for record in caplog.records)
    assert request(conn, "POST", "/api/publish", {"channel": "boom", "data": 2}).json() == {"offset": 0}
    assert request(api.connection(), "GET", "/healthz").status == 200


def test_batch_failure_reports_which_items_were_published(api: ApiServer) -> None:
    api.publisher.failures["b"].append(PublishError(503, "draining"))
    batch = [{"channel": "a", "data": 0}, {"channel": "a", "data": 1}, {"channel": "b", "data": 2}]
    response = request(api.connection(), "POST", "/api/publish_batch", batch)
    assert_json_error(response, 503, "batch item 2", "draining", "items 0..1 were published")
    assert response.json()["offsets"] == [0, 1]  # type: ignore[index]
    assert [channel for channel, _, _ in api.publisher.published] == ["a", "a"]


# --- Channel names ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "news", "user@example.com", "room:42.x-y_Z", "x" * 128])
def test_valid_channel_names_have_no_error(name: str) -> None:
    assert channel_name_error(name) is None


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("", "empty string"),
        ("a b", "' ' at position 1"),
        ("caf\u00e9", "'\u00e9' at position 3"),
        ("a\n", "'\\n' at position 1"),
        ("x" * 129, "129 characters long"),
        (None, "NoneType"),
        (b"bytes", "bytes"),
    ],
)
def test_invalid_channel_names_are_explained(name: object, fragment: str) -> None:
    error = channel_name_error(name)
    assert error is not None
    assert error.startswith("channel name must be 1-128 characters of A-Z a-z 0-9 _ : . - @, got ")
    assert fragment in error


def test_channel_name_error_truncates_long_names() -> None:
    error = channel_name_error("y" * 10_000 + " ")
    assert error is not None
    assert len(error) < 300
    assert "position 10000" in error
