"""The numbers a worker reports, declared once.

Each worker writes these into the stats block of its bus segment (`wsd.server.bus.segment`, one u64
each, in this order); the supervisor reads them for `wsd ctl status` (`wsd.server.control.status`),
and `wsd ctl` renders them. Adding a number is adding one line here and setting it in the worker.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Stat:
    name: str
    help: str
    counter: bool = False  # only ever grows (a count of events); otherwise a current value
    total: bool = False  # summed over the workers into the server's totals


WORKER_STATS: tuple[Stat, ...] = (
    Stat("pid", "process id of the worker that wrote this block"),
    # CLOCK_MONOTONIC is one clock for every process of a boot, and does not jump with the wall clock.
    Stat("heartbeat_ns", "monotonic clock (ns) of the worker's last stats write: its heartbeat"),
    Stat("connections", "open WebSocket connections", total=True),
    Stat("max_connections", "connections this worker accepts before it stops accepting"),
    Stat("accepting", "1 while the worker accepts new connections"),
    Stat("channels", "channels with local subscribers", total=True),
    Stat("msgs_in", "client requests and API publishes received", counter=True, total=True),
    Stat("msgs_out", "deliveries: one per message per subscriber connection", counter=True, total=True),
    Stat("overruns", "times this worker fell a whole ring behind a writer", counter=True, total=True),
    Stat("lost_bytes", "ring bytes skipped by overruns", counter=True, total=True),
    Stat("gaps", "offsets missing from a channel's sequence", counter=True, total=True),
    Stat("slow_disconnects", "clients cut off for not reading (close 1013)", counter=True, total=True),
    Stat("bus_lag", "bytes of ring this worker has not read yet"),
    Stat("draining", "1 while the worker drains"),
    Stat("drain_remaining", "clients still connected to a draining worker", total=True),
    Stat("handshakes_refused", "handshakes answered 503 (draining, or full)", counter=True, total=True),
    Stat("bad_entries", "ring entries skipped as unreadable", counter=True, total=True),
    Stat("channels_forgotten", "channels forgotten to make room in the channel table (least recently used, "
         "without subscribers; their history with them)", counter=True, total=True),
)

STAT_NAMES: tuple[str, ...] = tuple(stat.name for stat in WORKER_STATS)
TOTALS: tuple[str, ...] = tuple(stat.name for stat in WORKER_STATS if stat.total)


class WorkerCounters:
    """The event counts a worker increments on its hot paths (plain attributes: `+= 1` is cheap).

    Current values (connections, channels, bus lag...) are read from their owners when the worker
    writes its stats block; only counts that no other object keeps live here.
    """

    __slots__ = ("msgs_in", "slow_disconnects", "handshakes_refused", "handshakes", "rate_limited", "flood_closes")

    def __init__(self) -> None:
        self.msgs_in = 0
        self.slow_disconnects = 0
        self.handshakes_refused = 0
        # Handshakes by result (the labels of wsd_handshakes_total): auth's refusals `unauthorized`
        # (401) and `origin` (403) are counted here.
        self.handshakes: dict[str, int] = {}
        self.rate_limited = 0  # requests answered `err rate_limited`
        self.flood_closes = 0  # connections closed 1008 for flooding

    def handshake(self, result: str) -> None:
        """One /ws handshake answered with `result`."""
        self.handshakes[result] = self.handshakes.get(result, 0) + 1
