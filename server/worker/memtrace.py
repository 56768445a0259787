"""Bench-only memory tracing of a worker: where its Python-allocator bytes per connection go.

With `WSD_TRACEMALLOC=DIR` in the environment of `wsd serve`, every worker starts tracemalloc
before it builds anything, and on SIGWINCH writes a snapshot to
`DIR/worker-<slot>-<n>.tracemalloc` (n counts 0, 1, ...). bench/connection_memory.py takes one
snapshot before its clients connect and one after, and compares them. Without the variable
nothing is imported or installed: a server in production never pays for it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path

ENVIRONMENT_VARIABLE = "WSD_TRACEMALLOC"
FRAMES = 8  # of traceback per allocation: enough to see which picows/uvloop call made it

log = logging.getLogger("wsd.worker")


def start_if_asked() -> None:
    """Start tracing when WSD_TRACEMALLOC names a directory (first thing in the process)."""
    if os.environ.get(ENVIRONMENT_VARIABLE):
        import tracemalloc

        tracemalloc.start(FRAMES)


def install_snapshot_signal(loop: asyncio.AbstractEventLoop, slot: int) -> None:
    """SIGWINCH writes a snapshot (only when tracing was asked for)."""
    directory = os.environ.get(ENVIRONMENT_VARIABLE)
    if not directory:
        return
    taken = 0

    def snapshot() -> None:
        nonlocal taken
        import gc
        import tracemalloc

        gc.collect()
        path = Path(directory) / f"worker-{slot}-{taken}.tracemalloc"
        tracemalloc.take_snapshot().dump(str(path))
        taken += 1
        log.warning("worker %d: tracemalloc snapshot written to %s", slot, path)

    loop.add_signal_handler(signal.SIGWINCH, snapshot)
