"""One HTTP/1.1 server connection of the publish API, free of I/O: bytes in, requests out; responses in,
bytes out.

`HttpConnection` parses what the peer sends (httptools, i.e. llhttp) into `Request` objects, queued in
order, and encodes the responses given to it, one per request and in request order, into bytes. It also
makes every decision about the connection that does not need a socket, and states it for the adapter
(``wsd.server.api.server``) to carry out:

- keep-alive and pipelining: when a response ends the connection (``Connection: close``, HTTP/1.0, an
  error that leaves the byte stream unusable) and when later pipelined requests are not for us;
- ``Expect: 100-continue``: the interim response, sent only when it cannot overtake an earlier response;
- limits: request line and headers (431), body (413), parsed requests waiting to be served (past it,
  `wants_reading` turns false until the queue drains);
- flow control: `wants_reading` is also false while the peer does not read our responses;
- timeouts: keep-alive idle time, time to send a request's head, and its body, a peer that stops reading
  our responses, lingering: `get_timer` gives the next deadline and `handle_timer` acts on it;
- closing: `close_state` says whether to half-close and keep discarding input for a while (a "lingering
  close": closing with unread input makes the kernel send a RST, which can destroy the response before
  the peer reads it), close, or abort.

Errors found while parsing become requests with `Request.error` set, queued after the requests before
them, so their responses (which the application encodes, see `wsd.server.api.routes`) keep the order.
Time comes from the `clock` given to the connection (the loop's clock in the adapter, a fake in tests).
"""

from __future__ import annotations

import enum
import http
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import httptools

logger = logging.getLogger(__name__)

# A TLS record header for a handshake: a client that was pointed at https:// by mistake.
_TLS_HANDSHAKE_START = b"\x16\x03"

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """What one connection may cost. Times are in seconds of the connection's clock; None turns a
    timeout off."""

    # llhttp puts no limit on the request line and headers, and httptools buffers a header value until
    # it ends, so without our own cap one endless header line would grow memory without bound.
    max_header_size: int = 64 * 1024
    max_body_size: int = 1 << 20
    # Parsed requests waiting behind the one being served. Past this, reading stops until the queue
    # drains, so a client that pipelines without reading responses cannot grow our memory.
    max_queued_requests: int = 64
    # Keep-alive: how long a connection may sit between requests. Also how long a peer may leave our
    # responses unread (with reading stopped) before the connection is aborted.
    idle_timeout: float | None = 60.0
    # The request line and headers must arrive within this time of the request's first byte (of the
    # connection's start, for its first request), and the body within this time of the headers.
    request_timeout: float | None = 10.0
    # How long a connection that we ended keeps discarding input while the peer reads our response.
    linger_time: float = 2.0

    def __post_init__(self) -> None:
        for name in ("max_header_size", "max_body_size", "max_queued_requests"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("idle_timeout", "request_timeout", "linger_time"):
            value = getattr(self, name)
            if value is not None and not value > 0:  # also refuses NaN
                raise ValueError(f"{name} must be a positive number of seconds, got {value}")


class HttpError(Exception):
    """A request that cannot be served and ends the connection: bad framing, too large, too slow..."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message

    def __str__(self) -> str:
        return f"{self.status}: {self.message}"


class CloseState(enum.IntEnum):
    """What the adapter should have done with its transport; it only ever moves up."""

    OPEN = 0
    # Write what is pending, then send EOF (where the transport can), and keep reading: input is
    # discarded until the peer closes or the linger time ends.
    HALF_CLOSE = 1
    # Write what is pending, then close.
    CLOSE = 2
    # Close now, dropping what is pending (a peer that does not read what we write).
    ABORT = 3


_OPEN = CloseState.OPEN


class Request:
    """One parsed request, waiting in the connection's queue for its turn."""

    __slots__ = (
        "method",
        "url",
        "path",
        "headers",
        "content_type",
        "authorization",
        "body",
        "keep_alive",
        "keep_alive_by_default",
        "error",
        "params",
        "_content_length",
        "_expect",
    )

    def __init__(self) -> None:
        self.method = b""
        self.url = b""
        # None when the request target is not a path we can read (e.g. "*").
        self.path: bytes | None = None
        # Further headers the connection was asked to keep (`kept_headers`), by lower-case name; None
        # when none of them came. (Keeping every header would cost more than the rest of parsing a request.)
        self.headers: dict[bytes, bytes] | None = None
        self.content_type: bytes | None = None
        self.authorization: bytes | None = None
        self.body = bytearray()
        self.keep_alive = True
        # HTTP/1.1 keeps connections alive unless told otherwise; HTTP/1.0 needs "Connection: keep-alive".
        self.keep_alive_by_default = True
        # Set for a request refused before it could be routed; its response ends the connection.
        self.error: HttpError | None = None
        # Filled in by the router: the values of a route's {placeholders}.
        self.params: dict[str, str] | None = None
        self._content_length: bytes | None = None
        self._expect: bytes | None = None

    @classmethod
    def refused(cls, error: HttpError) -> Request:
        request = cls()
        request.keep_alive = False
        request.error = error
        return request

    def header(self, name: bytes) -> bytes | None:
        """The value of header `name` (case-insensitive) if the connection kept it, else None."""
        name = name.lower()
        if name == b"content-type":
            return self.content_type
        if name == b"authorization":
            return self.authorization
        return self.headers.get(name) if self.headers is not None else None

    def __repr__(self) -> str:
        error = f" error={self.error}" if self.error is not None else ""
        return f"<Request {self.method.decode('latin-1')} {self.url[:100]!r}{error}>"


class Response:
    """A response to encode: status, body and its media type, and any further header lines."""

    __slots__ = ("status", "body", "content_type", "headers")

    def __init__(self, status: int, body: bytes, content_type: bytes, headers: bytes = b"") -> None:
        self.status = status
        self.body = body
        self.content_type = content_type
        # Complete header lines, each ending in CRLF (e.g. b"Allow: POST\r\n").
        self.headers = headers

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.content_type.decode()} {self.body[:100]!r}>"


