"""The workers' intercom (wsd.server.worker.intercom) without asyncio: where a worker's socket is,
the size limits, how an answer is read, and `ask_blocking`, the client of a process without an event
loop. The supervisor asks through it for `wsd ctl`; importing asyncio (and with it ssl and OpenSSL)
only for that would cost it ~7 MiB.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import orjson

ASK_TIMEOUT_S = 3.0  # a peer that has not answered by then counts as not answering
MAX_REQUEST_BYTES = 64 * 1024
MAX_ANSWER_BYTES = 64 * 1024 * 1024  # a channel list of a busy worker


def socket_path(directory: str, bus_slot: int) -> str:
    return os.path.join(directory, f"worker-{bus_slot}.sock")


class IntercomError(Exception):
    """A peer did not answer (gone, stopped, timed out) or answered with an error."""


def ask_blocking(directory: str, bus_slot: int, request: dict[str, Any], timeout: float) -> dict:
    """`ask` for a process without an event loop (the supervisor, for `wsd ctl`)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(socket_path(directory, bus_slot))
            sock.sendall(orjson.dumps(request) + b"\n")
            received = bytearray()
            while not received.endswith(b"\n"):
                chunk = sock.recv(1 << 20)
                if not chunk:
                    break
                received += chunk
                if len(received) > MAX_ANSWER_BYTES:
                    raise IntercomError(f"answer larger than {MAX_ANSWER_BYTES} bytes")
        except TimeoutError:
            raise IntercomError(f"no answer within {timeout:g} s") from None
        except OSError as exc:
            raise IntercomError(f"cannot reach it ({exc.strerror or exc})") from None
    return decode_answer(bytes(received))


def decode_answer(line: bytes) -> dict:
    """A peer's answer line as a dict; IntercomError for no answer, a malformed one or an error."""
    if not line:
        raise IntercomError("it closed the connection without answering")
    try:
        answer = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise IntercomError(f"its answer is not JSON ({exc})") from None
    if not isinstance(answer, dict):
        raise IntercomError("its answer is not a JSON object")
    if "error" in answer:
        raise IntercomError(str(answer["error"]))
    return answer
