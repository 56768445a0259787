"""The client protocol, free of I/O: a text message in, a request or an error reply out.

Clients send JSON objects on `/ws`:
  {"op":"sub","ch":NAME,"id":N}   {"op":"unsub","ch":NAME,"id":N}   {"op":"pub","ch":NAME,"data":ANY,"id":N}
  {"op":"ping","id":N}   {"op":"auth","token":JWT,"id":N}
and get `{"op":"ok","id":N,...}`, `{"op":"err","id":N,"code":C,"msg":TEXT}` and deliveries
`{"op":"msg","ch":NAME,"off":OFFSET,"data":ANY}` (built in wsd.ext.frames), and `{"op":"unsub","ch":NAME}`
when the server ends a subscription. See docs/protocol.md.
"""

from __future__ import annotations

import reprlib
from dataclasses import dataclass
from typing import Any

import orjson

from wsd.server import json_limits
from wsd.server.channel_names import channel_name_error

# Error codes carried in `err` replies (stable strings: clients switch on them).
BAD_JSON = "bad_json"
BAD_REQUEST = "bad_request"
UNKNOWN_OP = "unknown_op"
BAD_CHANNEL = "bad_channel"
TOO_MANY_SUBSCRIPTIONS = "too_many_subscriptions"
PUBLISH_FAILED = "publish_failed"
BAD_SINCE = "bad_since"
UNAVAILABLE = "unavailable"  # the bus cannot be reached (a cluster's Redis is down)


@dataclass(slots=True, frozen=True)
class Subscribe:
    id: Any
    channel: str
    since: tuple[int, int] | None = None  # (offset, epoch) to resume after


@dataclass(slots=True, frozen=True)
class Unsubscribe:
    id: Any
    channel: str


@dataclass(slots=True, frozen=True)
class Publish:
    id: Any
    channel: str
    data_json: bytes  # the `data` value re-serialized compactly: delivered verbatim


@dataclass(slots=True, frozen=True)
class Ping:
    """The client checks the link is alive (browsers cannot see WebSocket pings): answered `ok`."""

    id: Any


@dataclass(slots=True, frozen=True)
class Auth:
    """A connection token, first or fresh (wsd.server.auth.gate decides; `token` is checked there)."""

    id: Any
    token: Any


@dataclass(slots=True, frozen=True)
class ErrorReply:
    id: Any
    code: str
    msg: str

    def encode(self) -> bytes:
        return err_reply(self.id, self.code, self.msg)


Request = Subscribe | Unsubscribe | Publish | Ping | Auth
OPS = ("sub", "unsub", "pub", "ping", "auth")


def _usable_id(value: Any) -> Any:
    # Echo numbers and strings back as given; anything else is not an id we can echo.
    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
        return value
    return None


def _since(value: Any) -> tuple[int, int] | str:
    """Parse `"since": {"off": N, "epoch": E}`; return an error message if malformed."""
    if not isinstance(value, dict):
        return '"since" must be an object {"off": N, "epoch": E}'
    off, epoch = value.get("off"), value.get("epoch")
    if not isinstance(off, int) or isinstance(off, bool) or off < 0:
        return '"since.off" must be a non-negative integer'
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
        return '"since.epoch" must be a non-negative integer'
    return off, epoch


def parse_request(text: bytes, max_data_size: int | None = None) -> Request | ErrorReply:
    """Decode one client text message into a request, or the `err` reply it deserves.

    A `pub`'s data is stored and delivered as orjson re-serializes it: nesting past 64 levels and
    integers outside 64 bits are refused (wsd.server.json_limits) rather than changed, and
    `max_data_size` counts the re-serialized bytes (`1e15` is written `1000000000000000.0`)."""
    try:
        obj = json_limits.loads(text)
    except json_limits.JsonLimitError as exc:
        return ErrorReply(None, BAD_REQUEST, str(exc))
    except orjson.JSONDecodeError as exc:
        return ErrorReply(None, BAD_JSON, f"message is not valid JSON: {exc}")
    if not isinstance(obj, dict):
        return ErrorReply(None, BAD_REQUEST, f"message must be a JSON object, got {type(obj).__name__}")
    request_id = _usable_id(obj.get("id"))
    op = obj.get("op")
    if op not in OPS:
        if op is None:
            return ErrorReply(request_id, BAD_REQUEST, f'missing field "op" (one of {", ".join(OPS)})')
        # reprlib, not str(): str() of a list nested 1,000 deep (which orjson parses) raises RecursionError.
        shown = repr(op[:40]) if isinstance(op, str) else reprlib.repr(op)
        return ErrorReply(request_id, UNKNOWN_OP, f"unknown op {shown}; known: {', '.join(OPS)}")
    if op == "ping":
        return Ping(request_id)
    if op == "auth":
        return Auth(request_id, obj.get("token"))
    if "ch" not in obj:
        return ErrorReply(request_id, BAD_REQUEST, f'missing field "ch" in {op}')
    channel = obj["ch"]
    problem = channel_name_error(channel)
    if problem is not None:
        return ErrorReply(request_id, BAD_CHANNEL, problem)
    if op == "sub":
        since = None
        if obj.get("since") is not None:
            parsed = _since(obj["since"])
            if isinstance(parsed, str):
                return ErrorReply(request_id, BAD_SINCE, parsed)
            since = parsed
        return Subscribe(request_id, channel, since)
    if op == "unsub":
        return Unsubscribe(request_id, channel)
    if "data" not in obj:
        return ErrorReply(request_id, BAD_REQUEST, 'missing field "data" in pub')
    try:
        data_json = json_limits.encode(obj["data"])
        json_limits.check_integers(text, data_json)
    except json_limits.JsonLimitError as exc:
        return ErrorReply(request_id, BAD_REQUEST, f"data: {exc}")
    if max_data_size is not None and len(data_json) > max_data_size:
        message = f"data is {len(data_json)} bytes as compact JSON, more than the limit of {max_data_size} bytes"
        return ErrorReply(request_id, BAD_REQUEST, message)
    return Publish(request_id, channel, data_json)


def ok_reply(request_id: Any, **extra: Any) -> bytes:
    reply = {"op": "ok", "id": request_id}
    reply.update(extra)
    return orjson.dumps(reply)


def err_reply(request_id: Any, code: str, msg: str) -> bytes:
    return orjson.dumps({"op": "err", "id": request_id, "code": code, "msg": msg})


def gap_notice(channel: str, offset: int, epoch: int) -> bytes:
    """`{"op":"gap","ch":NAME,"off":O,"epoch":E}`: the channel's messages up to O of epoch E are
    lost (the cluster's Redis lost them); refetch the state, deliveries continue after O."""
    return orjson.dumps({"op": "gap", "ch": channel, "off": offset, "epoch": epoch})


def unsub_notice(channel: str) -> bytes:
    """`{"op":"unsub","ch":NAME}`, no id: the server ended the subscription (the server API's
    unsubscribe); the client gets no more messages of NAME and does not resubscribe it."""
    return orjson.dumps({"op": "unsub", "ch": channel})
