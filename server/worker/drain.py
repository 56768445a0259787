"""The drain policy: close a worker's clients with 1012 spread evenly over a window, then stop.

Never all at once: a reconnect storm is what takes the next server down. Each tick closes as many
sessions as the elapsed share of the window says; clients that still arrive join the queue and are
moved the same way. They arrive during a hand-over (handshakes in flight) and during the lame-duck
period: a draining host answers 503 on /healthz at once, but a front needs a few failed health
checks before it stops sending new flows, so for `lame_duck_s` new handshakes are still accepted
(and those late clients moved with 1012 like the rest) rather than failed. When the window (and the
lame-duck period) runs out, or on a second request, whoever is left gets 1001 and the worker stops.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from typing import Any

from picows.picows import WSCloseCode

log = logging.getLogger("wsd.worker")


class Drain:
    TICK_S = 0.02

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        slot: int,
        sessions: set[Any],
        window_s: float,
        hand_over: bool,
        on_done: Callable[[], None],
        lame_duck_s: float = 0.0,
    ):
        self.loop = loop
        self.slot = slot
        self.sessions = sessions  # the worker's live set: what is left to close
        self.window_s = max(window_s, 0.0)
        self.lame_duck_s = max(lame_duck_s, 0.0)
        self.ends_after_s = max(self.window_s, self.lame_duck_s)
        self.hand_over = hand_over  # a rolling reload: a new process on this slot takes new connections
        self.on_done = on_done
        self.started = time.monotonic()
        self.queue = list(sessions)
        random.shuffle(self.queue)
        self.next_index = 0
        self._last_logged_tenth = 0
        log.info(
            "worker %d draining %d clients over %gs (%s)", slot, len(self.queue), self.window_s,
            "hand-over to a new process" if hand_over else "/healthz and new handshakes answer 503",
        )  # fmt: skip
        self._timer = loop.call_soon(self._tick)

    def add(self, session: Any) -> None:
        self.queue.append(session)

    def in_lame_duck(self) -> bool:
        """Still taking new handshakes (they are moved with 1012 like everyone)."""
        return time.monotonic() - self.started < self.lame_duck_s

    def _tick(self) -> None:
        elapsed = time.monotonic() - self.started
        if self.window_s == 0:
            # No window: move everyone now, still with 1012 (reconnect elsewhere), not 1001.
            self._close_due(len(self.queue))
            if elapsed >= self.lame_duck_s:
                self.finish_now("drain window of 0 s")
                return
        elif elapsed >= self.ends_after_s:
            self.finish_now("drain window over")
            return
        else:
            # Spread over the first 90% of the window: a loop delayed by load still closes everyone
            # with 1012 before the window runs out (then the rest would get 1001).
            share = elapsed / (0.9 * self.window_s)
            self._close_due(len(self.queue) if share >= 1 else min(len(self.queue), int(len(self.queue) * share) + 1))
        tenth = int(10 * elapsed / self.ends_after_s)
        if tenth > self._last_logged_tenth:
            self._last_logged_tenth = tenth
            log.info("worker %d drain %d%%: %d clients left", self.slot, 10 * tenth, len(self.sessions))
        # Keep answering 503 until the window ends, even with no client left: the front needs
        # time to see /healthz fail.
        self._timer = self.loop.call_later(self.TICK_S, self._tick)

    def _close_due(self, due: int) -> None:
        while self.next_index < due:
            session = self.queue[self.next_index]
            self.next_index += 1
            session.close(WSCloseCode.SERVICE_RESTART, "server restarting: reconnect")

    def finish_now(self, reason: str) -> None:
        self._timer.cancel()
        left = self.queue[self.next_index :]
        self.next_index = len(self.queue)
        if left:
            log.info("worker %d drain ends (%s): closing %d clients with 1001", self.slot, reason, len(left))
        else:
            log.info("worker %d drain complete (%s): every client was moved with 1012", self.slot, reason)
        for session in left:
            session.close(WSCloseCode.GOING_AWAY, "server stopping")
        self.on_done()
