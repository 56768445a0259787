"""The publish HTTP API that the application's backend calls, served by every worker on --api-port.

``POST /api/publish`` takes ``{"channel": ..., "data": ...}`` and answers ``{"offset": N}``;
``POST /api/publish_batch`` takes a list of those and answers ``{"offsets": [N, ...]}`` in request order;
``GET /healthz`` answers ``ok`` (or ``503 draining``). Every error is ``{"error": "<message>"}``.

HTTP/1.1 is parsed by httptools (llhttp) inside a plain asyncio Protocol: keep-alive and pipelining are
supported, requests on one connection are served strictly one after another (so responses come back in
request order and a connection's publishes reach the publisher in order), and a Task is only created when
a request has to await the publisher. Publishing itself is injected (`Publisher`), so this module knows
nothing about the bus.
"""

import asyncio
import http
import logging
import socket
import time
from collections import deque
from collections.abc import Callable, Coroutine
from email.utils import formatdate
from typing import Any, Protocol, cast

import httptools
import orjson

from wsd.server.channel_names import channel_name_error

logger = logging.getLogger(__name__)

DEFAULT_MAX_BODY_SIZE = 1 << 20
DEFAULT_MAX_BATCH = 1000

# llhttp puts no limit on the request line and headers, and httptools buffers a header value until it
# ends, so without our own cap one endless header line would grow memory without bound.
MAX_HEADER_SIZE = 64 * 1024

# Pipelined requests parsed ahead of the one being served. Past this we stop reading the socket until
# the queue drains, so a client that pipelines without reading responses cannot grow our memory.
MAX_QUEUED_REQUESTS = 64

# After a response that ends the connection we half-close and keep discarding what the client still
# sends for a while: closing with unread data in the receive buffer makes the kernel send a RST, which
# can destroy our error response before the client reads it (the classic "lingering close").
LINGER_SECONDS = 2.0

PUBLISH_PATH = b"/api/publish"
PUBLISH_BATCH_PATH = b"/api/publish_batch"
HEALTH_PATH = b"/healthz"

# Path -> methods it accepts (also the value of the Allow header of a 405).
_ALLOWED_METHODS: dict[bytes, tuple[bytes, ...]] = {
    PUBLISH_PATH: (b"POST",),
    PUBLISH_BATCH_PATH: (b"POST",),
    HEALTH_PATH: (b"GET", b"HEAD"),
}
_PATHS_WITH_JSON_BODY = (PUBLISH_PATH, PUBLISH_BATCH_PATH)
_MESSAGE_FIELDS = frozenset(("channel", "data"))
_MESSAGE_SHAPE = '{"channel": "<name>", "data": <any JSON>}'

# A TLS record header for a handshake: a client that was pointed at https:// by mistake.
_TLS_HANDSHAKE_START = b"\x16\x03"

_JSON = b"application/json"
_TEXT = b"text/plain; charset=utf-8"


class PublishError(Exception):
    """Raised by a publisher to answer with `status` and ``{"error": message}`` (e.g. 503 while draining)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message

    def __str__(self) -> str:
        return f"{self.status}: {self.message}"


class Publisher(Protocol):
    """What the API needs from the rest of the server: append one message to a channel."""

    async def publish(self, channel: str, data_json: bytes) -> int:
        """Publish `data_json` (compact JSON text) on `channel`; return the message's offset."""
        ...


class _RequestRejected(Exception):
    """A request that cannot be served and ends the connection (bad framing, too large, ...)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _BadBody(Exception):
    """The body of a publish request is not what the endpoint takes; the connection stays usable."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _Request:
    """One parsed HTTP request, waiting in the connection's queue for its turn."""

    __slots__ = (
        "method",
        "url",
        "path",
        "content_type",
        "content_length",
        "expect",
        "body",
        "keep_alive",
        "keep_alive_by_default",
        "rejection",
    )

    def __init__(self) -> None:
        self.method = b""
        self.url = b""
        # None when the request target is not a path we can read (e.g. "*").
        self.path: bytes | None = None
        self.content_type: bytes | None = None
        self.content_length: bytes | None = None
        self.expect: bytes | None = None
        # None while the body is being discarded (a request whose endpoint takes no body).
        self.body: bytearray | None = None
        self.keep_alive = True
        # HTTP/1.1 keeps connections alive unless told otherwise; HTTP/1.0 needs "Connection: keep-alive".
        self.keep_alive_by_default = True
        # Set for a request answered with an error before it was routed; such a request ends the connection.
        self.rejection: _RequestRejected | None = None

    @classmethod
    def rejected(cls, rejection: _RequestRejected) -> "_Request":
        request = cls()
        request.keep_alive = False
        request.rejection = rejection
        return request



