"""The publish API's endpoints, free of I/O: their handlers, and the validation of their bodies as pure
functions.

``POST /api/publish`` takes ``{"channel": ..., "data": ...}`` and answers ``{"offset": N}``;
``POST /api/publish_batch`` takes a list of those and answers ``{"offsets": [N, ...]}`` in request order;
``GET /healthz`` answers ``ok`` (or ``503 draining``).

Publishing is injected (`Publisher`): one call per message that answers with the offset at once, or
with a future of it (when another worker sequences the channel). Failures are `PublishError`, raised at
once or through the future. A batch starts every message before it awaits any, in batch order, so a
channel's offsets follow the batch and the batch costs one bus round trip, not one per message. (A
publisher that returns coroutines is awaited message by message instead: a coroutine only starts when
awaited.)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

import orjson

from wsd.server import json_limits
from wsd.server.api.http11 import Request, Response
from wsd.server.api.routes import (
    JSON,
    ApiError,
    Router,
    check_json_content_type,
    error_status,
    json_response,
    parse_json_body,
    text_response,
)
from wsd.server.channel_names import channel_name_error

logger = logging.getLogger(__name__)

DEFAULT_MAX_BATCH = 1000

PUBLISH_PATH = "/api/publish"
PUBLISH_BATCH_PATH = "/api/publish_batch"
HEALTH_PATH = "/healthz"

_MESSAGE_FIELDS = frozenset(("channel", "data"))
_MESSAGE_SHAPE = '{"channel": "<name>", "data": <any JSON>}'


class PublishError(ApiError):
    """Raised by a publisher, at once or through its awaitable, to answer `status` with
    ``{"error": message}`` (e.g. 503 while draining)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status, message)


class Publisher(Protocol):
    """What the API needs from the rest of the server: append one message to a channel."""

    def publish(self, channel: str, data_json: bytes) -> int | Awaitable[int]:
        """Publish `data_json` (compact JSON text) on `channel`: its offset, or an awaitable of it.
        Raises `PublishError` (or resolves to it) when the message cannot be published."""
        ...


class BatchPublisher(Publisher, Protocol):
    """A publisher that also takes a whole batch in one call (the shared-memory bus: one fence, one
    interest scan, one doorbell and one future for the batch instead of one per message)."""

    def publish_batch(
        self, messages: list[tuple[str, bytes]]
    ) -> tuple[list[int], Awaitable[list[int]] | None, tuple[int, Exception] | None] | None:
        """Publish every (channel, data_json) in order: (offsets, waiting, failure), or None to have
        them published one by one instead. `offsets` has one entry per item published, 0 for one
        whose offset is not known yet; `waiting` (if some are not) resolves to the full list, or
        fails, leaving in `offsets` the ones that came in; `failure` is (index, error) of the item
        that could not be published (nothing after it was)."""
        ...


# --- Body validation (pure functions) -------------------------------------------------------------


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


def _parse_message(message: object, where: str, max_data_size: int) -> tuple[str, bytes]:
    """Check one ``{"channel", "data"}`` object; return the channel and data re-serialized compactly."""
    if not isinstance(message, dict):
        raise ApiError(400, f"{where} must be a JSON object {_MESSAGE_SHAPE}, got {_json_type_name(message)}")
    if "channel" not in message:
        raise ApiError(400, f'{where} has no "channel" field; expected {_MESSAGE_SHAPE}')
    if "data" not in message:
        raise ApiError(400, f'{where} has no "data" field; expected {_MESSAGE_SHAPE}')
    if len(message) != len(_MESSAGE_FIELDS):
        # Refused rather than ignored: a misspelt optional field would otherwise be silently dropped.
        unknown = sorted(set(message) - _MESSAGE_FIELDS)
        raise ApiError(400, f'{where} has unknown field(s) {unknown}; only "channel" and "data" are allowed')
    channel = message["channel"]
    error = channel_name_error(channel)
    if error is not None:
        raise ApiError(400, f"{where}: {error}")
    try:
        # json_limits.encode, its fast path inlined: this runs for every message published.
        data_json = orjson.dumps(message["data"])
        if len(data_json) > json_limits.DEPTH_CHECK_ABOVE:
            json_limits.check_depth(data_json)
    except orjson.JSONEncodeError:
        raise ApiError(400, f"{where}: {json_limits.depth_error_of_encoding()}") from None
    except json_limits.JsonLimitError as limit:
        raise ApiError(400, f"{where}: {limit}") from None
    # What is stored and delivered is the re-serialized data, which can be larger than what was sent
    # (1e15 is written 1000000000000000.0): that is what the limit counts.
    if len(data_json) > max_data_size:
        raise ApiError(
            413,
            f"{where}: data is {len(data_json)} bytes as compact JSON, more than the limit of {max_data_size} bytes",
        )
    return channel, data_json


