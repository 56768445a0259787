"""Routing of the API port's requests to their handlers, free of I/O.

A `Router` maps a path (exact, or ending in one ``{placeholder}`` segment) and a method to a handler.
A handler takes the parsed `Request` and returns a `Response` at once, or an awaitable of one (a
coroutine, a future) when it has to wait (say, for the bus). Handlers raise `ApiError` to answer with an
error; any other exception is logged and answered 500, and never reaches the connection.

Every error is ``{"error": "<message>"}`` with its status. The router answers by itself: a request the
connection refused (`Request.error`), an unknown path (404, listing the endpoints), a method the path
does not take (405 with ``Allow``), and, when an API key is set, a request to a protected path without
``Authorization: Bearer <key>`` (401): every ``/api/*`` path, and any route added with ``auth=True``.
"""

from __future__ import annotations

import logging
import types
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field

import orjson

from wsd.server import json_limits
from wsd.server.api.http11 import Request, Response
from wsd.server.auth.apikey import bearer_matches

logger = logging.getLogger(__name__)

JSON = b"application/json"
TEXT = b"text/plain; charset=utf-8"

Handler = Callable[[Request], Response | Awaitable[Response]]

_NO_PARAMS: Mapping[str, str] = types.MappingProxyType({})
_UNAUTHORIZED_HEADERS = b'WWW-Authenticate: Bearer realm="wsd"\r\n'


class ApiError(Exception):
    """Raised by a handler (or a publisher) to answer `status` with ``{"error": message}``."""

    def __init__(self, status: int, message: str, headers: bytes = b"") -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message
        self.headers = headers

    def __str__(self) -> str:
        return f"{self.status}: {self.message}"


# --- Responses ----------------------------------------------------------------------------------------


def json_response(status: int, payload: object, headers: bytes = b"") -> Response:
    return Response(status, orjson.dumps(payload), JSON, headers)


def error_response(status: int, message: str, headers: bytes = b"") -> Response:
    return Response(status, orjson.dumps({"error": message}), JSON, headers)


def text_response(status: int, text: str, headers: bytes = b"") -> Response:
    return Response(status, text.encode(), TEXT, headers)


def error_status(error: ApiError) -> int:
    """The status to answer for `error`: its own when it is an error status, else 500 (and a log line)."""
    if isinstance(error.status, int) and 400 <= error.status <= 599:
        return error.status
    logger.error("publish API: %s with status %r outside 400-599; answering 500", type(error).__name__, error.status)
    return 500


# --- Request bodies -----------------------------------------------------------------------------------


def check_json_content_type(content_type: bytes | None) -> None:
    """Accept a missing Content-Type, application/json and any */*+json; refuse the rest with 415."""
    if content_type is None or content_type == JSON:
        return
    media_type = content_type.partition(b";")[0].strip().lower()
    if media_type == JSON or media_type.endswith(b"+json"):
        return
    raise ApiError(415, f"Content-Type must be application/json, got {content_type.decode('latin-1')!r}")


def parse_json_body(body: bytes | bytearray, expected: str) -> object:
    """The JSON value of a request body; `expected` describes what to send, for the error messages."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as error:
        if not body.strip():
            raise ApiError(400, f"request body is empty; send {expected}") from None
        limit = json_limits.decode_error_as_limit(error)
        if limit is not None:
            raise ApiError(400, f"request body: {limit}") from None
        raise ApiError(400, f"request body is not valid JSON ({error}); send {expected}") from None


def json_body(request: Request, expected: str) -> object:
    """The JSON value of `request`'s body, its Content-Type checked (for handlers of JSON endpoints)."""
    check_json_content_type(request.content_type)
    return parse_json_body(request.body, expected)


# --- The router ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Route:
    path: str
    auth: bool
    handlers: dict[bytes, Handler] = field(default_factory=dict)
    allow: bytes = b""
    # For a path ending in "{name}": what comes before it, and the placeholder's name.
    prefix: bytes | None = None
    param: str | None = None