# --- Response encoding ------------------------------------------------------------------------------

_cached_date_second = 0
_cached_date_header = b""
# RFC 9110's IMF-fixdate names, in English whatever the locale. (email.utils.formatdate writes the same,
# but importing the email package costs every worker ~1.4 MiB for these two tuples.)
_DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTH_NAMES = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def http_date(timestamp: float) -> str:
    """`timestamp` (seconds since the epoch) as an HTTP date: `Tue, 01 Dec 2026 17:07:46 GMT`."""
    t = time.gmtime(timestamp)
    return (
        f"{_DAY_NAMES[t.tm_wday]}, {t.tm_mday:02d} {_MONTH_NAMES[t.tm_mon - 1]} {t.tm_year:04d} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT"
    )


def _date_header() -> bytes:
    # Formatting is slow relative to the rest of a response; the value only changes once a second.
    global _cached_date_second, _cached_date_header
    now = int(time.time())
    if now != _cached_date_second:
        _cached_date_second = now
        _cached_date_header = b"Date: " + http_date(now).encode() + b"\r\n"
    return _cached_date_header


def _status_line(status: int) -> bytes:
    try:
        reason = http.HTTPStatus(status).phrase
    except ValueError:
        reason = "Unknown"
    return f"HTTP/1.1 {status} {reason}\r\n".encode()


_STATUS_LINES = {status: _status_line(status) for status in http.HTTPStatus}


def encode_response(response: Response, request: Request, close: bool) -> bytes:
    """The bytes of `response` to `request`; `close` says the connection ends after it."""
    status_line = _STATUS_LINES.get(response.status) or _status_line(response.status)
    if close:
        connection = b"Connection: close\r\n"
    elif not request.keep_alive_by_default:
        connection = b"Connection: keep-alive\r\n"
    else:
        connection = b""
    body = response.body
    head = b"".join(
        (
            status_line,
            _date_header(),
            b"Content-Type: ",
            response.content_type,
            b"\r\nContent-Length: ",
            str(len(body)).encode(),
            b"\r\n",
            connection,
            response.headers,
            b"\r\n",
        )
    )
    # HEAD gets the headers a GET would get, without the body.
    return head if request.method == b"HEAD" else head + body


_SLASH = ord("/")
_QUESTION_MARK = ord("?")


def _path_of(url: bytes) -> bytes | None:
    if url and url[0] == _SLASH:
        return url.partition(b"?")[0] if _QUESTION_MARK in url else url
    # Absolute form ("POST http://host/api/publish") is legal HTTP/1.1, if rare.
    try:
        return httptools.parse_url(url).path
    except httptools.HttpParserInvalidURLError:
        return None


# --- The connection ---------------------------------------------------------------------------------


# What the read deadline is for (plain ints: they are compared several times per request).
_NO_DEADLINE = 0
_IDLE = 1  # between requests on a kept-alive connection
_HEAD = 2  # a request's line and headers are arriving
_BODY = 3  # a request's body is arriving