def _check_integers(body: bytes | bytearray, data: list[bytes]) -> None:
    for data_json in data:
        if json_limits.PLUS in data_json:
            break
    else:
        return  # the fast path of json_limits.check_integers, without its calls
    try:
        json_limits.check_integers(body, *data)
    except json_limits.JsonLimitError as limit:
        raise ApiError(400, f"request body: {limit}") from None


def parse_publish_body(body: bytes | bytearray, max_data_size: int) -> tuple[str, bytes]:
    """Validate a /api/publish body; return (channel, data as compact JSON). Raises ApiError."""
    message = parse_json_body(body, f"a JSON object {_MESSAGE_SHAPE}")
    channel, data_json = _parse_message(message, "request body", max_data_size)
    if json_limits.PLUS in data_json:
        _check_integers(body, [data_json])
    return channel, data_json


def parse_publish_batch_body(body: bytes | bytearray, max_batch: int, max_data_size: int) -> list[tuple[str, bytes]]:
    """Validate a /api/publish_batch body; return [(channel, data as compact JSON), ...]. Raises ApiError."""
    expected = f"a non-empty JSON list of {_MESSAGE_SHAPE} objects"
    messages = parse_json_body(body, expected)
    if not isinstance(messages, list):
        raise ApiError(400, f"request body must be {expected}, got {_json_type_name(messages)}")
    if not messages:
        raise ApiError(400, f"batch is empty; send {expected}")
    if len(messages) > max_batch:
        raise ApiError(413, f"batch has {len(messages)} messages, more than the limit of {max_batch}; split it")
    parsed = [_parse_message(message, f"batch item {index}", max_data_size) for index, message in enumerate(messages)]
    _check_integers(body, [data_json for _, data_json in parsed])
    return parsed


# --- Handlers ---------------------------------------------------------------------------------------