class Router:
    """The API port's endpoints. `api_key` (when set) is required on protected paths."""

    def __init__(self, *, api_key: str | bytes | None = None) -> None:
        if isinstance(api_key, str):
            api_key = api_key.encode()
        if api_key is not None and not api_key:
            raise ValueError("the API key must not be empty")
        # Checked by wsd.server.auth.apikey (constant-time comparison), as everything about the key is.
        self._api_key = api_key
        self._exact: dict[bytes, _Route] = {}
        self._patterns: list[_Route] = []
        self._order: list[_Route] = []
        self._kept_headers: frozenset[bytes] = frozenset()

    @property
    def requires_key(self) -> bool:
        return self._api_key is not None

    def add(
        self,
        methods: str | Iterable[str],
        path: str,
        handler: Handler,
        *,
        auth: bool | None = None,
        headers: Iterable[str] = (),
    ) -> None:
        """Serve `methods` on `path` with `handler`. A GET route also answers HEAD (without the body).

        `path` is exact (``/api/channels``) or ends in one placeholder segment (``/api/channels/{name}``:
        the segment, percent-decoded, is ``request.params["name"]``). `auth` says whether the API key is
        required; by default it is for ``/api/*`` paths. `headers` names the request headers the handler
        reads with ``request.header(name)`` besides Content-Type and Authorization (say, ``Accept``):
        connections keep only those.
        """
        method_names = [methods] if isinstance(methods, str) else list(methods)
        if not method_names or not path.startswith("/"):
            raise ValueError(f"a route needs a method and a path starting with '/', got {methods!r} {path!r}")
        needs_key = path.startswith("/api/") if auth is None else auth
        prefix, _, last = path.rpartition("/")
        pattern = last.startswith("{") and last.endswith("}")
        if ("{" in path or "}" in path) and not (pattern and "{" not in prefix and "}" not in prefix):
            raise ValueError(f"only the last segment of a path can be a placeholder, got {path!r}")
        route = self._route_for(path)
        if route is None:
            route = _Route(path, needs_key)
            if pattern:
                route.prefix, route.param = (prefix + "/").encode(), last[1:-1]
                self._patterns.append(route)
            else:
                self._exact[path.encode()] = route
            self._order.append(route)
        elif route.auth != needs_key:
            raise ValueError(f"{path} is already served with auth={route.auth}")
        for method in method_names:
            for name in (method.upper(), "HEAD") if method.upper() == "GET" else (method.upper(),):
                if name.encode() in route.handlers:
                    raise ValueError(f"{name} {path} has a handler already")
                route.handlers[name.encode()] = handler
        route.allow = b", ".join(route.handlers)
        self._kept_headers |= {name.lower().encode() for name in ([headers] if isinstance(headers, str) else headers)}

    def _route_for(self, path: str) -> _Route | None:
        return next((route for route in self._order if route.path == path), None)

    @property
    def kept_headers(self) -> frozenset[bytes]:
        """Lower-case names of the headers some handler reads (see `add`)."""
        return self._kept_headers

    @property
    def paths(self) -> list[str]:
        return [route.path for route in self._order]

    def handle(self, request: Request) -> Response | Awaitable[Response]:
        """The response to `request`, or an awaitable of it; never raises."""
        if request.error is not None:
            return error_response(request.error.status, request.error.message)
        try:
            outcome = self._dispatch(request) if self._patterns or self._api_key is not None else None
            if outcome is None:
                # The common case, kept to one call: an exact path and no key.
                route = self._exact.get(request.path)  # type: ignore[arg-type]
                handler = route.handlers.get(request.method) if route is not None else None
                if handler is None:
                    outcome = self._dispatch(request)
                else:
                    request.params = _NO_PARAMS
                    outcome = handler(request)
        except ApiError as error:
            return error_response(error_status(error), error.message, error.headers)
        except Exception as error:
            logger.exception("publish API: failed to handle %r", request)
            return error_response(500, f"internal error: {error!r}")
        if isinstance(outcome, Response):
            return outcome
        return self._finish(request, outcome)

    def _dispatch(self, request: Request) -> Response | Awaitable[Response]:
        path = request.path
        route = self._exact.get(path) if path is not None else None
        params = _NO_PARAMS
        if route is None and path is not None:
            for candidate in self._patterns:
                prefix = candidate.prefix
                assert prefix is not None and candidate.param is not None
                if path.startswith(prefix) and len(path) > len(prefix) and b"/" not in path[len(prefix) :]:
                    value = urllib.parse.unquote(path[len(prefix) :].decode("latin-1"))
                    route, params = candidate, {candidate.param: value}
                    break
        if self._api_key is not None:
            protected = route.auth if route is not None else path is not None and path.startswith(b"/api/")
            if protected:
                self._check_key(request.authorization)
        if route is None:
            shown = request.url[:100].decode("latin-1") + ("..." if len(request.url) > 100 else "")
            raise ApiError(404, f"no such endpoint {shown!r}; the endpoints are {', '.join(self.paths)}")
        handler = route.handlers.get(request.method)
        if handler is None:
            raise ApiError(
                405,
                f"{request.method.decode('latin-1')} is not allowed on {route.path}; use {route.allow.decode()}",
                b"Allow: " + route.allow + b"\r\n",
            )
        request.params = params
        return handler(request)

    async def _finish(self, request: Request, outcome: Awaitable[Response]) -> Response:
        try:
            response = await outcome
            if not isinstance(response, Response):
                raise TypeError(f"the handler gave {type(response).__name__}, not a Response")
            return response
        except ApiError as error:
            return error_response(error_status(error), error.message, error.headers)
        except Exception as error:
            logger.exception("publish API: failed to handle %r", request)
            return error_response(500, f"internal error: {error!r}")

    def _check_key(self, authorization: bytes | None) -> None:
        assert self._api_key is not None
        if bearer_matches(authorization, self._api_key):
            return
        if authorization is None:
            message = "unauthorized: this API needs the header Authorization: Bearer <api key>"
        elif authorization.strip().partition(b" ")[0].lower() != b"bearer":
            message = "unauthorized: the Authorization header must be Bearer <api key>"
        else:
            message = "unauthorized: wrong API key"
        raise ApiError(401, message, _UNAUTHORIZED_HEADERS)
