"""Health of each backend: `GET /healthz` probes and the per-backend verdict they add up to.

`BackendHealth` is a plain state machine (probe results in, state out) so it is tested without
sockets; `probe()` is the one function that talks HTTP.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from enum import Enum

from wsd.balancer.config import Endpoint


class HealthState(Enum):
    UP = "up"
    DRAINING = "draining"  # answers 503: alive, refusing new sessions, moving its clients away
    DOWN = "down"


@dataclass(frozen=True)
class ProbeResult:
    """One `GET /healthz`: the HTTP status (None when no answer) and what went wrong, if anything."""

    status: int | None
    error: str | None = None
    clients: int | None = None  # optional `X-Wsd-Clients` header: connections the backend still holds

    @property
    def passed(self) -> bool:
        return self.status == 200

    @property
    def draining(self) -> bool:
        return self.status == 503

    def describe(self) -> str:
        if self.status is None:
            return self.error or "no answer"
        return f"HTTP {self.status}"


class BackendHealth:
    """Consecutive-result counting: K failures in a row take a backend down, R passes bring it back.

    A 503 is not a failure: the backend is draining on purpose and must keep its established
    connections, so it gets its own state at once (no K-in-a-row wait).
    """

    def __init__(self, fail_after: int, rise_after: int) -> None:
        self.fail_after = fail_after
        self.rise_after = rise_after
        self.state = HealthState.DOWN  # until the first probe says otherwise
        self.consecutive_failures = 0
        self.consecutive_passes = 0
        self.last_result: ProbeResult | None = None
        self.checked_once = False

    def observe(self, result: ProbeResult) -> tuple[HealthState, str] | None:
        """Record a probe; return (new state, reason) when the state changed, else None."""
        self.last_result = result
        first = not self.checked_once
        self.checked_once = True
        previous = self.state
        if result.draining:
            self.consecutive_failures = 0
            self.consecutive_passes = 0
            self.state = HealthState.DRAINING
            reason = "healthz answered 503 (draining)"
        elif result.passed:
            self.consecutive_failures = 0
            self.consecutive_passes += 1
            if first or previous is HealthState.DRAINING or self.consecutive_passes >= self.rise_after:
                self.state = HealthState.UP
            reason = f"healthz passed {self.consecutive_passes}x in a row"
        else:
            self.consecutive_passes = 0
            self.consecutive_failures += 1
            if first or self.consecutive_failures >= self.fail_after:
                self.state = HealthState.DOWN
            reason = f"healthz failed {self.consecutive_failures}x in a row ({result.describe()})"
        if self.state is previous and not first:
            return None
        return self.state, reason


async def probe(backend: Endpoint, path: str, timeout_s: float) -> ProbeResult:
    """`GET path` on the backend over a fresh connection (HTTP/1.0-style, `Connection: close`)."""
    writer = None
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(backend.host, backend.port)
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: {backend}\r\nUser-Agent: wsd-balancer\r\n"
                f"Connection: close\r\n\r\n".encode()
            )
            head = await reader.readuntil(b"\r\n\r\n")
    except TimeoutError:
        return ProbeResult(None, f"no answer within {timeout_s:g}s")
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as error:
        detail = getattr(error, "strerror", None)
        return ProbeResult(None, type(error).__name__ + (f": {detail}" if detail else ""))
    finally:
        if writer is not None:
            writer.close()
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        return ProbeResult(None, f"not an HTTP answer: {status_line[:60]!r}")
    clients = None
    for line in header_lines:
        name, _, value = line.partition(":")
        if name.strip().lower() == "x-wsd-clients" and value.strip().isdigit():
            clients = int(value.strip())
    return ProbeResult(int(parts[1]), None, clients)
