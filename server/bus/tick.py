"""A periodic call on the event loop that keeps running whatever one run raises.

The worker's bus tick is its safety net (a doorbell lost while a writer restarted, stats, the
history-horizon check): if one run raised and the tick stopped rescheduling itself, the worker
would silently depend on doorbells alone. So the next run is scheduled before this one starts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

log = logging.getLogger("wsd.bus")


class Periodic:
    def __init__(self, loop: asyncio.AbstractEventLoop, interval_s: float, callback: Callable[[], None], name: str):
        self.loop = loop
        self.interval_s = interval_s
        self.callback = callback
        self.name = name
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._handle = self.loop.call_later(self.interval_s, self._run)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _run(self) -> None:
        self._handle = self.loop.call_later(self.interval_s, self._run)
        try:
            self.callback()
        except Exception:
            log.exception("%s failed; it runs again in %gs", self.name, self.interval_s)
