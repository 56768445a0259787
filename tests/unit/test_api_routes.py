"""Unit tests of the API's routing and endpoints (wsd.server.api.routes, .endpoints) without sockets:
requests are parsed from bytes by the sans-I/O connection and handed to the router; handlers that wait
run on an event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections import defaultdict
from collections.abc import Awaitable

import pytest

from wsd.server.api import ApiError, PublishError, Request, Response, Router, json_body, json_response
from wsd.server.api.endpoints import add_publish_api, parse_publish_batch_body, parse_publish_body
from wsd.server.api.http11 import HttpConnection, HttpLimits
from wsd.server.json_limits import MAX_DEPTH


def parsed(raw: bytes) -> Request:
    connection = HttpConnection(HttpLimits(), clock=lambda: 0.0)
    connection.receive_data(raw)
    request = connection.next_request()
    assert request is not None, raw
    return request


def http(method: str, path: str, body: bytes | None = None, **headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: t"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


def post_json(path: str, payload: object, **headers: str) -> bytes:
    return http("POST", path, json.dumps(payload).encode(), Content_Type="application/json", **headers)


async def answer(router: Router, raw: bytes) -> Response:
    outcome = router.handle(parsed(raw))
    return outcome if isinstance(outcome, Response) else await outcome


def answer_now(router: Router, raw: bytes) -> Response:
    """The response, which must be there at once (no waiting handler)."""
    outcome = router.handle(parsed(raw))
    assert isinstance(outcome, Response), f"{raw[:40]!r} was not answered at once"
    return outcome


def assert_error(response: Response, status: int, *fragments: str) -> dict:
    assert response.status == status, (response.status, response.body)
    assert response.content_type == b"application/json"
    payload = json.loads(response.body)
    assert isinstance(payload["error"], str) and payload["error"]
    for fragment in fragments:
        assert fragment in payload["error"], (fragment, payload["error"])
    return payload


class Publisher:
    """Offsets per channel, given out when `publish` is called (as the bus sequences them); answered at
    once, or through a future resolved a few loop iterations later (`later`), or by a coroutine."""

    def __init__(self, mode: str = "now") -> None:
        self.mode = mode
        self.next_offset: dict[str, int] = defaultdict(int)
        self.published: list[tuple[str, bytes, int]] = []
        # Failures keyed by channel, one per publish: raised at once ("now") or through the future.
        self.failures: dict[str, list[Exception]] = defaultdict(list)

    def publish(self, channel: str, data_json: bytes) -> int | Awaitable[int]:
        if self.mode == "coroutine":
            return self._publish_coroutine(channel, data_json)
        failure = self.failures[channel].pop(0) if self.failures[channel] else None
        if failure is not None and self.mode == "now":
            raise failure
        offset = None if failure is not None else self._sequence(channel, data_json)
        if self.mode == "now":
            return offset  # type: ignore[return-value]
        future = asyncio.get_running_loop().create_future()
        self._resolve_later(future, offset, failure, random.randrange(4))
        return future

    def _sequence(self, channel: str, data_json: bytes) -> int:
        offset = self.next_offset[channel]
        self.next_offset[channel] += 1
        self.published.append((channel, data_json, offset))
        return offset

    def _resolve_later(self, future: asyncio.Future, offset: int | None, failure: Exception | None, turns: int) -> None:
        if turns:
            asyncio.get_running_loop().call_soon(self._resolve_later, future, offset, failure, turns - 1)
        elif failure is not None:
            future.set_exception(failure)
        else:
            future.set_result(offset)

    async def _publish_coroutine(self, channel: str, data_json: bytes) -> int:
        for _ in range(random.randrange(4)):  # a coroutine that awaits before it sequences
            await asyncio.sleep(0)
        if self.failures[channel]:
            raise self.failures[channel].pop(0)
        return self._sequence(channel, data_json)


def publish_api(publisher: Publisher | None = None, api_key: str | None = None, **limits: int) -> Router:
    router = Router(api_key=api_key)
    healthy = limits.pop("healthy", 1)
    add_publish_api(
        router,
        publisher or Publisher(),
        health=lambda: bool(healthy),
        max_batch=limits.get("max_batch", 1000),
        max_data_size=limits.get("max_data_size", 1 << 20),
    )
    return router


# --- Publishing -----------------------------------------------------------------------------------------


def test_publish_answers_the_offset_at_once_when_the_publisher_does() -> None:
    publisher = Publisher()
    router = publish_api(publisher)
    assert json.loads(answer_now(router, post_json("/api/publish", {"channel": "news", "data": {"a": 1}})).body) == {
        "offset": 0
    }
    assert json.loads(answer_now(router, post_json("/api/publish", {"channel": "news", "data": 2})).body) == {
        "offset": 1
    }
    assert json.loads(answer_now(router, post_json("/api/publish", {"channel": "sport", "data": None})).body) == {
        "offset": 0
    }


@pytest.mark.parametrize("mode", ["later", "coroutine"])
def test_publish_answers_the_offset_when_the_publisher_answers_later(mode: str) -> None:
    async def main() -> None:
        router = publish_api(Publisher(mode))
        for expected in range(3):
            response = await answer(router, post_json("/api/publish", {"channel": "c", "data": expected}))
            assert json.loads(response.body) == {"offset": expected}

    asyncio.run(main())


def test_publisher_receives_data_reserialized_as_compact_json() -> None:
    publisher = Publisher()
    body = b'{ "channel" : "room:1", "data" : { "text" : "h\\u00e9llo" ,\n "n": [1, 2.5, true] } }'
    assert answer_now(publish_api(publisher), http("POST", "/api/publish", body)).status == 200
    assert publisher.published == [("room:1", '{"text":"héllo","n":[1,2.5,true]}'.encode(), 0)]


def test_publish_accepts_a_missing_or_parameterized_json_content_type() -> None:
    router = publish_api()
    body = json.dumps({"channel": "c", "data": 1}).encode()
    assert answer_now(router, http("POST", "/api/publish", body)).status == 200
    for content_type in ("application/json; charset=utf-8", "Application/JSON", "application/vnd.x+json"):
        assert answer_now(router, http("POST", "/api/publish", body, Content_Type=content_type)).status == 200


@pytest.mark.parametrize("mode", ["now", "later", "coroutine"])
def test_batch_returns_offsets_in_request_order(mode: str) -> None:
    async def main() -> None:
        publisher = Publisher(mode)
        batch = [{"channel": "a" if i % 3 else "b", "data": i} for i in range(30)]
        response = await answer(publish_api(publisher), post_json("/api/publish_batch", batch))
        assert response.status == 200
        expected_offsets, next_offset = [], {"a": 0, "b": 0}
        for item in batch:
            expected_offsets.append(next_offset[item["channel"]])
            next_offset[item["channel"]] += 1
        assert json.loads(response.body) == {"offsets": expected_offsets}
        assert [(channel, json.loads(data)) for channel, data, _ in publisher.published] == [
            (item["channel"], item["data"]) for item in batch
        ]

    asyncio.run(main())


def test_batch_starts_every_item_before_awaiting_any() -> None:
    async def main() -> None:
        started: list[str] = []
        futures: list[asyncio.Future[int]] = []

        class Slow:
            def publish(self, channel: str, data_json: bytes) -> asyncio.Future[int]:
                started.append(channel)
                futures.append(asyncio.get_running_loop().create_future())
                return futures[-1]

        outcome = publish_api(Slow()).handle(  # type: ignore[arg-type]
            parsed(post_json("/api/publish_batch", [{"channel": f"c{i}", "data": i} for i in range(5)]))
        )
        assert started == ["c0", "c1", "c2", "c3", "c4"], "all five are on their way before any answer"
        for offset, future in reversed(list(enumerate(futures))):
            future.set_result(offset + 10)
        assert not isinstance(outcome, Response)
        assert json.loads((await outcome).body) == {"offsets": [10, 11, 12, 13, 14]}

    asyncio.run(main())


# --- Bad requests ---------------------------------------------------------------------------------------


def test_unknown_path_is_404_and_lists_the_endpoints() -> None:
    response = answer_now(publish_api(), post_json("/api/publsh", {}))
    assert_error(response, 404, "/api/publsh", "/api/publish", "/healthz")


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", "/api/publish", "POST"),
        ("PUT", "/api/publish_batch", "POST"),
        ("POST", "/healthz", "GET, HEAD"),
        ("DELETE", "/healthz", "GET, HEAD"),
    ],
)
def test_wrong_method_is_405_with_allow(method: str, path: str, allow: str) -> None:
    response = answer_now(publish_api(), http(method, path))
    assert_error(response, 405, method, allow)
    assert response.headers == f"Allow: {allow}\r\n".encode()


def test_non_json_content_type_is_415() -> None:
    publisher = Publisher()
    body = json.dumps({"channel": "c", "data": 1}).encode()
    raw = http("POST", "/api/publish", body, Content_Type="application/x-www-form-urlencoded")
    assert_error(answer_now(publish_api(publisher), raw), 415, "application/json", "x-www-form-urlencoded")
    raw = http("POST", "/api/publish_batch", b"[]", Content_Type="text/plain")
    assert_error(answer_now(publish_api(publisher), raw), 415)
    assert publisher.published == []


BAD_PUBLISH_BODIES = [
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
    (b'{"channel": "c", "data": %s}' % (b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1)), ["65 levels", "limit of 64"]),
    (b'{"channel": "c", "data": %s}' % (b"[" * 300 + b"]" * 300), ["levels deep", "limit of 64"]),
    (b'{"channel": "c", "data": %s}' % (b"[" * 5000 + b"]" * 5000), ["levels deep", "limit of 64"]),
    (b'{"channel": "c", "data": {"n": 123456789012345678901234567890}}', ["123456789012345678901234567890", "64 bits"]),
    (b'{"channel": "c", "data": -9223372036854775809}', ["64 bits"]),
]


@pytest.mark.parametrize(("body", "fragments"), BAD_PUBLISH_BODIES)
def test_bad_publish_body_is_400(body: bytes, fragments: list[str]) -> None:
    publisher = Publisher()
    assert_error(answer_now(publish_api(publisher), http("POST", "/api/publish", body)), 400, *fragments)
    assert publisher.published == []


@pytest.mark.parametrize(("body", "fragments"), BAD_PUBLISH_BODIES[2:])
def test_bad_publish_body_raises_from_the_pure_parser(body: bytes, fragments: list[str]) -> None:
    with pytest.raises(ApiError) as refused:
        parse_publish_body(body, max_data_size=1 << 20)
    assert refused.value.status == 400
    assert all(fragment in refused.value.message for fragment in fragments)


def test_data_nested_50_levels_and_integers_of_64_bits_are_published_unchanged() -> None:
    publisher = Publisher()
    data = b"[" * 50 + b"18446744073709551615,-9223372036854775808" + b"]" * 50
    body = b'{"channel": "c", "data": %s}' % data
    assert answer_now(publish_api(publisher), http("POST", "/api/publish", body)).status == 200
    assert publisher.published[0][1] == data


@pytest.mark.parametrize(
    ("body", "fragments"),
    [
        (b"[]", ["empty"]),
        (b'{"channel": "c", "data": 1}', ["non-empty JSON list", "an object"]),
        (b'[{"channel": "c", "data": 1}, 5]', ["batch item 1", "a number"]),
        (b'[{"channel": "c", "data": 1}, {"channel": "c"}]', ["batch item 1", '"data"']),
        (b'[{"channel": "ok", "data": 1}, {"channel": "no/slash", "data": 1}]', ["batch item 1", "'/'"]),
        (b'[{"channel": "ok", "data": 1}, {"channel": "c", "data": %s}]' % (b"[" * 65 + b"]" * 65), ["item 1", "65"]),
        (b'[{"channel": "ok", "data": 1}, {"channel": "c", "data": 99999999999999999999}]', ["64 bits"]),
    ],
)
def test_bad_batch_is_400_and_publishes_nothing(body: bytes, fragments: list[str]) -> None:
    publisher = Publisher()
    assert_error(answer_now(publish_api(publisher), http("POST", "/api/publish_batch", body)), 400, *fragments)
    assert publisher.published == []


def test_batch_over_max_batch_is_413() -> None:
    publisher = Publisher()
    router = publish_api(publisher, max_batch=3)
    batch = [{"channel": "c", "data": i} for i in range(4)]
    assert_error(answer_now(router, post_json("/api/publish_batch", batch)), 413, "4", "3")
    assert publisher.published == []
    assert json.loads(answer_now(router, post_json("/api/publish_batch", batch[:3])).body) == {"offsets": [0, 1, 2]}


def test_data_size_is_counted_as_reserialized() -> None:
    # 1e15 is 4 bytes as sent and 18 as orjson writes it: the limit counts what is stored and sent.
    publisher = Publisher()
    router = publish_api(publisher, max_data_size=100)
    assert answer_now(router, post_json("/api/publish", {"channel": "c", "data": "x" * 98})).status == 200
    small_body = b'{"channel": "c", "data": [%s]}' % b",".join([b"1e15"] * 10)
    assert len(small_body) < 100
    assert_error(answer_now(router, http("POST", "/api/publish", small_body)), 413, "191 bytes", "limit of 100")
    batch = b'[{"channel": "c", "data": 1}, {"channel": "c", "data": [%s]}]' % b",".join([b"1e15"] * 10)
    assert_error(answer_now(router, http("POST", "/api/publish_batch", batch)), 413, "batch item 1", "191 bytes")
    assert len(publisher.published) == 1
    with pytest.raises(ApiError):
        parse_publish_batch_body(batch, max_batch=10, max_data_size=100)


# --- Publisher failures ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["now", "later", "coroutine"])
def test_publish_error_is_answered_with_its_status(mode: str) -> None:
    async def main() -> None:
        publisher = Publisher(mode)
        publisher.failures["busy"].append(PublishError(503, "the server is draining; retry on another"))
        router = publish_api(publisher)
        assert_error(await answer(router, post_json("/api/publish", {"channel": "busy", "data": 1})), 503, "draining")
        response = await answer(router, post_json("/api/publish", {"channel": "busy", "data": 2}))
        assert json.loads(response.body) == {"offset": 0}

    asyncio.run(main())


@pytest.mark.parametrize("mode", ["now", "later"])
def test_unexpected_publisher_exception_is_500_and_logged(mode: str, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        publisher = Publisher(mode)
        publisher.failures["boom"].append(RuntimeError("ring is on fire"))
        with caplog.at_level(logging.ERROR, logger="wsd.server.api"):
            response = await answer(publish_api(publisher), post_json("/api/publish", {"channel": "boom", "data": 1}))
        assert_error(response, 500, "internal error", "ring is on fire")
        assert any(record.exc_info and "boom" in record.getMessage() for record in caplog.records)

    asyncio.run(main())


def test_publish_error_with_a_status_that_is_not_an_error_is_500(caplog: pytest.LogCaptureFixture) -> None:
    publisher = Publisher()
    publisher.failures["odd"].append(PublishError(200, "fine?"))
    with caplog.at_level(logging.ERROR, logger="wsd.server.api"):
        assert_error(answer_now(publish_api(publisher), post_json("/api/publish", {"channel": "odd", "data": 1})), 500)
    assert any("outside 400-599" in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize("mode", ["now", "later", "coroutine"])
def test_batch_failure_reports_which_items_were_published(mode: str) -> None:
    async def main() -> None:
        publisher = Publisher(mode)
        publisher.failures["b"].append(PublishError(503, "draining"))
        batch = [{"channel": "a", "data": 0}, {"channel": "a", "data": 1}, {"channel": "b", "data": 2}]
        response = await answer(publish_api(publisher), post_json("/api/publish_batch", batch))
        payload = assert_error(response, 503, "batch item 2", "draining", "items 0..1 were published")
        assert payload["offsets"] == [0, 1]
        assert [channel for channel, _, _ in publisher.published] == ["a", "a"]

    asyncio.run(main())


def test_batch_failure_of_an_item_started_with_later_ones_says_they_may_have_been_published() -> None:
    async def main() -> None:
        publisher = Publisher("later")
        publisher.failures["b"].append(PublishError(503, "timed out"))
        batch = [{"channel": "a", "data": 0}, {"channel": "b", "data": 1}, {"channel": "a", "data": 2}]
        payload = assert_error(await answer(publish_api(publisher), post_json("/api/publish_batch", batch)), 503)
        assert "batch item 1" in payload["error"] and "items after 1 were sent too" in payload["error"]
        assert payload["offsets"] == [0]

    asyncio.run(main())


def test_batch_failure_of_the_first_item_says_nothing_was_published() -> None:
    publisher = Publisher()
    publisher.failures["a"].append(PublishError(503, "draining"))
    batch = [{"channel": "a", "data": 0}, {"channel": "a", "data": 1}]
    payload = assert_error(answer_now(publish_api(publisher), post_json("/api/publish_batch", batch)), 503)
    assert "batch item 0" in payload["error"] and "nothing was published" in payload["error"]
    assert payload["offsets"] == []


# --- Health ---------------------------------------------------------------------------------------------


def test_healthz_answers_ok_or_draining() -> None:
    response = answer_now(publish_api(), http("GET", "/healthz"))
    assert (response.status, response.body, response.content_type) == (200, b"ok\n", b"text/plain; charset=utf-8")
    response = answer_now(publish_api(healthy=0), http("GET", "/healthz"))
    assert (response.status, response.body) == (503, b"draining\n")
    assert answer_now(publish_api(healthy=0), http("HEAD", "/healthz")).status == 503


# --- The API key ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("authorization", "fragment"),
    [
        (None, "Authorization: Bearer <api key>"),
        ("Basic c2VjcmV0", "must be Bearer <api key>"),
        ("Bearer", "wrong API key"),
        ("Bearer wrong", "wrong API key"),
        ("Bearer s3cret-but-longer", "wrong API key"),
    ],
)
def test_api_paths_need_the_api_key_when_one_is_set(authorization: str | None, fragment: str) -> None:
    publisher = Publisher()
    router = publish_api(publisher, api_key="s3cret")
    headers = {} if authorization is None else {"Authorization": authorization}
    for raw in (
        post_json("/api/publish", {"channel": "c", "data": 1}, **headers),
        post_json("/api/publish_batch", [{"channel": "c", "data": 1}], **headers),
        http("GET", "/api/unknown", **headers),  # unknown /api/ paths too: nothing is told without the key
        http("GET", "/api/publish", **headers),
    ):
        response = answer_now(router, raw)
        assert_error(response, 401, "unauthorized: ", fragment)
        assert response.headers == b'WWW-Authenticate: Bearer realm="wsd"\r\n'
    assert publisher.published == []


def test_the_right_api_key_is_accepted_in_any_case_of_bearer() -> None:
    publisher = Publisher()
    router = publish_api(publisher, api_key="s3cret")
    for scheme in ("Bearer", "bearer", "BEARER"):
        raw = post_json("/api/publish", {"channel": "c", "data": 1}, Authorization=f"{scheme} s3cret")
        assert answer_now(router, raw).status == 200
    assert len(publisher.published) == 3


def test_healthz_needs_no_api_key() -> None:
    assert answer_now(publish_api(api_key="s3cret"), http("GET", "/healthz")).status == 200


def test_without_an_api_key_none_is_needed() -> None:
    assert answer_now(publish_api(), post_json("/api/publish", {"channel": "c", "data": 1})).status == 200


def test_an_empty_api_key_is_refused() -> None:
    with pytest.raises(ValueError):
        Router(api_key="")


# --- Adding endpoints -----------------------------------------------------------------------------------


def test_added_routes_get_exact_paths_and_a_placeholder_segment() -> None:
    router = Router()
    router.add("GET", "/api/channels", lambda request: json_response(200, {"channels": []}))
    router.add(
        "GET", "/api/channels/{name}", lambda request: json_response(200, {"channel": request.params["name"]})
    )
    assert json.loads(answer_now(router, http("GET", "/api/channels")).body) == {"channels": []}
    assert json.loads(answer_now(router, http("GET", "/api/channels/room:1")).body) == {"channel": "room:1"}
    assert json.loads(answer_now(router, http("GET", "/api/channels/a%40b?x=1")).body) == {"channel": "a@b"}
    assert_error(answer_now(router, http("GET", "/api/channels/a/b")), 404, "/api/channels/{name}")
    assert_error(answer_now(router, http("GET", "/api/channels/")), 404)


def test_added_routes_may_answer_later_and_raise_api_errors() -> None:
    async def disconnect(request: Request) -> Response:
        payload = json_body(request, '{"user": "<id>"}')
        if not isinstance(payload, dict) or "user" not in payload:
            raise ApiError(400, 'send {"user": "<id>"}')
        await asyncio.sleep(0)
        return json_response(200, {"disconnected": 0})

    async def main() -> None:
        router = Router()
        router.add("POST", "/api/disconnect", disconnect)
        response = await answer(router, post_json("/api/disconnect", {"user": "u1"}))
        assert json.loads(response.body) == {"disconnected": 0}
        assert_error(await answer(router, post_json("/api/disconnect", {})), 400, "user")
        assert_error(await answer(router, http("POST", "/api/disconnect", b"{", Content_Type="text/plain")), 415)

    asyncio.run(main())


def test_a_handler_that_fails_is_500_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    def broken(request: Request) -> Response:
        raise KeyError("oops")

    async def broken_later(request: Request) -> Response:
        raise KeyError("later")

    async def main() -> None:
        router = Router()
        router.add("GET", "/readyz", broken)
        router.add("GET", "/metrics", broken_later)
        with caplog.at_level(logging.ERROR, logger="wsd.server.api"):
            assert_error(await answer(router, http("GET", "/readyz")), 500, "oops")
            assert_error(await answer(router, http("GET", "/metrics")), 500, "later")
        assert sum(1 for record in caplog.records if record.exc_info) == 2

    asyncio.run(main())


def test_auth_defaults_to_api_paths_and_can_be_asked_for_elsewhere() -> None:
    router = Router(api_key="k")
    ok = lambda request: json_response(200, {})  # noqa: E731
    router.add("GET", "/metrics", ok, auth=True)
    router.add("GET", "/readyz", ok)
    router.add("GET", "/api/open", ok, auth=False)
    assert answer_now(router, http("GET", "/metrics")).status == 401
    assert answer_now(router, http("GET", "/metrics", Authorization="Bearer k")).status == 200
    assert answer_now(router, http("GET", "/readyz")).status == 200
    assert answer_now(router, http("GET", "/api/open")).status == 200


def test_one_path_can_take_several_methods_and_get_includes_head() -> None:
    router = Router()
    router.add("GET", "/x", lambda request: json_response(200, {"m": "get"}))
    router.add(["POST", "PUT"], "/x", lambda request: json_response(200, {"m": request.method.decode()}))
    assert json.loads(answer_now(router, http("PUT", "/x", b"")).body) == {"m": "PUT"}
    assert answer_now(router, http("HEAD", "/x")).status == 200
    response = answer_now(router, http("DELETE", "/x"))
    assert response.headers == b"Allow: GET, HEAD, POST, PUT\r\n"


@pytest.mark.parametrize(
    ("methods", "path"),
    [([], "/x"), ("GET", "x"), ("GET", "/a/{b}/c"), ("GET", "/a{b}"), ("GET", "/dup")],
)
def test_bad_routes_are_refused_when_added(methods: list[str] | str, path: str) -> None:
    router = Router()
    router.add("GET", "/dup", lambda request: json_response(200, {}))
    with pytest.raises(ValueError):
        router.add(methods, path, lambda request: json_response(200, {}))


def test_requests_the_connection_refused_are_answered_with_their_error() -> None:
    connection = HttpConnection(HttpLimits(max_body_size=10), clock=lambda: 0.0)
    connection.receive_data(http("POST", "/api/publish", b"x" * 11))
    request = connection.next_request()
    assert request is not None
    assert_error(answer_now_request(Router(), request), 413, "10 bytes")


def answer_now_request(router: Router, request: Request) -> Response:
    outcome = router.handle(request)
    assert isinstance(outcome, Response)
    return outcome


def test_routes_say_which_headers_their_handlers_read() -> None:
    router = Router()
    router.add("GET", "/metrics", lambda request: json_response(200, {}), headers=["Accept"])
    router.add("GET", "/other", lambda request: json_response(200, {}), headers="X-Request-Id")
    assert router.kept_headers == {b"accept", b"x-request-id"}


class BatchPublisher(Publisher):
    """A publisher that takes a batch in one call, as the shared-memory bus does: items on channels
    starting with "r" are answered later (another worker), through one future for the batch."""

    def __init__(self, fail_at: int | None = None, time_out: bool = False) -> None:
        super().__init__()
        self.fail_at = fail_at
        self.time_out = time_out
        self.batches = 0

    def publish_batch(self, messages):
        self.batches += 1
        offsets, later = [], []
        for index, (channel, data_json) in enumerate(messages):
            if index == self.fail_at:
                return offsets, self._settle(offsets, later), (index, PublishError(413, "too large"))
            offset = self._sequence(channel, data_json) + 1  # the bus's offsets start at 1; 0 is "not yet"
            offsets.append(0 if channel.startswith("r") else offset)
            if channel.startswith("r"):
                later.append((index, offset))
        return offsets, self._settle(offsets, later), None

    def _settle(self, offsets, later):
        if not later:
            return None
        future = asyncio.get_running_loop().create_future()

        def answer() -> None:
            for index, offset in later[: 1 if self.time_out else None]:
                offsets[index] = offset
            if self.time_out:
                future.set_exception(PublishError(503, "timed out waiting for the channel's owner worker"))
            else:
                future.set_result(offsets)

        asyncio.get_running_loop().call_soon(answer)
        return future


def test_a_batch_publisher_gets_the_whole_batch_in_one_call_and_its_offsets_are_answered() -> None:
    async def main() -> None:
        publisher = BatchPublisher()
        batch = [{"channel": ch, "data": i} for i, ch in enumerate(["a", "r1", "a", "r1", "b"])]
        response = await answer(publish_api(publisher), post_json("/api/publish_batch", batch))
        assert response.status == 200 and publisher.batches == 1
        assert json.loads(response.body) == {"offsets": [1, 1, 2, 2, 1]}

    asyncio.run(main())


def test_a_batch_publisher_failing_an_item_answers_what_was_published_before_it() -> None:
    async def main() -> None:
        batch = [{"channel": ch, "data": i} for i, ch in enumerate(["a", "r1", "a", "b"])]
        response = await answer(publish_api(BatchPublisher(fail_at=2)), post_json("/api/publish_batch", batch))
        assert response.status == 413
        body = json.loads(response.body)
        assert body["offsets"] == [1, 1] and "batch item 2" in body["error"]
        assert "item 2 and later were not" in body["error"]

    asyncio.run(main())


def test_a_batch_whose_other_worker_times_out_names_the_first_item_without_an_offset() -> None:
    async def main() -> None:
        batch = [{"channel": ch, "data": i} for i, ch in enumerate(["a", "r1", "r2", "b"])]
        response = await answer(publish_api(BatchPublisher(time_out=True)), post_json("/api/publish_batch", batch))
        assert response.status == 503
        body = json.loads(response.body)
        assert body["offsets"] == [1, 1] and "batch item 2 (channel 'r2')" in body["error"]
        assert "may or may not have been published" in body["error"]

    asyncio.run(main())
