"""Fuzz harness of the publish API's request path: any bytes a client sends to the API port.

The bytes go to wsd.server.api's sans-I/O `HttpConnection` in chunks, and its requests to the `Router`
with the publish endpoints over a publisher that answers at once, the way the asyncio adapter
(wsd.server.api.server) drives them: it reads only while the connection `wants_reading`, serves the
queued requests in order, moves the clock so timeouts fire, pauses writing and half-closes.

Contract checked on every input:
- the output is a sequence of well-formed HTTP/1.1 responses, one per request handed out, in order
  (100 Continue only before a response), each with its Content-Length (HEAD: no body), a JSON body
  where it says JSON (`{"error": "..."}` for every error), `Connection: close` on the last one when
  the connection ends, and nothing after it;
- nothing is an internal error: no 500, nothing logged at ERROR (the router answers every error
  itself, and the connection turns every parser error into a 4xx);
- a publish reaches the publisher with a valid channel and data within the limits, and its 200
  carries the offset the publisher gave (a batch: every offset, in order);
- memory stays bounded: reading stops while `max_queued_requests` parsed requests wait (one read adds
  at most the requests it holds, plus one refusal), the request being parsed holds at most the header
  and body limits, and no response is large.

Input layout: byte 0 (options), byte 1 (timing), then the bytes the client sends; see `Options`.

    python -m tests.fuzz.fuzz_http_api [libFuzzer flags] [corpus dirs]
"""

from __future__ import annotations

import logging
import re
import sys
from dataclasses import dataclass

import atheris
import httptools
import orjson

with atheris.instrument_imports(include=["wsd"]):
    from wsd.server import json_limits
    from wsd.server.api import PublishError, Router
    from wsd.server.api.endpoints import add_publish_api
    from wsd.server.api.http11 import CloseState, HttpConnection, HttpLimits, Request
    from wsd.server.channel_names import channel_name_error

LIMITS = HttpLimits(
    max_header_size=2048, max_body_size=4096, max_queued_requests=4, idle_timeout=60.0, request_timeout=10.0
)
MAX_BATCH = 4
MAX_DATA_SIZE = 512
API_KEY = b"fuzz-key"
CHUNK_SIZES = (1, 3, 7, 16, 61, 128, 500, 4096)
SMALL_READS_UP_TO = 1024
MIN_REQUEST_SIZE = 18
MAX_RESPONSE_SIZE = 2048  # the longest error message, a 100-character URL excerpt and the headers
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_STATUS_LINE = re.compile(rb"HTTP/1\.1 ([1-5][0-9][0-9]) [A-Za-z][A-Za-z -]*")
_HEADER_LINE = re.compile(rb"([A-Za-z-]+): ([\x20-\x7e]*)")


@dataclass(frozen=True)
class Options:
    """Byte 0: bit 0 an API key is required; bit 1 the publisher refuses channels starting with "f"
    (503); bit 2 the server is draining (health false: /healthz 503, connections end after a
    response); bit 3 the client half-closes at the end; bits 4-6 the size of its reads over the first
    1024 bytes (then 4096 at a time). Byte 1: bits 0-3
    seconds the clock moves per chunk; bits 4-5 serve every 1, 2, 4 or 8 chunks; bit 6 writing is
    paused and resumed around every other chunk."""

    api_key: bool
    failing_publisher: bool
    draining: bool
    eof: bool
    chunk_size: int
    clock_step: float
    serve_every: int
    pause_writing: bool

    @classmethod
    def of(cls, data: bytes) -> Options:
        first, second = (data + b"\0\0")[:2]
        return cls(
            api_key=bool(first & 1), failing_publisher=bool(first & 2), draining=bool(first & 4),
            eof=bool(first & 8), chunk_size=CHUNK_SIZES[(first >> 4) & 7], clock_step=float(second & 0x0F),
            serve_every=1 << ((second >> 4) & 3), pause_writing=bool(second & 0x40),
        )  # fmt: skip