def _path_of(url: bytes) -> bytes | None:
    if url.startswith(b"/"):
        return url.partition(b"?")[0]
    # Absolute form ("POST http://host/api/publish") is legal HTTP/1.1, if rare.
    try:
        return httptools.parse_url(url).path
    except httptools.HttpParserInvalidURLError:
        return None


# --- Responses -------------------------------------------------------------------------------------

_cached_date_second = 0
_cached_date_header = b""


def _date_header() -> bytes:
    # formatdate() is slow relative to the rest of a response; the value only changes once a second.
    global _cached_date_second, _cached_date_header
    now = int(time.time())
    if now != _cached_date_second:
        _cached_date_second = now
        _cached_date_header = b"Date: " + formatdate(now, usegmt=True).encode() + b"\r\n"
    return _cached_date_header


def _status_line(status: int) -> bytes:
    try:
        reason = http.HTTPStatus(status).phrase
    except ValueError:
        reason = "Unknown"
    return f"HTTP/1.1 {status} {reason}\r\n".encode()


_STATUS_LINES = {status: _status_line(status) for status in http.HTTPStatus}


def _build_response(
    request: _Request, status: int, body: bytes, content_type: bytes, extra_headers: bytes = b""
) -> bytes:
    status_line = _STATUS_LINES.get(status) or _status_line(status)
    if not request.keep_alive:
        connection = b"Connection: close\r\n"
    elif not request.keep_alive_by_default:
        connection = b"Connection: keep-alive\r\n"
    else:
        connection = b""
    head = b"".join(
        (
            status_line,
            _date_header(),
            b"Content-Type: ",
            content_type,
            b"\r\nContent-Length: ",
            str(len(body)).encode(),
            b"\r\n",
            connection,
            extra_headers,
            b"\r\n",
        )
    )
    # HEAD gets the headers a GET would get, without the body.
    return head if request.method == b"HEAD" else head + body


def _json_response(request: _Request, status: int, payload: object, extra_headers: bytes = b"") -> bytes:
    return _build_response(request, status, orjson.dumps(payload), _JSON, extra_headers)


def _error_response(request: _Request, status: int, message: str, extra_headers: bytes = b"") -> bytes:
    return _json_response(request, status, {"error": message}, extra_headers)


# --- Body validation (pure functions) -------------------------------------------------------------


def _check_content_type(content_type: bytes | None) -> None:
    """Accept a missing Content-Type, application/json and any */*+json; refuse the rest with 415."""
    if content_type is None:
        return
    media_type = content_type.partition(b";")[0].strip().lower()
    if media_type == _JSON or media_type.endswith(b"+json"):
        return
    shown = content_type.decode("latin-1")
    raise _BadBody(415, f"Content-Type must be application/json, got {shown!r}")


def _parse_json_body(body: bytes, expected: str) -> object:
    if not body.strip():
        raise _BadBody(400, f"request body is empty; send {expected}")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise _BadBody(400, f"request body is not valid JSON ({error}); send {expected}") from None


def _json_type_name(value: object) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    return "a number"


def _parse_message(message: object, where: str) -> tuple[str, bytes]:
    """Check one ``{"channel", "data"}`` object; return the channel and data re-serialized compactly."""
    if not isinstance(message, dict):
        raise _BadBody(400, f"{where} must be a JSON object {_MESSAGE_SHAPE}, got {_json_type_name(message)}")
    if "channel" not in message:
        raise _BadBody(400, f'{where} has no "channel" field; expected {_MESSAGE_SHAPE}')
    if "data" not in message:
        raise _BadBody(400, f'{where} has no "data" field; expected {_MESSAGE_SHAPE}')
    if len(message) != len(_MESSAGE_FIELDS):
        # Refused rather than ignored: a misspelt optional field would otherwise be silently dropped.
        unknown = sorted(set(message) - _MESSAGE_FIELDS)
        raise _BadBody(400, f'{where} has unknown field(s) {unknown}; only "channel" and "data" are allowed')
    channel = message["channel"]
    error = channel_name_error(channel)
    if error is not None:
        raise _BadBody(400, f"{where}: {error}")
    return channel, orjson.dumps(message["data"])