class PublishEndpoints:
    """The handlers of /api/publish and /api/publish_batch over one publisher."""

    def __init__(self, publisher: Publisher, *, max_batch: int, max_data_size: int) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if max_data_size < 1:
            raise ValueError(f"max_data_size must be at least 1 byte, got {max_data_size}")
        self._publish = publisher.publish
        self._publish_batch = getattr(publisher, "publish_batch", None)
        self.max_batch = max_batch
        self.max_data_size = max_data_size

    def publish(self, request: Request) -> Response | Awaitable[Response]:
        check_json_content_type(request.content_type)
        channel, data_json = parse_publish_body(request.body, self.max_data_size)
        try:
            outcome = self._publish(channel, data_json)
        except ApiError:
            raise
        except Exception as error:
            logger.exception("publish API: publishing to channel %r failed", channel)
            raise ApiError(500, f"internal error: {error!r}") from None
        if isinstance(outcome, int):
            return Response(200, orjson.dumps({"offset": outcome}), JSON)
        return self._await_offset(channel, outcome)

    async def _await_offset(self, channel: str, outcome: Awaitable[int]) -> Response:
        try:
            offset = await outcome
        except ApiError:
            raise
        except Exception as error:
            logger.exception("publish API: publishing to channel %r failed", channel)
            raise ApiError(500, f"internal error: {error!r}") from None
        return json_response(200, {"offset": offset})

    def publish_batch(self, request: Request) -> Response | Awaitable[Response]:
        check_json_content_type(request.content_type)
        messages = parse_publish_batch_body(request.body, self.max_batch, self.max_data_size)
        if self._publish_batch is not None:
            try:
                outcome = self._publish_batch(messages)
            except Exception as error:
                logger.exception("publish API: publishing a batch of %d failed", len(messages))
                raise ApiError(500, f"internal error: {error!r}") from None
            if outcome is not None:
                offsets, waiting, failure = outcome
                if waiting is not None:
                    return self._await_batch(messages, offsets, waiting, failure)
                if failure is not None:
                    return _batch_failure(offsets, failure[0], messages[failure[0]][0], failure[1], later_sent=False)
                return json_response(200, {"offsets": offsets})
        # Start every item before awaiting any: awaiting each in turn would cost one bus round trip per
        # item when another worker sequences the channel. Items start in batch order, so a channel's
        # offsets follow it.
        started: list[int | asyncio.Future[int]] = []
        failure: tuple[int, str, Exception] | None = None
        pending = False
        for index, (channel, data_json) in enumerate(messages):
            try:
                outcome = self._publish(channel, data_json)
            except Exception as error:
                failure = (index, channel, error)
                break
            if isinstance(outcome, int):
                started.append(outcome)
            elif asyncio.isfuture(outcome):
                started.append(outcome)
                pending = True
            else:
                return self._publish_rest(messages, started, index, outcome)
        if not pending:  # every item was answered at once
            if failure is not None:
                return _batch_failure(started, *failure, later_sent=False)  # type: ignore[arg-type]
            return json_response(200, {"offsets": started})
        return self._await_started(messages, started, failure)

    async def _await_batch(
        self,
        messages: list[tuple[str, bytes]],
        offsets: list[int],
        waiting: Awaitable[list[int]],
        failure: tuple[int, Exception] | None,
    ) -> Response:
        """A batch published in one call, some of whose offsets another worker gives."""
        try:
            offsets = await waiting
        except Exception as error:
            # The first item without its offset is the one that failed; those after it may have
            # been published or not.
            index = offsets.index(0) if 0 in offsets else 0
            return _batch_failure(offsets[:index], index, messages[index][0], error, later_sent=True)
        if failure is not None:
            return _batch_failure(offsets, failure[0], messages[failure[0]][0], failure[1], later_sent=False)
        return json_response(200, {"offsets": offsets})

    async def _publish_rest(
        self,
        messages: list[tuple[str, bytes]],
        started: list[int | asyncio.Future[int]],
        index: int,
        outcome: Awaitable[int],
    ) -> Response:
        """Go on from item `index`, whose publish gave a coroutine: a coroutine only starts when awaited,
        so each is awaited before the next item starts, which keeps the batch's order whatever it awaits."""
        failure: tuple[int, str, Exception] | None = None
        while True:
            if isinstance(outcome, int) or asyncio.isfuture(outcome):
                started.append(outcome)  # type: ignore[arg-type]
            else:
                try:
                    started.append(await outcome)
                except Exception as error:
                    failure = (index, messages[index][0], error)
                    break
            index += 1
            if index == len(messages):
                break
            channel, data_json = messages[index]
            try:
                outcome = self._publish(channel, data_json)
            except Exception as error:
                failure = (index, channel, error)
                break
        return await self._await_started(messages, started, failure)

    async def _await_started(
        self,
        messages: list[tuple[str, bytes]],
        started: list[int | asyncio.Future[int]],
        failure: tuple[int, str, Exception] | None,
    ) -> Response:
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
                return _batch_failure(offsets, index, messages[index][0], error, later_sent=True)
        if failure is not None:
            return _batch_failure(offsets, *failure, later_sent=False)
        return json_response(200, {"offsets": offsets})


def _batch_failure(offsets: list[int], index: int, channel: str, error: Exception, later_sent: bool) -> Response:
    if isinstance(error, ApiError):
        status, reason = error_status(error), error.message
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
    return json_response(status, {"error": message, "offsets": offsets})


# --- Health -----------------------------------------------------------------------------------------

_HEALTHY = text_response(200, "ok\n")
_DRAINING = text_response(503, "draining\n")


def health_handler(health: Callable[[], bool]) -> Callable[[Request], Response]:
    """/healthz: 200 ``ok`` while `health()` is true, else 503 ``draining``."""

    def handle(request: Request) -> Response:
        return _HEALTHY if health() else _DRAINING

    return handle


def add_publish_api(
    router: Router,
    publisher: Publisher,
    *,
    health: Callable[[], bool],
    max_batch: int = DEFAULT_MAX_BATCH,
    max_data_size: int,
) -> PublishEndpoints:
    """Register the publish endpoints and /healthz on `router`."""
    endpoints = PublishEndpoints(publisher, max_batch=max_batch, max_data_size=max_data_size)
    router.add("POST", PUBLISH_PATH, endpoints.publish)
    router.add("POST", PUBLISH_BATCH_PATH, endpoints.publish_batch)
    router.add("GET", HEALTH_PATH, health_handler(health))
    return endpoints
