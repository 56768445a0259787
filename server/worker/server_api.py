"""The server API of issue 12 on the API port, for the app's backend, and the operations behind it:

    GET  /metrics                  Prometheus exposition of the whole server
    GET  /readyz                   readiness (also on the WebSocket port)
    POST /api/disconnect           {"user": SUB} -> {"disconnected": N}: every connection of the
                                   user, on every worker, closed with 4000
    POST /api/unsubscribe          {"user": SUB, "channel": NAME} -> {"unsubscribed": N}
    GET  /api/channels             {"channels": [{"channel": NAME, "subscribers": N}, ...]}
    GET  /api/channels/NAME        {"channel": NAME, "subscribers": N, "offset": O, "epoch": E}

Counts are for the whole server: the worker that takes the request acts on its own sessions (the
node) and asks every other live worker process over the intercom sockets (wsd.server.worker.
intercom), then adds the answers up. `wsd ctl` reaches the same operations through the supervisor,
which sends a `gather` request to one worker (`intercom_request`). With `--cluster` the other hosts
are asked too, at the same time, through `other_hosts` (wsd.server.cluster.api_hosts, set by the
worker): a host that does not answer, or Redis that cannot be reached, is named like a worker that
does not answer (503 with the error and what the others' answers add up to).

The operations take and give plain values (`Answer`); `add_server_api` puts them on the API
port's router (wsd.server.api), behind the API key like every /api/* path (and `/metrics` too;
`/readyz` stays open, like `/healthz`, for health checkers).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from wsd.server.api import Request, Response, Router
from wsd.server.api.routes import check_json_content_type
from wsd.server.channel_names import channel_name_error
from wsd.server.node.broker import BrokerError
from wsd.server.worker.intercom import IntercomError, ask_all

JSON = "application/json"
USERS_NEED_AUTH = (
    "connections have no user while auth is off (no token key is configured), so there is nobody to "
    "{what} by user; configure auth (docs/auth.md) to identify users"
)


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    content_type: str = JSON


def json_answer(status: int, payload: object) -> Answer:
    return Answer(status, orjson.dumps(payload))


def error_answer(status: int, message: str, **extra: Any) -> Answer:
    return json_answer(status, {"error": message, **extra})


class ApiInputError(ValueError):
    """A request body or argument the operation cannot take (400 with the message)."""


# Operations: name -> (how peers' answers combine, the key of the combined count).
_SUMMED = {"disconnect": "disconnected", "unsubscribe": "unsubscribed", "channel": "subscribers"}
OPERATIONS = (*_SUMMED, "channels")


class ServerApi:
    def __init__(
        self,
        node: Any,
        observer: Any,
        intercom_directory: str,
        bus_slot: int,
        users_known: Callable[[], bool],
    ):
        self.node = node
        self.observer = observer  # wsd.server.server_view.ServerObserver
        self.intercom_directory = intercom_directory
        self.bus_slot = bus_slot
        self.users_known = users_known  # True once auth identifies connections (issue 10)
        # With --cluster: `await other_hosts(request)` -> (the other hosts' workers' answers, each
        # shaped like a worker's; a text per host that did not answer). Set by the worker
        # (wsd.server.cluster.api_hosts.HostsApi.ask).
        self.other_hosts: Callable[[dict[str, Any]], Awaitable[tuple[list[dict[str, Any]], list[str]]]] | None = None

    # -- HTTP endpoints --

    def metrics(self, accept: str | None) -> Answer:
        from wsd.server.metrics import render  # prometheus_client: imported at the first scrape

        body, content_type = render(self.observer.metrics_snapshot(), accept)
        return Answer(200, body, content_type)

    def readyz(self) -> Answer:
        status, body = self.observer.readyz()
        return Answer(status, body)

    async def disconnect(self, body: bytes) -> Answer:
        return await self._answer(lambda: self.check("disconnect", _object(body, ("user",))))

    async def unsubscribe(self, body: bytes) -> Answer:
        return await self._answer(lambda: self.check("unsubscribe", _object(body, ("user", "channel"))))

    async def channels(self) -> Answer:
        return await self._answer(lambda: {"op": "channels"})

    async def channel(self, name: str) -> Answer:
        return await self._answer(lambda: self.check("channel", {"channel": name}))

    async def _answer(self, make_request: Callable[[], dict[str, Any]]) -> Answer:
        try:
            request = make_request()
        except ApiInputError as exc:
            return error_answer(400, str(exc))
        try:
            return json_answer(200, await self.gathered(request))
        except GatherError as exc:
            return error_answer(503, str(exc), **exc.partial)
        except BrokerError as exc:
            return error_answer(exc.status, str(exc))

    # -- the operations --

    def check(self, op: str, args: Mapping[str, Any]) -> dict[str, Any]:
        """A valid request for `op` from its arguments, or ApiInputError."""
        if op not in OPERATIONS:
            raise ApiInputError(f"unknown operation {op!r}; the operations are {', '.join(OPERATIONS)}")
        request: dict[str, Any] = {"op": op}
        if op in ("disconnect", "unsubscribe"):
            user = args.get("user")
            if not isinstance(user, str) or not user:
                raise ApiInputError(f'"user" must be a non-empty string (the token\'s sub), got {user!r}')
            request["user"] = user
        if op in ("unsubscribe", "channel"):
            channel = args.get("channel")
            error = channel_name_error(channel)
            if error is not None:
                raise ApiInputError(error)
            request["channel"] = channel
        if "user" in request and not self.users_known():
            raise ApiInputError(USERS_NEED_AUTH.format(what=op))
        return request

    async def gathered(self, request: dict[str, Any]) -> dict[str, Any]:
        """`request` carried out on every worker of the server (and host, with --cluster), answers
        combined. Raises GatherError (with what the others answered) if a worker did not answer."""
        view = self.observer.view()
        peers = [bus_slot for bus_slot, _stats in view.processes if bus_slot != self.bus_slot]
        answers = [self.local(request)]
        failures = []
        if self.other_hosts is not None:  # asked at the same time as this host's workers
            local_answers, (host_answers, host_failures) = await asyncio.gather(
                ask_all(self.intercom_directory, peers, request), self.other_hosts(request)
            )
        else:
            local_answers, host_answers, host_failures = await ask_all(self.intercom_directory, peers, request), [], []
        for bus_slot, answer in local_answers.items():
            if isinstance(answer, IntercomError):
                slot = dict(view.processes).get(bus_slot, {}).get("slot")
                failures.append(f"worker {slot} (bus slot {bus_slot}) did not answer: {answer}")
            else:
                answers.append(answer)
        answers.extend(host_answers)
        failures.extend(host_failures)
        combined = await self._combine(request, answers)
        if failures:
            raise GatherError("; ".join(failures), combined)
        return combined

    def local(self, request: dict[str, Any]) -> dict[str, Any]:
        """`request` on this worker's sessions only (what a peer asks over the intercom)."""
        op = request["op"]
        node = self.node
        if op == "disconnect":
            return {"disconnected": node.disconnect_user(request["user"])}
        if op == "unsubscribe":
            return {"unsubscribed": node.unsubscribe_user(request["user"], request["channel"])}
        if op == "channel":
            return {"subscribers": node.channel_subscribers(request["channel"]).get(request["channel"], 0)}
        if op == "channels":
            return {"channels": node.channel_subscribers()}
        raise ValueError(f"unknown operation {op!r}")

    def remote(self, request: dict[str, Any]) -> dict[str, Any]:
        """`request` from another host (over Redis) on this worker's sessions: checked as if it came
        here (ApiInputError, a ValueError, for a bad one), then carried out like a local peer's."""
        op = request.get("op")
        if not isinstance(op, str):
            raise ApiInputError('a request is a JSON object with "op"')
        return self.local(self.check(op, request))

    async def intercom_request(self, request: dict[str, Any]) -> dict[str, Any]:
        """The intercom handler: a peer's request for this worker alone, or (`gather`: from the
        supervisor, for `wsd ctl`) the whole server's answer."""
        if not request.get("gather"):
            return self.local(request)
        try:
            checked = self.check(request["op"], request)
        except ApiInputError as exc:
            return {"error": str(exc)}
        try:
            return await self.gathered(checked)
        except GatherError as exc:
            return {"error": str(exc)}

    async def _combine(self, request: dict[str, Any], answers: list[dict[str, Any]]) -> dict[str, Any]:
        op = request["op"]
        if op in _SUMMED:
            key = _SUMMED[op]
            combined: dict[str, Any] = {key: sum(int(a.get(key, 0)) for a in answers)}
            if op == "channel":
                channel = request["channel"]
                position = self.node.broker.latest(channel)
                if inspect.isawaitable(position):
                    position = await position
                combined = {"channel": channel, "subscribers": combined[key], "offset": position.offset,
                            "epoch": position.epoch}  # fmt: skip
            return combined
        totals: dict[str, int] = {}
        for answer in answers:
            for channel, count in answer.get("channels", {}).items():
                totals[channel] = totals.get(channel, 0) + int(count)
        return {"channels": [{"channel": name, "subscribers": totals[name]} for name in sorted(totals)]}


