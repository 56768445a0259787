"""Unit tests of the API's sans-I/O HTTP/1.1 connection (wsd.server.api.http11): bytes in, requests out,
responses in, bytes out, and the decisions (reading, closing, timers) the adapter carries out. No
sockets and no event loop: time is a number the tests move.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import httptools
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsd.server.api.http11 import CloseState, HttpConnection, HttpLimits, Request, Response, http_date

JSON = b"application/json"


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


class ResponseReader:
    """Parses what the server wrote (httptools' response parser, a second implementation of HTTP)."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.answers: list[Answer] = []
        self._headers: dict[str, str] = {}
        self._body = bytearray()

    def feed(self, data: bytes) -> list[Answer]:
        # An interim 100 Continue is a response of its own to this parser.
        self.parser.feed_data(data)
        answers, self.answers = self.answers, []
        return answers

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode().lower()] = value.decode()

    def on_body(self, chunk: bytes) -> None:
        self._body += chunk

    def on_message_complete(self) -> None:
        self.answers.append(Answer(self.parser.get_status_code(), self._headers, bytes(self._body)))
        self._headers, self._body = {}, bytearray()


class Peer:
    """One connection, with a clock the test moves and a responder that answers each request."""

    def __init__(self, limits: HttpLimits | None = None, respond: Callable[[Request], Response] | None = None) -> None:
        self.now = 1000.0
        self.connection = HttpConnection(limits or HttpLimits(), clock=lambda: self.now)
        self.respond = respond or echo
        self.reader = ResponseReader()
        self.served: list[Request] = []

    def send(self, data: bytes) -> list[Answer]:
        """Feed `data`, serve every request that is ready, return the responses written."""
        self.connection.receive_data(data)
        return self.serve()

    def serve(self, close: bool = False) -> list[Answer]:
        while (request := self.connection.next_request()) is not None:
            self.served.append(request)
            self.connection.send_response(self.respond(request), close=close)
        return self.written()

    def written(self) -> list[Answer]:
        return self.reader.feed(self.connection.data_to_send())

    def advance(self, seconds: float) -> list[Answer]:
        self.now += seconds
        self.connection.handle_timer(self.now)
        return self.serve()

    @property
    def state(self) -> CloseState:
        return self.connection.close_state


def echo(request: Request) -> Response:
    """Answers with what was parsed, or the connection's error."""
    if request.error is not None:
        return Response(request.error.status, request.error.message.encode(), b"text/plain")
    parsed = {
        "method": request.method.decode(),
        "path": request.path.decode() if request.path is not None else None,
        "body": request.body.decode(),
        "content_type": request.content_type.decode() if request.content_type else None,
    }
    return Response(200, json.dumps(parsed).encode(), JSON)


