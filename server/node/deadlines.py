"""Every connection's auth deadline on one loop timer: the end of `--auth-timeout` for a connection
that has not sent `auth` yet, its token's `exp` once it has.

The deadlines live in an `ExpiryWheel` (wsd.server.auth.expiry); one timer is armed for the
earliest, and when it fires every connection whose deadline passed is asked of the gate
(`deadline_close`): closed with 1008 (`token expired`, or the auth timeout), or, if a refresh moved
its deadline meanwhile, scheduled again. Deadlines are wall-clock seconds (a token's `exp` is),
so the timer is armed for `deadline - time.time()` from now.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any

from wsd.server.auth.expiry import ExpiryWheel
from wsd.server.auth.gate import AuthGate

log = logging.getLogger("wsd.worker")

# Deadlines are grouped in buckets of this many seconds: a connection is closed at most this late
# (the contract allows a second), and a refresh within the same bucket costs no heap operation.
RESOLUTION_S = 0.25


class ConnectionDeadlines:
    __slots__ = ("loop", "gate", "wheel", "_timer", "_timer_at")

    def __init__(self, loop: asyncio.AbstractEventLoop, gate: AuthGate, resolution_s: float = RESOLUTION_S):
        self.loop = loop
        self.gate = gate
        self.wheel = ExpiryWheel(resolution_s)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None  # wall-clock time the timer is armed for

    def __len__(self) -> int:
        return len(self.wheel)

    def set(self, session: Any, deadline: float) -> None:
        """Check `session` at `deadline` (wall clock); an infinite deadline means never."""
        if math.isinf(deadline):
            self.wheel.cancel(session)
            return
        self.wheel.schedule(session, deadline)
        self._arm()

    def cancel(self, session: Any) -> None:
        self.wheel.cancel(session)  # the timer stays: when it fires for nobody it re-arms or stops

    def _arm(self) -> None:
        due = self.wheel.next_due()
        if due is None or (self._timer_at is not None and self._timer_at <= due):
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = due
        self._timer = self.loop.call_later(max(0.0, due - time.time()), self._fire)

    def _fire(self) -> None:
        self._timer = self._timer_at = None
        now = time.time()
        for session in self.wheel.pop_due(now):
            try:
                self._check(session, now)
            except Exception:  # one connection's trouble must not stop the others' deadlines
                log.exception("auth deadline of a connection failed")
        self._arm()

    def _check(self, session: Any, now: float) -> None:
        identity = session.identity
        close = self.gate.deadline_close(identity, now)
        if close is not None:
            session.close(*close, linger=True)
        elif identity is not None:
            self.set(session, identity.exp)