class HttpConnection:
    """The server side of one HTTP/1.1 connection. See the module docstring for the contract.

    Events in: `receive_data`, `receive_eof`, `pause_writing`, `resume_writing`, `handle_timer`,
    `refuse`. Requests out: `next_request` (one at a time: the next only after `send_response` for the
    previous). Bytes out: `data_to_send`. Decisions out: `wants_reading`, `close_state`, `get_timer`.
    """

    def __init__(
        self,
        limits: HttpLimits = HttpLimits(),
        clock: Callable[[], float] = time.monotonic,
        kept_headers: frozenset[bytes] = frozenset(),
    ) -> None:
        self.limits = limits
        self._clock = clock
        # Lower-case names of headers to keep in Request.headers, besides Content-Type and Authorization.
        self._kept_headers = kept_headers
        self._resume_reading_at = limits.max_queued_requests - 1
        self._parser = httptools.HttpRequestParser(self)

        self._parsing: Request | None = None
        # Size of the request line and headers of the request being parsed, as the parser reports them.
        self._parsed_header_size = 0
        # Bytes received since the end of the last headers while parsing headers; see max_header_size.
        self._header_bytes = 0
        self._received_body_size = 0
        self._in_body = False
        self._received_data = False
        # An "Expect: 100-continue" of the request being parsed that was held back behind earlier responses.
        self._continue_owed = False

        self._queue: deque[Request] = deque()
        # The request handed out by next_request and not yet answered.
        self._serving: Request | None = None
        self._output: list[bytes] = []
        # False once no further request will be parsed (error, "Connection: close", EOF): input is
        # discarded instead.
        self._accepting = True
        self._peer_eof = False
        self._writing_paused = False
        self.close_state = CloseState.OPEN

        # The read deadline: the first request's head is timed from the connection's start.
        self._idle_timeout = limits.idle_timeout
        self._request_timeout = limits.request_timeout
        # The clock read once per receive_data, for the parser callbacks it runs.
        self._now = 0.0
        self._deadline_kind = _NO_DEADLINE
        self._deadline: float | None = None
        self._set_read_deadline(_HEAD)
        # While writing is paused: when the peer will have left our responses unread for too long.
        self._send_deadline: float | None = None
        # After HALF_CLOSE or CLOSE: when to stop waiting for the peer and abort.
        self._close_deadline: float | None = None

    # Events in --------------------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Bytes from the peer."""
        if not self._accepting:
            return  # after the last request we answer: discarded (lingering close)
        is_first_data = not self._received_data
        self._received_data = True
        self._now = self._clock()
        if self._deadline_kind == _IDLE:
            self._set_read_deadline(_HEAD, self._now)
        if not self._in_body:
            self._header_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # The upgrade request itself was queued already, refused in on_headers_complete.
            self._accepting = False
            self._set_read_deadline(_NO_DEADLINE)
        except httptools.HttpParserError as error:
            # Our own refusals raised inside a parser callback arrive wrapped in a callback error.
            cause = error.__context__
            if not self._accepting:
                pass  # llhttp refuses data after a "Connection: close" request; it was to be ignored anyway
            elif isinstance(cause, HttpError):
                self._refuse(cause)
            elif isinstance(error, httptools.HttpParserCallbackError):
                logger.error("publish API: error in an HTTP parser callback", exc_info=cause or error)
                self._refuse(HttpError(500, f"internal error: {cause or error!r}"))
            else:
                message = f"malformed HTTP request: {error}"
                if is_first_data and data.startswith(_TLS_HANDSHAKE_START):
                    message += " (this looks like TLS: this port speaks plain http://, not https://)"
                self._refuse(HttpError(400, message))
        else:
            if self._accepting and not self._in_body and self._header_bytes > self.limits.max_header_size:
                self._refuse(HttpError(431, self._headers_too_large_message()))

    def receive_eof(self) -> None:
        """The peer will send nothing more (it half-closed, or closed)."""
        self._peer_eof = True
        self._accepting = False
        self._parsing = None  # a request cut short by the EOF is not answered
        self._set_read_deadline(_NO_DEADLINE)
        if self.close_state is CloseState.HALF_CLOSE:
            self._set_close_state(CloseState.CLOSE)  # it has read our last response
        elif self._owes_nothing():
            self._end()
        # Otherwise requests sent before the EOF still get their responses; _end follows the last.

    def pause_writing(self) -> None:
        """The transport's write buffer is full: the peer is not reading our responses."""
        if not self._writing_paused:
            self._writing_paused = True
            if self.limits.idle_timeout is not None:
                self._send_deadline = self._clock() + self.limits.idle_timeout

    def resume_writing(self) -> None:
        if self._writing_paused:
            self._writing_paused = False
            self._send_deadline = None
            self._restart_read_deadline()

    def refuse(self, status: int, message: str) -> None:
        """Answer `status` after the responses already owed, and end the connection (e.g. 503 when
        there are too many connections)."""
        if self._accepting:
            self._refuse(HttpError(status, message))

    def handle_timer(self, now: float) -> None:
        """The time is `now`: act on any deadline that has passed (calls for an earlier time are harmless)."""
        deadline = self.get_timer()
        if deadline is None or now < deadline:
            return
        if self.close_state >= CloseState.HALF_CLOSE or self._writing_paused:
            # A peer that neither closes nor reads: nothing more can be done for it.
            self._set_close_state(CloseState.ABORT)
        elif self._deadline_kind == _IDLE or (self._deadline_kind == _HEAD and self._parsing is None):
            # No request began: close quietly, as a kept-alive connection that timed out is closed. (An
            # unasked-for 408 could be read by the client as the answer to the request it sends next.)
            self._end()
        elif self._deadline_kind == _HEAD:
            timeout = self.limits.request_timeout
            self._refuse(HttpError(408, f"the request line and headers did not arrive within {timeout:g} s"))
        elif self._deadline_kind == _BODY:
            timeout = self.limits.request_timeout
            self._refuse(HttpError(408, f"the request body did not arrive within {timeout:g} s of its headers"))

    # Requests out, responses in ---------------------------------------------------------------------

    def next_request(self) -> Request | None:
        """The next request to answer, in order, once the previous one is answered; else None."""
        if self._serving is not None or not self._queue or self.close_state is not _OPEN:
            return None
        request = self._queue.popleft()
        if len(self._queue) == self._resume_reading_at:
            self._restart_read_deadline()  # reading resumes
        self._serving = request
        return request

    def send_response(self, response: Response, close: bool = False) -> None:
        """Answer the request `next_request` gave out; `close` ends the connection after it (say, while
        the server drains)."""
        request = self._serving
        if request is None:
            raise RuntimeError("send_response() without a request from next_request()")
        self._serving = None
        if self.close_state is not _OPEN:
            return  # the connection was ended (aborted by a timeout): nobody is there to hear of it
        ends = close or not request.keep_alive
        self._output.append(encode_response(response, request, ends))
        if ends:
            self._end()
        elif self._peer_eof and self._owes_nothing():
            self._end()
        elif not self._queue:
            if self._parsing is None:
                if self._accepting:
                    self._set_read_deadline(_IDLE)
            elif self._continue_owed:
                self._continue_owed = False
                self._output.append(_CONTINUE)
                self._set_read_deadline(_BODY)

    # Bytes and decisions out ------------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        """The bytes to write now (empty when there are none)."""
        if not self._output:
            return b""
        data = self._output[0] if len(self._output) == 1 else b"".join(self._output)
        self._output.clear()
        return data

    @property
    def wants_reading(self) -> bool:
        """Whether the adapter should read from the peer (false: pause reading)."""
        if self.close_state is not _OPEN:
            return self.close_state is CloseState.HALF_CLOSE  # discard input while lingering
        return not self._writing_paused and len(self._queue) < self.limits.max_queued_requests

    def get_timer(self) -> float | None:
        """When `handle_timer` should next be called (the clock's time), or None."""
        if self.close_state is not _OPEN:
            return None if self.close_state is CloseState.ABORT else self._close_deadline
        if self._writing_paused:
            return self._send_deadline
        if len(self._queue) >= self.limits.max_queued_requests:
            return None  # not reading: the peer cannot be late
        return self._deadline

    @property
    def serving(self) -> bool:
        """Whether a request handed out by next_request awaits its response."""
        return self._serving is not None

    # Internals --------------------------------------------------------------------------------------

    def _owes_nothing(self) -> bool:
        return not self._queue and self._serving is None

    def _refuse(self, error: HttpError) -> None:
        """Queue `error`'s response after the responses already owed, and parse no more requests."""
        self._accepting = False
        self._parsing = None
        self._continue_owed = False
        self._set_read_deadline(_NO_DEADLINE)
        self._queue.append(Request.refused(error))

    def _end(self) -> None:
        """Close after the responses already queued for writing, without letting a RST destroy them."""
        self._accepting = False
        self._parsing = None
        self._queue.clear()
        self._set_read_deadline(_NO_DEADLINE)
        self._set_close_state(CloseState.CLOSE if self._peer_eof else CloseState.HALF_CLOSE)

    def _set_close_state(self, state: CloseState) -> None:
        if state > self.close_state:
            self.close_state = state
            # Bounded either way: a peer that neither closes (HALF_CLOSE) nor takes what we still have
            # to write (CLOSE) is aborted after the linger time.
            self._close_deadline = self._clock() + self.limits.linger_time

    def _set_read_deadline(self, kind: int, now: float | None = None) -> None:
        self._deadline_kind = kind
        if kind == _NO_DEADLINE:
            self._deadline = None
            return
        timeout = self._idle_timeout if kind == _IDLE else self._request_timeout
        self._deadline = None if timeout is None else (self._clock() if now is None else now) + timeout

    def _restart_read_deadline(self) -> None:
        # Reading resumes after we paused it: the peer was not late meanwhile, so its time starts over.
        if self._deadline_kind != _NO_DEADLINE:
            self._set_read_deadline(self._deadline_kind)

    def _headers_too_large_message(self) -> str:
        return f"request line and headers are larger than the limit of {self.limits.max_header_size} bytes"

    def _body_too_large_message(self) -> str:
        return f"request body is larger than the limit of {self.limits.max_body_size} bytes"

    # httptools callbacks (raising HttpError refuses the request) ----------------------------------------

    def on_message_begin(self) -> None:
        self._parsing = Request()
        self._parsed_header_size = 0
        self._received_body_size = 0
        if self._deadline_kind != _HEAD:  # (inlined _set_read_deadline: this runs for every request)
            self._deadline_kind = _HEAD
            timeout = self._request_timeout
            self._deadline = None if timeout is None else self._now + timeout

    def on_url(self, url: bytes) -> None:
        request = self._parsing
        assert request is not None
        # Usually in one piece; llhttp splits it only across reads.
        request.url = request.url + url if request.url else url
        self._parsed_header_size += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        request = self._parsing
        assert request is not None
        self._parsed_header_size += len(name) + len(value) + 4
        name = name.lower()
        if name == b"content-type":
            request.content_type = value
        elif name == b"content-length":
            request._content_length = value
        elif name == b"authorization":
            request.authorization = value
        elif name == b"expect":
            request._expect = value
        elif name in self._kept_headers:
            if request.headers is None:
                request.headers = {name: value}
            else:
                # Repeated: joined as RFC 9110 allows for list-valued fields.
                request.headers[name] = request.headers[name] + b", " + value if name in request.headers else value

    def on_headers_complete(self) -> None:
        request = self._parsing
        assert request is not None
        self._in_body = True
        self._header_bytes = 0
        if self._parsed_header_size > self.limits.max_header_size:
            raise HttpError(431, self._headers_too_large_message())
        parser = self._parser
        request.method = parser.get_method()
        request.keep_alive = parser.should_keep_alive()
        request.keep_alive_by_default = parser.get_http_version() != "1.0"
        request.path = _path_of(request.url)
        if parser.should_upgrade():
            # Also reached by CONNECT. What follows is not HTTP, so this is the connection's last request.
            request.keep_alive = False
            request.error = HttpError(400, "protocol upgrade and CONNECT are not supported here")
            return
        # llhttp has checked that Content-Length is a number.
        if request._content_length is not None and int(request._content_length) > self.limits.max_body_size:
            raise HttpError(413, self._body_too_large_message())
        self._deadline_kind = _BODY
        timeout = self._request_timeout
        self._deadline = None if timeout is None else self._now + timeout
        if request._expect is not None:
            if request._expect.lower() != b"100-continue":
                raise HttpError(417, f"unsupported Expect: {request._expect.decode('latin-1')!r}")
            if self._owes_nothing():
                self._output.append(_CONTINUE)
            else:
                # Sent when the responses before it are (send_response); a client that does not wait
                # for it sends the body after its own timeout anyway. Its body is not late meanwhile.
                self._continue_owed = True
                self._set_read_deadline(_NO_DEADLINE)

    def on_body(self, chunk: bytes) -> None:
        request = self._parsing
        assert request is not None
        # Checked again here for chunked bodies, which announce no length.
        self._received_body_size += len(chunk)
        if self._received_body_size > self.limits.max_body_size:
            raise HttpError(413, self._body_too_large_message())
        if self._continue_owed:  # the client did not wait for the 100
            self._continue_owed = False
            self._set_read_deadline(_BODY, self._now)
        request.body += chunk

    def on_message_complete(self) -> None:
        request = self._parsing
        assert request is not None
        self._parsing = None
        self._in_body = False
        self._continue_owed = False
        self._queue.append(request)
        if not request.keep_alive:
            # Anything pipelined after "Connection: close" is not for us to answer.
            self._accepting = False
        self._deadline_kind = _NO_DEADLINE
        self._deadline = None
