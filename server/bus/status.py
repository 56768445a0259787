"""What the bus shows in `wsd ctl status`, read straight from shared memory: the fill of a role's
channel table and how far back a ring's history reaches (its horizon), with the warning a worker
logs when that horizon falls below `--history-ttl`.

The supervisor maps every segment, so it reads these itself instead of asking the workers.
"""

from __future__ import annotations

import logging

from wsd.ext.record import peek_ts_ns
from wsd.ext.ring import Ring
from wsd.server.bus.segment import Segment

log = logging.getLogger("wsd.bus")


# How many entries from the tail the horizon looks through for the oldest one with a publish time.
HORIZON_SCAN_ENTRIES = 256


def ring_horizon_s(ring: Ring, now_ns: int) -> tuple[float | None, bool]:
    """(seconds from the oldest message still intact to now, whether the ring has lapped).

    None when the ring holds no message. A ring that never lapped still holds everything since it
    started, so its horizon only says how young it is; once lapped, history older than the horizon
    is gone. Records without a publish time (with `--cluster`: INTEREST, OWNER and their replies,
    which a worker writes first) are stepped over, so they do not hide the messages behind them.
    """
    for _ in range(8):  # the writer may lap the position we read from: start again from its tail
        position = ring.tail
        lapped = ring.reserve > ring.capacity
        if position >= ring.commit:
            return None, lapped
        entries, _, lost = ring.read(position, HORIZON_SCAN_ENTRIES)
        if lost:
            continue
        for _, tag, payload in entries:
            try:
                ts_ns = peek_ts_ns(tag, payload)
            except ValueError:
                continue  # no publish time in this record: the next one may have one
            return max(0, now_ns - ts_ns) / 1e9, lapped
        return None, lapped
    return 0.0, True


def bus_status(segments: list[Segment], bus_slot: int, role: int | None, now_ns: int) -> dict:
    """The bus fields of one process's `ctl status` row."""
    horizon, lapped = ring_horizon_s(segments[bus_slot].ring, now_ns)
    table = segments[role].table if role is not None else None
    return {
        "table_used": len(table) if table is not None else None,
        "table_size": table.slots if table is not None else None,
        "history_horizon_s": None if horizon is None else round(horizon, 3),
        "ring_lapped": lapped,
    }


class HorizonWatch:
    """Logs a warning when a lapped ring's horizon falls below the history TTL (once per fall:
    it re-arms when the horizon is back above the TTL)."""

    def __init__(self, ring: Ring, history_ttl_s: float, who: str):
        self.ring = ring
        self.history_ttl_s = history_ttl_s
        self.who = who
        self.below = False

    def check(self, now_ns: int) -> None:
        horizon, lapped = ring_horizon_s(self.ring, now_ns)
        if horizon is None or not lapped:
            return
        if horizon >= self.history_ttl_s:
            self.below = False
        elif not self.below:
            self.below = True
            log.warning(
                "%s: its bus ring holds only %.1fs of history, less than --history-ttl %gs: a resume from "
                "further back gets recovered:false; raise --ring-size (%d bytes now; see docs/bus.md, "
                "'Sizing the ring')",
                self.who, horizon, self.history_ttl_s, self.ring.capacity,
            )  # fmt: skip
