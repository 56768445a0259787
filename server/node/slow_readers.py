"""When a subscriber that does not keep up is cut off.

A burst can put more than `--write-buffer-limit` bytes in a healthy reader's queue for a moment,
before the kernel has sent any of it: that is not a slow reader. A client is cut off (close 1013)
when its queue has stayed over the limit for `--slow-reader-timeout` seconds, or at once when it
holds more than HARD_LIMIT_FACTOR times the limit (our memory is not its buffer).

Only subscribers seen over the limit are tracked, so this costs nothing while everyone keeps up.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

HARD_LIMIT_FACTOR = 8


class SlowReaders:
    def __init__(
        self,
        limit: int,
        timeout_s: float,
        cut_off: Callable[[Any], None],
        clock: Callable[[], float] = time.monotonic,
    ):
        self.limit = limit
        self.hard_limit = HARD_LIMIT_FACTOR * limit
        self.timeout_s = timeout_s
        self.cut_off = cut_off
        self.clock = clock
        self.over_since: dict[Any, float] = {}  # session -> when it was first seen over the limit

    def over_limit(self, session: Any) -> None:
        """The hub saw this subscriber's queue over the limit after a write."""
        if session.raw.get_write_buffer_size() > self.hard_limit:
            self.over_since.pop(session, None)
            self.cut_off(session)
        elif session not in self.over_since:
            self.over_since[session] = self.clock()

    def sweep(self) -> None:
        """Cut off who stayed over the limit too long; forget who caught up or left."""
        if not self.over_since:
            return
        now = self.clock()
        for session, since in list(self.over_since.items()):
            raw = session.raw
            if raw is None or raw.is_closing() or raw.get_write_buffer_size() <= self.limit:
                del self.over_since[session]
            elif now - since >= self.timeout_s:
                del self.over_since[session]
                self.cut_off(session)

    def forget(self, session: Any) -> None:
        self.over_since.pop(session, None)
