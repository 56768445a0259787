"""Requests between the worker processes of one server, for the server API: "disconnect this user",
"how many subscribers has this channel here".

Each worker process listens on a Unix stream socket named after its bus slot (`worker-B.sock`) in
a directory only the server's user can enter (0700, made by the supervisor, removed when it
stops); a worker that must act on every worker asks each of the others and combines their
answers. The bus slot names the socket because it is unique among live processes: during a
rolling reload a slot's old and new processes both serve clients, and both are asked.

Wire: one request per connection, one JSON object per line each way (`{"op": ..., ...}` and the
answer, or `{"error": TEXT}`). Nothing here knows what the operations mean: `IntercomServer`
hands each request to a handler, `ask_all` returns every peer's answer or the reason it has none.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import orjson

# The wire and the blocking client live apart from asyncio, for the supervisor; they are part of this
# module's interface too.
from wsd.server.worker.intercom_wire import (  # noqa: F401 - re-exported
    ASK_TIMEOUT_S,
    MAX_ANSWER_BYTES,
    MAX_REQUEST_BYTES,
    IntercomError,
    ask_blocking,
    decode_answer,
    socket_path,
)

log = logging.getLogger("wsd.intercom")

Handler = Callable[[dict[str, Any]], dict[str, Any] | Awaitable[dict[str, Any]]]


class IntercomServer:
    """The socket one worker process answers its peers on."""

    def __init__(self, directory: str, bus_slot: int, handler: Handler):
        self.path = socket_path(directory, bus_slot)
        self.handler = handler
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        # A process that had this bus slot before and was killed left its socket file behind.
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        self.server = await asyncio.start_unix_server(self._serve, self.path, limit=MAX_REQUEST_BYTES)
        os.chmod(self.path, 0o600)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), ASK_TIMEOUT_S)
            answer = await self._answer(line)
            writer.write(orjson.dumps(answer) + b"\n")
            await writer.drain()
        except (TimeoutError, OSError, ValueError) as exc:
            log.debug("intercom: request not answered: %r", exc)
        finally:
            writer.close()

    async def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            request = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            return {"error": f"request is not JSON: {exc}"}
        if not isinstance(request, dict) or not isinstance(request.get("op"), str):
            return {"error": 'a request is a JSON object with "op"'}
        try:
            answer = self.handler(request)
            if inspect.isawaitable(answer):
                answer = await answer
        except Exception as exc:  # a failing operation answers an error; the worker goes on
            log.exception("intercom: %s failed", request.get("op"))
            return {"error": f"{request.get('op')} failed: {exc!r}"}
        return answer


async def ask(directory: str, bus_slot: int, request: dict[str, Any], timeout: float = ASK_TIMEOUT_S) -> dict:
    """One peer's answer to `request`; IntercomError when there is none."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_unix_connection(socket_path(directory, bus_slot),
                                                                limit=MAX_ANSWER_BYTES)  # fmt: skip
            try:
                writer.write(orjson.dumps(request) + b"\n")
                line = await reader.readline()
            finally:
                writer.close()
    except TimeoutError:
        raise IntercomError(f"no answer within {timeout:g} s") from None
    except (OSError, ValueError) as exc:
        raise IntercomError(f"cannot reach it ({exc.strerror if isinstance(exc, OSError) else exc})") from None
    return decode_answer(line)


async def ask_all(
    directory: str, bus_slots: Iterable[int], request: dict[str, Any], timeout: float = ASK_TIMEOUT_S
) -> dict[int, dict | IntercomError]:
    """Every peer's answer (or IntercomError), asked at once."""
    bus_slots = list(bus_slots)
    outcomes = await asyncio.gather(*(ask(directory, b, request, timeout) for b in bus_slots), return_exceptions=True)
    answers: dict[int, dict | IntercomError] = {}
    for bus_slot, outcome in zip(bus_slots, outcomes, strict=True):
        if isinstance(outcome, IntercomError | dict):
            answers[bus_slot] = outcome
        else:
            answers[bus_slot] = IntercomError(f"failed: {outcome!r}")
    return answers