class GatherError(Exception):
    """A worker did not answer; `partial` is what the others' answers add up to."""

    def __init__(self, message: str, partial: dict[str, Any]):
        super().__init__(message)
        self.partial = partial


def _object(body: bytes, fields: tuple[str, ...]) -> dict[str, Any]:
    shape = "{" + ", ".join(f'"{name}": ...' for name in fields) + "}"
    if not body.strip():
        raise ApiInputError(f"request body is empty; send {shape}")
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiInputError(f"request body is not valid JSON ({exc}); send {shape}") from None
    if not isinstance(value, dict):
        raise ApiInputError(f"request body must be a JSON object {shape}")
    unknown = sorted(set(value) - set(fields))
    if unknown:
        raise ApiInputError(f"unknown field(s) {unknown}; send {shape}")
    missing = [name for name in fields if name not in value]
    if missing:
        raise ApiInputError(f"missing field(s) {missing}; send {shape}")
    return value


_NO_STORE = b"Cache-Control: no-store\r\n"


def _response(answer: Answer) -> Response:
    return Response(answer.status, answer.body, answer.content_type.encode(), _NO_STORE)


async def _later(answer: Awaitable[Answer]) -> Response:
    return _response(await answer)


def add_server_api(router: Router, api: ServerApi) -> None:
    """Serve the server API, `/metrics` and `/readyz` on the API port's router."""

    def metrics(request: Request) -> Response:
        accept = request.header(b"accept")
        return _response(api.metrics(None if accept is None else accept.decode("latin-1")))

    def json_post(operation: Callable[[bytes], Awaitable[Answer]]) -> Callable[[Request], Awaitable[Response]]:
        def handler(request: Request) -> Awaitable[Response]:
            check_json_content_type(request.content_type)  # 415 otherwise
            return _later(operation(bytes(request.body)))

        return handler

    router.add("GET", "/metrics", metrics, auth=True, headers=("Accept",))
    router.add("GET", "/readyz", lambda request: _response(api.readyz()), auth=False)
    router.add("POST", "/api/disconnect", json_post(api.disconnect))
    router.add("POST", "/api/unsubscribe", json_post(api.unsubscribe))
    router.add("GET", "/api/channels", lambda request: _later(api.channels()))
    router.add("GET", "/api/channels/{name}", lambda request: _later(api.channel(request.params["name"])))