def post(path: str, body: bytes, extra_headers: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n{extra_headers}"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


GET = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"


# --- Parsing and pipelining -----------------------------------------------------------------------------


@given(st.integers(min_value=0, max_value=253402300799))  # up to 9999-12-31 23:59:59
def test_the_date_header_is_written_as_email_utils_writes_it(timestamp: int) -> None:
    from email.utils import formatdate

    assert http_date(timestamp) == formatdate(timestamp, usegmt=True)


def test_a_request_is_parsed_and_its_response_encoded() -> None:
    peer = Peer()
    [answer] = peer.send(post("/api/publish?x=1", b'{"a": 1}'))
    assert answer.status == 200
    assert json.loads(answer.body) == {
        "method": "POST",
        "path": "/api/publish",
        "body": '{"a": 1}',
        "content_type": "application/json",
    }
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["content-length"] == str(len(answer.body))
    assert "date" in answer.headers
    assert "connection" not in answer.headers  # HTTP/1.1 keeps the connection by default
    assert peer.state is CloseState.OPEN


def test_the_headers_asked_for_are_kept_and_looked_up_in_any_case() -> None:
    connection = HttpConnection(HttpLimits(), clock=lambda: 0.0, kept_headers=frozenset({b"x-trace", b"accept"}))
    connection.receive_data(
        b"GET / HTTP/1.1\r\nHost: t\r\nX-Trace: abc\r\nAuthorization: Bearer k\r\n"
        b"Accept: text/plain\r\nACCEPT: */*\r\nContent-Type: application/json\r\n\r\n"
    )
    request = connection.next_request()
    assert request is not None
    assert request.headers == {b"x-trace": b"abc", b"accept": b"text/plain, */*"}
    assert request.header(b"X-Trace") == b"abc"
    assert request.header(b"Host") is None, "not asked for"
    assert request.authorization == request.header(b"authorization") == b"Bearer k"
    assert request.header(b"content-type") == b"application/json"


def test_absolute_form_target_is_routed_by_its_path() -> None:
    peer = Peer()
    [answer] = peer.send(b"GET http://example.com/healthz?q HTTP/1.1\r\nHost: t\r\n\r\n")
    assert json.loads(answer.body)["path"] == "/healthz"


def test_pipelined_requests_are_handed_out_one_at_a_time_and_answered_in_order() -> None:
    connection = HttpConnection(HttpLimits(), clock=lambda: 0.0)
    connection.receive_data(post("/a", b"1") + post("/b", b"2") + GET)
    first = connection.next_request()
    assert first is not None and first.path == b"/a"
    assert connection.next_request() is None, "the next request waits until the first is answered"
    connection.send_response(Response(200, b"one", JSON))
    second = connection.next_request()
    assert second is not None and second.path == b"/b"
    connection.send_response(Response(201, b"two", JSON))
    third = connection.next_request()
    assert third is not None and third.path == b"/healthz"
    connection.send_response(Response(202, b"three", JSON))
    answers = ResponseReader().feed(connection.data_to_send())
    assert [(a.status, a.body) for a in answers] == [(200, b"one"), (201, b"two"), (202, b"three")]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=400), max_size=30))
def test_requests_split_anywhere_parse_the_same(cuts: list[int]) -> None:
    stream = post("/p", b'{"channel":"c","data":[1,2,3]}') + GET + post("/q", b"x" * 100) + GET
    positions = sorted({min(cut, len(stream)) for cut in cuts})
    pieces = [stream[a:b] for a, b in zip([0, *positions], [*positions, len(stream)], strict=True)]
    peer = Peer()
    answers = []
    for piece in pieces:
        answers += peer.send(piece)
    assert [json.loads(a.body)["path"] for a in answers] == ["/p", "/healthz", "/q", "/healthz"]
    assert json.loads(answers[2].body)["body"] == "x" * 100