def parse_publish_body(body: bytes) -> tuple[str, bytes]:
    """Validate a /api/publish body; return (channel, data as compact JSON). Raises _BadBody."""
    return _parse_message(_parse_json_body(body, f"a JSON object {_MESSAGE_SHAPE}"), "request body")


def parse_publish_batch_body(body: bytes, max_batch: int) -> list[tuple[str, bytes]]:
    """Validate a /api/publish_batch body; return [(channel, data as compact JSON), ...]. Raises _BadBody."""
    expected = f"a non-empty JSON list of {_MESSAGE_SHAPE} objects"
    messages = _parse_json_body(body, expected)
    if not isinstance(messages, list):
        raise _BadBody(400, f"request body must be {expected}, got {_json_type_name(messages)}")
    if not messages:
        raise _BadBody(400, f"batch is empty; send {expected}")
    if len(messages) > max_batch:
        raise _BadBody(
            413, f"batch has {len(messages)} messages, more than the limit of {max_batch}; split it"
        )
    return [_parse_message(message, f"batch item {index}") for index, message in enumerate(messages)]


# --- The connection protocol ----------------------------------------------------------------------


class PublishApiProtocol(asyncio.Protocol):
    """One HTTP/1.1 connection to the publish API."""

    def __init__(
        self,
        publisher: Publisher,
        *,
        max_body_size: int = DEFAULT_MAX_BODY_SIZE,
        max_batch: int = DEFAULT_MAX_BATCH,
        health: Callable[[], bool] = lambda: True,
    ) -> None:
        self._publisher = publisher
        self._max_body_size = max_body_size
        self._max_batch = max_batch
        self._health = health

        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._request_being_parsed: _Request | None = None
        self._received_body_size = 0
        # Size of the request line and headers of the request being parsed, as the parser reports them.
        self._parsed_header_size = 0
        # Bytes received since the last end of headers while parsing headers; see MAX_HEADER_SIZE.
        self._header_bytes = 0
        self._parsing_body = False
        self._received_data = False

        self._queued_requests: deque[_Request] = deque()
        # The Task serving requests while one of them awaits the publisher; see _serve_with_publisher.
        self._serving_task: asyncio.Task[None] | None = None
        self._unsent_output: list[bytes] = []
        self._flush_scheduled = False
        # False once a request ended the connection (error, Connection: close, client EOF): later bytes
        # are discarded instead of parsed.
        self._accepting_requests = True
        self._closing = False
        self._peer_sent_eof = False
        self._writing_paused = False
        self._reading_paused = False
        self._linger_timer: asyncio.TimerHandle | None = None

    # asyncio.Protocol ----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport has the asyncio.Transport interface without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._accepting_requests = False
        self._queued_requests.clear()
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
        # An in-flight publish is left to finish: the message may already be on the bus, and cancelling
        # half way through a batch would only make the outcome less predictable. Its response is dropped.

    def data_received(self, data: bytes) -> None:
        if not self._accepting_requests:
            return
        is_first_data = not self._received_data
        self._received_data = True
        if not self._parsing_body:
            self._header_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # The upgrade request itself was queued already, marked as rejected in on_headers_complete.
            self._accepting_requests = False
        except httptools.HttpParserError as error:
            # Our own rejections raised inside a parser callback arrive wrapped in a callback error.
            cause = error.__context__
            if not self._accepting_requests:
                # llhttp refuses data after a "Connection: close" request; we were going to ignore it.
                pass
            elif isinstance(cause, _RequestRejected):
                self._reject_and_end_connection(cause)
            elif isinstance(error, httptools.HttpParserCallbackError):
                logger.error("publish API: error in an HTTP parser callback", exc_info=cause or error)
                self._reject_and_end_connection(_RequestRejected(500, f"internal error: {cause or error!r}"))
            else:
                message = f"malformed HTTP request: {error}"
                if is_first_data and data.startswith(_TLS_HANDSHAKE_START):
                    message += " (this looks like TLS: the publish API speaks plain http://, not https://)"
                self._reject_and_end_connection(_RequestRejected(400, message))
        else:
            if not self._parsing_body and self._header_bytes > MAX_HEADER_SIZE:
                self._reject_and_end_connection(_RequestRejected(431, self._headers_too_large_message()))
        self._serve_queued_requests()

    def eof_received(self) -> bool:
        self._peer_sent_eof = True
        self._accepting_requests = False
        if self._closing:
            return False  # our side is done too: let the transport close itself
        if not self._queued_requests and self._serving_task is None:
            self._end_connection()  # after writing out the responses still waiting for the flush
        # Otherwise keep the write side open: requests sent before the EOF still get their responses.
        return True

    def pause_writing(self) -> None:
        self._writing_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._update_reading()

    # httptools callbacks -------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._request_being_parsed = _Request()
        self._parsed_header_size = 0
        self._received_body_size = 0

    def on_url(self, url: bytes) -> None:
        request = self._request_being_parsed
        assert request is not None
        request.url += url
        self._parsed_header_size += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        request = self._request_being_parsed
        assert request is not None
        self._parsed_header_size += len(name) + len(value) + 4
        name = name.lower()
        if name == b"content-type":
            request.content_type = value
        elif name == b"content-length":
            request.content_length = value
        elif name == b"expect":
            request.expect = value

    def on_headers_complete(self) -> None:
        request = self._request_being_parsed
        assert request is not None
        self._parsing_body = True
        self._header_bytes = 0
        if self._parsed_header_size > MAX_HEADER_SIZE:
            raise _RequestRejected(431, self._headers_too_large_message())
        request.method = self._parser.get_method()
        request.keep_alive = self._parser.should_keep_alive()
        request.keep_alive_by_default = self._parser.get_http_version() != "1.0"
        request.path = _path_of(request.url)
        if self._parser.should_upgrade():
            # Also reached by CONNECT. What follows is not HTTP, so this is the connection's last request.
            request.keep_alive = False
            request.rejection = _RequestRejected(400, "protocol upgrade and CONNECT are not supported here")
            return
        if request.content_length is not None and int(request.content_length) > self._max_body_size:
            raise _RequestRejected(413, self._body_too_large_message())
        if request.method == b"POST" and request.path in _PATHS_WITH_JSON_BODY:
            request.body = bytearray()
        if request.expect is not None:
            if request.expect.lower() != b"100-continue":
                raise _RequestRejected(417, f"unsupported Expect: {request.expect.decode('latin-1')!r}")
            # Only when it cannot overtake an earlier response; otherwise the client sends the body
            # anyway after its own timeout.
            if not self._queued_requests and self._serving_task is None:
                self._write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, chunk: bytes) -> None:
        request = self._request_being_parsed
        assert request is not None
        # Checked again here for chunked bodies, which announce no length.
        self._received_body_size += len(chunk)
        if self._received_body_size > self._max_body_size:
            raise _RequestRejected(413, self._body_too_large_message())
        if request.body is not None:
            request.body += chunk

    def on_message_complete(self) -> None:
        request = self._request_being_parsed
        assert request is not None
        self._request_being_parsed = None
        self._parsing_body = False
        self._queued_requests.append(request)
        if not request.keep_alive:
            # Anything pipelined after "Connection: close" is not for us to answer.
            self._accepting_requests = False

    # Serving -------------------------------------------------------------------------------------

    def _serve_queued_requests(self) -> None:
        """Answer queued requests in order; at the first that must await the publisher, hand over to a Task."""
        while self._queued_requests and self._serving_task is None and not self._closing:
            request = self._queued_requests.popleft()
            outcome = self._handle_safely(request)
            if isinstance(outcome, bytes):
                self._send(request, outcome)
            else:
                self._serving_task = asyncio.get_running_loop().create_task(
                    self._serve_with_publisher(request, outcome)
                )
        self._after_serving()

    async def _serve_with_publisher(
        self, request: _Request, outcome: bytes | Coroutine[Any, Any, bytes]
    ) -> None:
        """Serve `request`, then whatever is queued behind it, awaiting the publisher where needed."""
        # One Task for a whole run of pipelined requests rather than one per publish: when the publisher
        # answers without suspending (the common case), the run costs no extra loop iterations, and its
        # responses leave in one write (see _send).
        try:
            while True:
                if not isinstance(outcome, bytes):
                    outcome = await outcome
                if self._closing:
                    return  # the client is gone; the publish happened but nobody is there to hear of it
                self._send(request, outcome)
                if not self._queued_requests or self._closing:
                    return
                request = self._queued_requests.popleft()
                self._update_reading()
                outcome = self._handle_safely(request)
        finally:
            self._serving_task = None
            self._after_serving()

    def _after_serving(self) -> None:
        if self._peer_sent_eof and not self._queued_requests and self._serving_task is None:
            self._end_connection()
        self._update_reading()

    def _handle_safely(self, request: _Request) -> bytes | Coroutine[Any, Any, bytes]:
        try:
            # While draining, end keep-alive connections after their current request so the backend's
            # connection pool reconnects to a worker that is staying.
            if request.keep_alive and not self._health():
                request.keep_alive = False
            return self._handle(request)
        except Exception as error:
            logger.exception("publish API: failed to handle %r", request.url)
            return _error_response(request, 500, f"internal error: {error!r}")

    def _send(self, request: _Request, response: bytes) -> None:
        self._write(response)
        if not request.keep_alive:
            self._end_connection()

    def _write(self, data: bytes) -> None:
        # Responses are collected and written once per loop iteration: a pipelined burst then costs one
        # send() system call instead of one per response.
        self._unsent_output.append(data)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._unsent_output and self._transport is not None and not self._transport.is_closing():
            self._transport.write(b"".join(self._unsent_output))
        self._unsent_output.clear()

    def _handle(self, request: _Request) -> bytes | Coroutine[Any, Any, bytes]:
        """Route one request: a complete response, or a coroutine producing it after publishing."""
        if request.rejection is not None:
            return _error_response(request, request.rejection.status, request.rejection.message)
        path = request.path
        allowed_methods = _ALLOWED_METHODS.get(path) if path is not None else None
        if allowed_methods is None:
            shown = request.url[:100].decode("latin-1") + ("..." if len(request.url) > 100 else "")
            known = ", ".join(p.decode() for p in _ALLOWED_METHODS)
            return _error_response(request, 404, f"no such endpoint {shown!r}; the endpoints are {known}")
        if request.method not in allowed_methods:
            allow = b", ".join(allowed_methods)
            return _error_response(
                request,
                405,
                f"{request.method.decode()} is not allowed on {path.decode()}; use {allow.decode()}",
                extra_headers=b"Allow: " + allow + b"\r\n",
            )
        if path == HEALTH_PATH:
            if self._health():
                return _build_response(request, 200, b"ok\n", _TEXT)
            return _build_response(request, 503, b"draining\n", _TEXT)

        assert request.body is not None
        try:
            _check_content_type(request.content_type)
            if path == PUBLISH_PATH:
                channel, data_json = parse_publish_body(request.body)
                return self._publish(request, channel, data_json)
            messages = parse_publish_batch_body(request.body, self._max_batch)
            return self._publish_batch(request, messages)
        except _BadBody as error:
            return _error_response(request, error.status, error.message)

    async def _publish(self, request: _Request, channel: str, data_json: bytes) -> bytes:
        try:
            offset = await self._publisher.publish(channel, data_json)
        except PublishError as error:
            return _error_response(request, _error_status(error), error.message)
        except Exception as error:
            logger.exception("publish API: publishing to channel %r failed", channel)
            return _error_response(request, 500, f"internal error: {error!r}")
        return _json_response(request, 200, {"offset": offset})

    async def _publish_batch(self, request: _Request, messages: list[tuple[str, bytes]]) -> bytes:
        start_publish = getattr(self._publisher, "start_publish", None)
        if start_publish is not None:
            return await self._publish_batch_started(request, messages, start_publish)
        # One at a time and in order: the offsets of one channel must follow the order of the batch.
        offsets: list[int] = []
        for index, (channel, data_json) in enumerate(messages):
            try:
                offsets.append(await self._publisher.publish(channel, data_json))
            except Exception as error:
                return self._batch_failure(request, offsets, index, channel, error, later_sent=False)
        return _json_response(request, 200, {"offsets": offsets})

    async def _publish_batch_started(
        self, request: _Request, messages: list[tuple[str, bytes]], start_publish: Callable[..., Any]
    ) -> bytes:
        # Put every item on the bus before awaiting any: awaiting each in turn cost one bus round trip
        # per item when another worker sequences the channel, and split the batch's fan-out into one
        # write per item. Items are started in batch order, so a channel's offsets still follow it.
        started: list[Any] = []
        for index, (channel, data_json) in enumerate(messages):
            try:
                started.append(start_publish(channel, data_json))
            except Exception as error:
                failure = (index, channel, error)
                break
        else:
            failure = None
        offsets: list[int] = []
        for index, outcome in enumerate(started):
            if isinstance(outcome, int):
                offsets.append(outcome)
                continue
            try:
                offsets.append(await outcome)
            except Exception as error:
                for later in started[index + 1 :]:
                    if not isinstance(later, int):  # nobody awaits these now: consume their outcome
                        later.add_done_callback(lambda future: future.cancelled() or future.exception())
                return self._batch_failure(request, offsets, index, messages[index][0], error, later_sent=True)
        if failure is not None:
            return self._batch_failure(request, offsets, *failure, later_sent=False)
        return _json_response(request, 200, {"offsets": offsets})

    def _batch_failure(
        self, request: _Request, offsets: list[int], index: int, channel: str, error: Exception, later_sent: bool
    ) -> bytes:
        if isinstance(error, PublishError):
            status, reason = _error_status(error), error.message
        else:
            logger.exception("publish API: publishing batch item %d to %r failed", index, channel, exc_info=error)
            status, reason = 500, f"internal error: {error!r}"
        # The items before this one are on the bus already; say so, so the caller can resume from item
        # `index` instead of republishing them.
        later = (
            f"items after {index} were sent too and may or may not have been published"
            if later_sent
            else f"item {index} and later were not"
        )
        message = (
            f"batch item {index} (channel {channel!r}) failed: {reason}; "
            f"items 0..{index - 1} were published (their offsets are in 'offsets'), {later}"
            if index
            else f"batch item 0 (channel {channel!r}) failed: {reason}; nothing was published"
            + (f" before it; {later}" if later_sent else "")
        )
        return _json_response(request, status, {"error": message, "offsets": offsets})

    # Flow control and closing ----------------------------------------------------------------------

    def _headers_too_large_message(self) -> str:
        return f"request line and headers are larger than the limit of {MAX_HEADER_SIZE} bytes"

    def _body_too_large_message(self) -> str:
        return f"request body is larger than the limit of {self._max_body_size} bytes"

    def _reject_and_end_connection(self, rejection: _RequestRejected) -> None:
        """Queue an error response after the responses already owed, then stop reading requests."""
        self._accepting_requests = False
        self._request_being_parsed = None
        self._queued_requests.append(_Request.rejected(rejection))

    def _update_reading(self) -> None:
        if self._closing or self._transport is None:
            return
        should_pause = self._writing_paused or len(self._queued_requests) >= MAX_QUEUED_REQUESTS
        if should_pause != self._reading_paused:
            self._reading_paused = should_pause
            if should_pause:
                self._transport.pause_reading()
            else:
                self._transport.resume_reading()

    def _end_connection(self) -> None:
        """Close after the responses already written, without letting a RST destroy them."""
        if self._closing or self._transport is None:
            return
        self._flush()
        self._closing = True
        self._accepting_requests = False
        self._queued_requests.clear()
        transport = self._transport
        if self._peer_sent_eof or not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        if self._reading_paused:
            transport.resume_reading()
            self._reading_paused = False
        # The client closes its side once it has read our response (eof_received then closes ours);
        # a client that does not is cut off after LINGER_SECONDS.
        self._linger_timer = asyncio.get_running_loop().call_later(LINGER_SECONDS, transport.close)


