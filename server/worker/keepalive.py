"""Keepalive: find the connections whose peer is gone without a word (a phone that changed network,
a laptop asleep, a NAT that forgot the flow) and close them, so they give back their slot and
their subscriptions.

Every `interval_s` each connection gets a WebSocket ping; a connection from which nothing at all
(no pong, no message) has arrived within `timeout_s` after its ping is closed with 1011 `ping
timeout` and aborted. There is no timer per connection: one sweep a tick walks a snapshot of the
sessions taken at the start of each round, pinging the ones whose turn has come (spread over the
round so pings never go out in one burst) and checking, `timeout_s` later, the ones pinged.

A tick that comes late (the loop was stalled: a burst of work, or the box's cores taken) checks
nobody: timers run before the loop reads its sockets, so the pongs that arrived during the stall
are still unread, and their senders would be closed as silent. The checks wait for the next tick,
after one round of reads.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from picows.picows import WSCloseCode

log = logging.getLogger("wsd.worker")

SPREAD = 0.9  # pings of a round go out over this share of the interval
STALL_S = 1.0  # a tick this long after the one before follows a stalled loop


class _Round:
    __slots__ = ("started", "sessions", "pinged", "checked")

    def __init__(self, started: float, sessions: list[Any]):
        self.started = started
        self.sessions = sessions
        self.pinged = 0
        self.checked = 0


class Keepalive:
    def __init__(
        self,
        sessions: Callable[[], Iterable[Any]],
        interval_s: float,
        timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.sessions = sessions
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.clock = clock
        self.rounds: list[_Round] = []  # at most two: the current one, and the last one's checks
        # The first round starts one interval after the worker does: a round started at the first
        # tick would ping whoever connected in the worker's first half second at once.
        self.round_started: float | None = clock()
        self.timeouts = 0
        self.last_tick: float | None = None
        self.deferring = False
        self.deferred_checks = 0  # ticks that checked nobody because they followed a stall

    def tick(self) -> None:
        now = self.clock()
        # At most one tick in a row defers: the loop read its sockets between two ticks, so under a
        # loop that stays slow the checks still happen, every other tick.
        stalled = self.last_tick is not None and now - self.last_tick > STALL_S and not self.deferring
        self.last_tick, self.deferring = now, stalled
        if stalled:
            self.deferred_checks += 1
        if self.round_started is None or now - self.round_started >= self.interval_s:
            self.round_started = now
            self.rounds.append(_Round(now, list(self.sessions())))
        for round_ in list(self.rounds):
            self._advance(round_, now, check=not stalled)
            if round_.checked == len(round_.sessions):
                self.rounds.remove(round_)

    def _due(self, round_: _Round, elapsed: float) -> int:
        if elapsed < 0:
            return 0
        share = elapsed / (SPREAD * self.interval_s)
        return min(len(round_.sessions), int(len(round_.sessions) * share) + 1) if share < 1 else len(round_.sessions)

    def _advance(self, round_: _Round, now: float, check: bool) -> None:
        sessions = round_.sessions
        due = self._due(round_, now - round_.started)
        while round_.pinged < due:
            sessions[round_.pinged].send_keepalive_ping()
            round_.pinged += 1
        if not check:
            return
        due = min(round_.pinged, self._due(round_, now - round_.started - self.timeout_s))
        while round_.checked < due:
            session = sessions[round_.checked]
            sessions[round_.checked] = None  # let a closed session go
            round_.checked += 1
            if session.keepalive_expired():
                self.timeouts += 1
                log.debug("a connection did not answer a ping within %gs: closing it (1011)", self.timeout_s)
                session.close(WSCloseCode.INTERNAL_ERROR, "ping timeout", abort=True)