def test_chunked_body_is_joined() -> None:
    body = b'{"channel": "chunky", "data": "' + b"x" * 100 + b'"}'
    chunks = [body[:7], body[7:50], body[50:]]
    encoded = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks) + b"0\r\n\r\n"
    peer = Peer()
    peer.send(b"POST /api/publish HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
    answers = []
    for piece in (encoded[:10], encoded[10:60], encoded[60:]):
        answers += peer.send(piece)
    [answer] = answers
    assert json.loads(answer.body)["body"] == body.decode()
    assert peer.state is CloseState.OPEN


def test_head_gets_the_headers_of_get_without_the_body() -> None:
    peer = Peer()
    connection = peer.connection
    connection.receive_data(b"HEAD /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
    connection.next_request()
    connection.send_response(Response(503, b"draining\n", b"text/plain"))
    data = connection.data_to_send()
    assert data.endswith(b"Content-Length: 9\r\n\r\n")
    assert b"draining" not in data


# --- Keep-alive and closing -----------------------------------------------------------------------------


def test_connection_close_ends_the_connection_and_later_requests_are_not_answered() -> None:
    peer = Peer()
    answers = peer.send(post("/a", b"1", extra_headers="Connection: close\r\n") + post("/b", b"2"))
    assert [json.loads(a.body)["path"] for a in answers] == ["/a"]
    assert answers[0].headers["connection"] == "close"
    assert peer.state is CloseState.HALF_CLOSE
    assert peer.connection.wants_reading, "what the peer still sends is read and discarded"
    assert peer.send(GET) == []


def test_http_1_0_closes_unless_kept_alive_and_then_says_so() -> None:
    peer = Peer()
    [answer] = peer.send(b"GET /healthz HTTP/1.0\r\n\r\n")
    assert answer.headers["connection"] == "close"
    assert peer.state is CloseState.HALF_CLOSE
    peer = Peer()
    [answer] = peer.send(b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert answer.headers["connection"] == "keep-alive"
    assert peer.state is CloseState.OPEN


def test_a_response_sent_with_close_ends_a_kept_alive_connection() -> None:
    peer = Peer()
    peer.connection.receive_data(GET + GET)
    [answer] = peer.serve(close=True)
    assert answer.headers["connection"] == "close"
    assert peer.state is CloseState.HALF_CLOSE
    assert len(peer.served) == 1, "requests queued behind it are dropped, not answered"


@pytest.mark.parametrize("eof_after", [0, 1, 2])
def test_requests_sent_before_the_peers_eof_are_still_answered(eof_after: int) -> None:
    peer = Peer()
    peer.connection.receive_data(GET + post("/p", b"1") + GET)
    for _ in range(eof_after):  # serve some before the EOF arrives, the rest after
        request = peer.connection.next_request()
        assert request is not None
        peer.connection.send_response(echo(request))
    peer.connection.receive_eof()
    assert peer.state is CloseState.OPEN
    answers = peer.serve()  # every response written, those before the EOF too
    assert [answer.status for answer in answers] == [200, 200, 200]
    assert peer.state is CloseState.CLOSE, "the peer has closed its side: close once answered"


def test_eof_on_an_idle_connection_closes_it() -> None:
    peer = Peer()
    peer.send(GET)
    peer.connection.receive_eof()
    assert peer.state is CloseState.CLOSE


def test_eof_after_our_half_close_means_the_peer_read_the_response() -> None:
    peer = Peer()
    peer.send(b"GET /healthz HTTP/1.0\r\n\r\n")
    assert peer.state is CloseState.HALF_CLOSE
    peer.connection.receive_eof()
    assert peer.state is CloseState.CLOSE


def test_a_request_cut_short_by_eof_is_not_answered() -> None:
    peer = Peer()
    peer.send(b"POST /p HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")
    peer.connection.receive_eof()
    assert peer.serve() == []
    assert peer.state is CloseState.CLOSE


# --- Expect: 100-continue -------------------------------------------------------------------------------


def test_expect_100_continue_gets_an_interim_response_at_once() -> None:
    peer = Peer()
    connection = peer.connection
    connection.receive_data(b"POST /p HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
    assert connection.data_to_send() == b"HTTP/1.1 100 Continue\r\n\r\n"
    [answer] = peer.send(b"{}")
    assert json.loads(answer.body)["body"] == "{}"


def test_expect_100_continue_waits_until_earlier_responses_are_sent() -> None:
    connection = HttpConnection(HttpLimits(), clock=lambda: 0.0)
    connection.receive_data(GET + b"POST /p HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
    request = connection.next_request()
    assert request is not None
    assert connection.data_to_send() == b"", "a 100 now would come before the first request's response"
    connection.send_response(Response(200, b"first", JSON))
    data = connection.data_to_send()
    assert data.endswith(b"first" + b"HTTP/1.1 100 Continue\r\n\r\n")


def test_unsupported_expectation_is_417() -> None:
    peer = Peer()
    [answer] = peer.send(b"POST /p HTTP/1.1\r\nExpect: something\r\nContent-Length: 2\r\n\r\n{}")
    assert answer.status == 417
    assert peer.state is CloseState.HALF_CLOSE


# --- Limits and bad input -------------------------------------------------------------------------------


def test_body_over_the_limit_is_413_and_ends_the_connection() -> None:
    peer = Peer(HttpLimits(max_body_size=100))
    [ok] = peer.send(post("/p", b"x" * 100))
    assert ok.status == 200
    [answer] = peer.send(post("/p", b"x" * 101) + GET)
    assert answer.status == 413 and b"100 bytes" in answer.body
    assert answer.headers["connection"] == "close"
    assert peer.state is CloseState.HALF_CLOSE


def test_chunked_body_over_the_limit_is_413() -> None:
    peer = Peer(HttpLimits(max_body_size=100))
    answers = peer.send(b"POST /p HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
    for _ in range(5):
        answers += peer.send(b"20\r\n" + b"x" * 32 + b"\r\n")
    [answer] = answers
    assert answer.status == 413 and b"100 bytes" in answer.body


def test_oversized_headers_are_431_whether_parsed_or_still_arriving() -> None:
    peer = Peer()
    [answer] = peer.send(b"GET /healthz HTTP/1.1\r\n" + b"X-Many: a\r\n" * 7000 + b"\r\n")
    assert answer.status == 431
    peer = Peer()
    answers = peer.send(b"GET /healthz HTTP/1.1\r\nX-Big: ")
    for _ in range(10):  # one endless header line: refused before it ends
        answers += peer.send(b"a" * 10_000)
    [answer] = answers
    assert answer.status == 431
    assert peer.state is CloseState.HALF_CLOSE


def test_a_valid_request_then_garbage_answers_both_in_order() -> None:
    peer = Peer()
    answers = peer.send(post("/p", b"1") + b"GARBAGE\x01 / HTTP/9\r\n\r\n")
    assert [a.status for a in answers] == [200, 400]
    assert b"malformed HTTP" in answers[1].body
    assert peer.state is CloseState.HALF_CLOSE


def test_tls_client_is_told_this_port_speaks_plain_http() -> None:
    peer = Peer()
    [answer] = peer.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(32))
    assert answer.status == 400
    assert b"TLS" in answer.body and b"http://" in answer.body


def test_upgrade_request_is_400_and_ends_the_connection() -> None:
    peer = Peer()
    [answer] = peer.send(b"GET /healthz HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x00")
    assert answer.status == 400 and b"upgrade" in answer.body
    assert peer.state is CloseState.HALF_CLOSE


def test_bad_content_length_is_400() -> None:
    peer = Peer()
    [answer] = peer.send(b"POST /p HTTP/1.1\r\nHost: t\r\nContent-Length: nope\r\n\r\n{}")
    assert answer.status == 400
    assert peer.state is CloseState.HALF_CLOSE


def test_refuse_answers_after_what_is_owed_and_ends_the_connection() -> None:
    peer = Peer()
    peer.connection.refuse(503, "too many connections")
    [answer] = peer.serve()
    assert (answer.status, answer.body) == (503, b"too many connections")
    assert peer.state is CloseState.HALF_CLOSE
    assert peer.send(GET) == [], "what the peer sends after is discarded"


# --- Flow control ---------------------------------------------------------------------------------------


def test_reading_stops_while_too_many_requests_wait_and_resumes_when_they_drain() -> None:
    connection = HttpConnection(HttpLimits(max_queued_requests=4), clock=lambda: 0.0)
    connection.receive_data(GET * 4)
    assert not connection.wants_reading
    assert connection.next_request() is not None
    assert connection.wants_reading, "three wait now"
    connection.receive_data(GET * 10)  # what was in flight when reading stopped is still parsed
    assert not connection.wants_reading
    connection.send_response(Response(200, b"", JSON))
    answered = 1
    while connection.next_request() is not None:
        connection.send_response(Response(200, b"", JSON))
        answered += 1
    assert answered == 14
    assert connection.wants_reading


def test_reading_stops_while_the_peer_does_not_read_our_responses() -> None:
    peer = Peer()
    peer.connection.pause_writing()
    assert not peer.connection.wants_reading
    peer.connection.resume_writing()
    assert peer.connection.wants_reading


# --- Timeouts -------------------------------------------------------------------------------------------


def test_an_idle_kept_alive_connection_is_closed_quietly() -> None:
    peer = Peer(HttpLimits(idle_timeout=60.0))
    peer.send(GET)
    assert peer.connection.get_timer() == peer.now + 60.0
    assert peer.advance(59.0) == [] and peer.state is CloseState.OPEN
    assert peer.advance(1.0) == [], "no response nobody asked for"
    assert peer.state is CloseState.HALF_CLOSE


def test_each_request_restarts_the_idle_time() -> None:
    peer = Peer(HttpLimits(idle_timeout=60.0))
    peer.send(GET)
    for _ in range(5):
        peer.advance(50.0)
        assert len(peer.send(GET)) == 1
    assert peer.state is CloseState.OPEN


def test_a_slow_request_head_is_408_after_the_request_timeout() -> None:
    peer = Peer(HttpLimits(request_timeout=10.0, idle_timeout=60.0))
    peer.send(GET)
    peer.advance(30.0)  # idle for a while: the clock starts at the first byte of the next request
    head = b"GET /healthz HTTP/1.1\r\n"
    assert peer.send(head[:1]) == []
    for byte in head[1:10]:  # one byte a second does not keep the request alive
        assert peer.advance(1.0) == []
        assert peer.send(bytes([byte])) == []
    [answer] = peer.advance(1.0)
    assert answer.status == 408 and b"headers" in answer.body
    assert peer.state is CloseState.HALF_CLOSE


def test_a_slow_body_is_408_after_the_request_timeout_from_its_headers() -> None:
    peer = Peer(HttpLimits(request_timeout=10.0))
    peer.send(b"POST /p HTTP/1.1\r\nContent-Length: 100\r\n\r\n")
    peer.advance(5.0)
    assert peer.send(b"x" * 50) == []
    [answer] = peer.advance(5.0)
    assert answer.status == 408 and b"body" in answer.body


def test_a_connection_that_sends_nothing_is_closed_quietly_after_the_request_timeout() -> None:
    peer = Peer(HttpLimits(request_timeout=10.0, idle_timeout=60.0))
    assert peer.connection.get_timer() == peer.now + 10.0
    assert peer.advance(10.0) == []
    assert peer.state is CloseState.HALF_CLOSE


def test_no_read_deadline_while_we_serve_or_while_reading_is_stopped() -> None:
    peer = Peer(HttpLimits(request_timeout=10.0, max_queued_requests=2))
    connection = peer.connection
    connection.receive_data(GET)
    assert connection.next_request() is not None
    assert connection.get_timer() is None, "the peer waits for us: it cannot be late"
    connection.receive_data(GET * 2 + b"GET /")
    assert not connection.wants_reading
    assert connection.get_timer() is None
    peer.advance(100.0)
    connection.send_response(Response(200, b"", JSON))
    assert connection.next_request() is not None  # reading resumes: the partial request's time restarts
    assert connection.get_timer() == peer.now + 10.0


def test_a_peer_that_leaves_responses_unread_is_aborted_after_the_idle_timeout() -> None:
    peer = Peer(HttpLimits(idle_timeout=60.0))
    peer.send(GET)
    peer.connection.pause_writing()
    assert peer.connection.get_timer() == peer.now + 60.0
    peer.advance(60.0)
    assert peer.state is CloseState.ABORT


def test_lingering_ends_after_the_linger_time() -> None:
    peer = Peer(HttpLimits(linger_time=2.0))
    peer.send(b"GET /healthz HTTP/1.0\r\n\r\n")
    assert peer.state is CloseState.HALF_CLOSE
    assert peer.connection.get_timer() == peer.now + 2.0
    peer.advance(2.0)
    assert peer.state is CloseState.ABORT


def test_timeouts_can_be_turned_off() -> None:
    peer = Peer(HttpLimits(idle_timeout=None, request_timeout=None))
    assert peer.connection.get_timer() is None
    peer.send(GET)
    peer.send(b"GET /")
    assert peer.connection.get_timer() is None


def test_a_timer_call_before_the_deadline_does_nothing() -> None:
    peer = Peer(HttpLimits(idle_timeout=60.0))
    peer.send(GET)
    peer.connection.handle_timer(peer.now + 30.0)
    assert peer.state is CloseState.OPEN


@pytest.mark.parametrize(
    "limits",
    [
        {"max_body_size": 0},
        {"max_header_size": 0},
        {"max_queued_requests": 0},
        {"idle_timeout": 0},
        {"request_timeout": -1.0},
        {"request_timeout": float("nan")},
        {"linger_time": 0},
    ],
)
def test_limits_out_of_range_are_refused(limits: dict) -> None:
    with pytest.raises(ValueError):
        HttpLimits(**limits)
