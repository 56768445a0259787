"""The API port of every worker: the publish HTTP API that the application's backend calls.

Layers, each its own module:

- `http11`: one HTTP/1.1 connection, free of I/O (bytes in, requests out; responses in, bytes out;
  keep-alive, pipelining, limits, timeouts and lingering close as decisions);
- `routes`: the router (paths and methods to handlers, the API key, JSON errors), free of I/O;
- `endpoints`: ``/api/publish``, ``/api/publish_batch`` and ``/healthz``, and their body validation;
- `server`: the asyncio adapter, `make_api_protocol_factory` and `start_api_server`.

Every error is ``{"error": "<message>"}`` with its HTTP status.
"""

from wsd.server.api.endpoints import Publisher, PublishError
from wsd.server.api.http11 import HttpConnection, HttpLimits, Request, Response
from wsd.server.api.routes import ApiError, Router, error_response, json_body, json_response, text_response
from wsd.server.api.server import ApiProtocolFactory, make_api_protocol_factory, start_api_server

__all__ = [
    "ApiError",
    "ApiProtocolFactory",
    "HttpConnection",
    "HttpLimits",
    "PublishError",
    "Publisher",
    "Request",
    "Response",
    "Router",
    "error_response",
    "json_body",
    "json_response",
    "make_api_protocol_factory",
    "start_api_server",
    "text_response",
]