class ImmediatePublisher:
    """Answers every publish at once with the channel's next offset, and checks what it was given."""

    def __init__(self, failing: bool) -> None:
        self.failing = failing
        self.offsets: dict[str, int] = {}
        self.given: list[int] = []  # offsets handed out since the last request was served

    def publish(self, channel: str, data_json: bytes) -> int:
        assert channel_name_error(channel) is None, channel
        assert isinstance(data_json, bytes) and len(data_json) <= MAX_DATA_SIZE, len(data_json)
        orjson.loads(data_json)
        assert json_limits.nesting_depth(data_json) <= json_limits.MAX_DEPTH
        if self.failing and channel.startswith("f"):
            raise PublishError(503, "refused by the fuzz publisher")
        offset = self.offsets.get(channel, 0) + 1
        self.offsets[channel] = offset
        self.given.append(offset)
        return offset


class ErrorLog(logging.Handler):
    """Fails the input on any ERROR record: the API logs only what is a bug of its own."""

    def emit(self, record: logging.LogRecord) -> None:
        raise AssertionError(f"logged at {record.levelname}: {record.getMessage()}")


logging.getLogger("wsd").addHandler(ErrorLog(logging.ERROR))
logging.getLogger("wsd").propagate = False


@dataclass
class Served:
    """One request handed out by the connection, with what its response must say."""

    method: bytes
    path: bytes | None
    status: int
    offsets: list[int]


def check_response_body(served: Served, content_type: bytes, body: bytes) -> None:
    if content_type != b"application/json":
        assert served.path == b"/healthz" and served.status in (200, 503), (served, content_type)
        return
    payload = orjson.loads(body)
    if served.status >= 400:
        assert isinstance(payload, dict) and isinstance(payload["error"], str) and payload["error"], payload
        assert set(payload) <= {"error", "offsets"}, payload
        if "offsets" in payload:
            assert payload["offsets"] == served.offsets[: len(payload["offsets"])], (payload, served)
        return
    assert served.status == 200, served
    if served.path == b"/api/publish":
        assert payload == {"offset": served.offsets[0]} and len(served.offsets) == 1, (payload, served)
    else:
        assert served.path == b"/api/publish_batch" and payload == {"offsets": served.offsets}, (payload, served)


def skip_continue(output: bytes, at: int) -> int:
    """Past one "100 Continue" at `at`, if there is one. It is owed to the request being parsed, which
    may still be refused (408, 413...) or cut short, so it may come before any response, or last; but
    only one per request: never two without a response between them."""
    if output.startswith(_CONTINUE, at):
        at += len(_CONTINUE)
        assert not output.startswith(_CONTINUE, at), "two 100 Continue in a row"
    return at


def check_output(output: bytes, served: list[Served], ended: bool) -> None:
    """`output` is exactly one response per served request, in order (see the module docstring)."""
    at = 0
    for index, request in enumerate(served):
        at = skip_continue(output, at)
        start = at
        head_end = output.find(b"\r\n\r\n", at)
        assert head_end >= 0, f"response {index} of {len(served)} missing: {output[at : at + 200]!r}"
        lines = output[at:head_end].split(b"\r\n")
        at = head_end + 4
        status_line = _STATUS_LINE.fullmatch(lines[0])
        assert status_line, lines[0]
        status = int(status_line.group(1))
        assert status == request.status, (status, request)
        assert status != 500, "an internal error"
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            header = _HEADER_LINE.fullmatch(line)
            assert header, line
            name = header.group(1).lower()
            assert name not in headers, f"header {name!r} twice"
            headers[name] = header.group(2)
        length = int(headers[b"content-length"])
        assert b"date" in headers and b"content-type" in headers, headers
        closes = headers.get(b"connection") == b"close"
        last = index == len(served) - 1
        assert not closes or last, f"Connection: close on response {index} of {len(served)}"
        if closes:
            assert ended, "Connection: close, and the connection stays open"
        if status == 401:
            assert headers.get(b"www-authenticate") == b'Bearer realm="wsd"', headers
        if status == 405:
            assert b"allow" in headers, headers
        if request.method == b"HEAD":
            body = b""
        else:
            body = output[at : at + length]
            assert len(body) == length, f"body of {len(body)} bytes, Content-Length says {length}"
            at += length
        assert at - start < MAX_RESPONSE_SIZE, (status, at - start)
        if request.method != b"HEAD":
            check_response_body(request, headers[b"content-type"], body)
    if not ended:
        at = skip_continue(output, at)
    assert at == len(output), f"bytes after the last response: {output[at : at + 200]!r}"