def _error_status(error: PublishError) -> int:
    if isinstance(error.status, int) and 400 <= error.status <= 599:
        return error.status
    logger.error("publish API: PublishError with status %r outside 400-599; answering 500", error.status)
    return 500


def make_api_protocol_factory(
    publisher: Publisher,
    *,
    max_body_size: int = DEFAULT_MAX_BODY_SIZE,
    max_batch: int = DEFAULT_MAX_BATCH,
    health: Callable[[], bool] = lambda: True,
) -> Callable[[], asyncio.Protocol]:
    """Return a protocol factory for `loop.create_server` that serves the publish API with `publisher`."""
    if max_body_size < 1:
        raise ValueError(f"max_body_size must be at least 1 byte, got {max_body_size}")
    if max_batch < 1:
        raise ValueError(f"max_batch must be at least 1, got {max_batch}")

    def make_protocol() -> asyncio.Protocol:
        return PublishApiProtocol(publisher, max_body_size=max_body_size, max_batch=max_batch, health=health)

    return make_protocol


async def start_api_server(
    loop: asyncio.AbstractEventLoop,
    sock: socket.socket,
    factory: Callable[[], asyncio.Protocol],
    *,
    backlog: int = 1024,
) -> asyncio.Server:
    """Serve the API on an already bound listening socket (the supervisor's SO_REUSEPORT socket)."""
    # create_server calls listen() on the socket again; pass a real backlog so the default of 100
    # does not shrink the one the supervisor chose.
    return await loop.create_server(factory, sock=sock, backlog=backlog)