def check_bounded(connection: HttpConnection, queued_before: int, chunk: bytes) -> None:
    # Reading stops once max_queued_requests wait, but one read is parsed whole: it can complete the
    # request begun before it, as many more as it holds (the shortest, "GET / HTTP/1.1\r\n\r\n", is 18
    # bytes), and one refusal.
    assert queued_before < LIMITS.max_queued_requests, "read while the connection did not want to"
    assert len(connection._queue) <= queued_before + len(chunk) // MIN_REQUEST_SIZE + 2, len(connection._queue)
    parsing: Request | None = connection._parsing
    if parsing is not None:
        assert len(parsing.body) <= LIMITS.max_body_size, len(parsing.body)
        assert len(parsing.url) <= LIMITS.max_header_size + max(CHUNK_SIZES), len(parsing.url)


def check_one_input(data: bytes) -> None:
    options = Options.of(data)
    stream = data[2:]
    now = [0.0]
    publisher = ImmediatePublisher(options.failing_publisher)
    router = Router(api_key=API_KEY if options.api_key else None)
    add_publish_api(
        router, publisher, health=lambda: not options.draining, max_batch=MAX_BATCH, max_data_size=MAX_DATA_SIZE
    )
    connection = HttpConnection(LIMITS, clock=lambda: now[0], kept_headers=router.kept_headers)
    served: list[Served] = []
    output = bytearray()

    def serve() -> None:
        while (request := connection.next_request()) is not None:
            publisher.given = []
            response = router.handle(request)
            assert not hasattr(response, "__await__"), "a publisher that answers at once gives answers at once"
            if connection.close_state is CloseState.OPEN:
                served.append(Served(request.method, request.path, response.status, publisher.given))
            connection.send_response(response, close=options.draining)

    at = chunks = 0
    while at < len(stream) and connection.close_state < CloseState.CLOSE:
        if not connection.wants_reading:
            serve()
            if not connection.wants_reading:
                break  # a well-behaved adapter stops reading here; so does the peer's data
        # Small reads cut requests at every point, but only over the first bytes: fed one byte at a time
        # throughout, a long input would cost thousands of calls for the same coverage.
        chunk = stream[at : at + (options.chunk_size if at < SMALL_READS_UP_TO else max(CHUNK_SIZES))]
        at += len(chunk)
        chunks += 1
        if options.pause_writing and chunks % 2:
            connection.pause_writing()
            assert not connection.wants_reading or connection.close_state is CloseState.HALF_CLOSE
            connection.resume_writing()
        queued_before = len(connection._queue)
        connection.receive_data(chunk)
        check_bounded(connection, queued_before, chunk)
        if chunks % options.serve_every == 0:
            serve()
        if options.clock_step:
            now[0] += options.clock_step
            connection.handle_timer(now[0])
        output += connection.data_to_send()
    serve()
    if options.eof and connection.close_state < CloseState.CLOSE:
        connection.receive_eof()
        serve()
    output += connection.data_to_send()
    check_output(bytes(output), served, ended=connection.close_state is not CloseState.OPEN)
    # The connection's own verdict is consistent: once it ended, it writes nothing more.
    if connection.close_state is not CloseState.OPEN:
        connection.receive_data(b"GET /healthz HTTP/1.1\r\n\r\n")
        serve()
        assert connection.data_to_send() == b""


def main() -> None:
    atheris.Setup(sys.argv, check_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()

assert httptools  # the parser the connection uses (imported before instrumentation: not ours)
