"""The counters, gauges and histogram a worker keeps, declared once, as a fixed layout of u64 values.

One declaration serves every reader and writer: the worker's shared-memory stats block (a
`StatsBlock` over a buffer), the worker that bumps the values, the supervisor and `wsd ctl` that
read them, and the Prometheus exporter (`wsd.server.metrics`) that turns them into families.

Everything a worker keeps is a plain unsigned 64-bit integer at a fixed index, so keeping a
counter costs one integer add (no dict, no label lookup, no lock: each block has one writer, and an
aligned u64 store is never torn on the machines wsd runs on). A labeled family has one value per
label value, all known in advance (a close code outside the list counts as `other`); the latency
histogram has a fixed set of buckets, counted one by one (not cumulative) and summed up by the
exporter. Values that are naturally fractional are stored as integers of a small unit and scaled
on export (`scale`): milliseconds of ring history, nanoseconds of latency sum.

Keys: an unlabeled value is the family's `key` (`deliveries`); a labeled one is `key.value`
(`handshakes.accepted`, `disconnects.1006`, `disconnects.other`); the histogram has
`key.le.BOUND` per bucket (`publish_delivery.le.0.005`, ..., `publish_delivery.le.+Inf`) and
`key.sum_ns`. `WORKER_FIELDS` is the order in the block; `FIELD_INDEX` maps a key to its index.
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

Kind = Literal["counter", "gauge", "histogram", "state"]
Combine = Literal["sum", "max", "min", "last"]


@dataclass(frozen=True)
class Family:
    """One metric family (or, kind "state", one internal value that is not exported).

    `metric` is the Prometheus name as it appears in the exposition (counters end in `_total`).
    `combine` says how the values of two live processes of one worker slot (the old and the new one
    during a rolling reload) make the slot's value; counters and histograms always add up.
    """

    key: str
    metric: str
    kind: Kind
    help: str
    label: str | None = None
    values: tuple[str, ...] = ()
    scale: float = 1.0
    buckets: tuple[float, ...] = ()  # histogram upper bounds in seconds; +Inf is implied
    combine: Combine = "sum"

    def fields(self) -> tuple[str, ...]:
        """The keys of this family's u64 values, in block order."""
        if self.kind == "histogram":
            return (*(f"{self.key}.le.{_bound_text(b)}" for b in self.buckets), f"{self.key}.le.+Inf",
                    f"{self.key}.sum_ns")  # fmt: skip
        if self.label is not None:
            return tuple(f"{self.key}.{value}" for value in self.values)
        return (self.key,)


def _bound_text(bound: float) -> str:
    """A bucket bound as Prometheus writes it (`0.005`, `1.0`)."""
    return repr(float(bound))


# Label values the issue fixes (the contract) -------------------------------------------------------

HANDSHAKE_RESULTS = ("accepted", "draining", "limit", "unauthorized", "origin", "rate_limited")
PUBLISH_SOURCES = ("client", "api", "cluster")
RESUME_RECOVERED = ("true", "false")
# Every close code wsd sends, and those a client or the network may end a connection with. Codes a
# client picks from the private ranges (3000-4999, but 4000 which wsd sends) count as "other", so
# that a client cannot grow the number of series.
CLOSE_CODES = (1000, 1001, 1002, 1003, 1005, 1006, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 4000)
OTHER_CLOSE_CODE = "other"
# Publish-to-delivery latency bounds in seconds: from well inside one loop iteration to "stuck".
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

# The worker's stats block -------------------------------------------------------------------------

WORKER_FAMILIES: tuple[Family, ...] = (
    # Internal values: ctl status, readiness and the supervisor's reload/watchdog decisions read them.
    Family("pid", "", "state", "pid of the process writing this block", combine="last"),
    Family("heartbeat_ns", "", "state", "wall clock (time.time_ns) of the worker's last tick", combine="max"),
    Family("accepting", "", "state", "1 while the worker accepts new connections", combine="max"),
    Family("draining", "", "state", "1 while the worker drains", combine="max"),
    Family("drain_remaining", "", "state", "connections a draining worker still has to move"),
    Family("max_connections", "", "state", "the worker's connection limit", combine="max"),
    # Gauges.
    Family("connections", "wsd_connections", "gauge", "Open WebSocket connections."),
    Family("subscriptions", "wsd_subscriptions", "gauge", "Subscriptions held (connection and channel pairs)."),
    Family("channels", "wsd_subscribed_channels", "gauge", "Channels with at least one subscriber on the worker."),
    Family("channel_table_used", "wsd_channel_table_used", "gauge",
           "Entries in use in the channel table of the channels the worker sequences."),
    Family("channel_table_size", "wsd_channel_table_size", "gauge", "Slots of that channel table.", combine="max"),
    Family("bus_lag_bytes", "wsd_bus_lag_bytes", "gauge",
           "Bytes of bus rings the worker has not read yet (the largest over all rings).", combine="max"),
    Family("ring_history_ms", "wsd_ring_history_seconds", "gauge",
           "Seconds of messages the worker's bus ring currently holds for resume.", scale=1e-3, combine="min"),
    # Counters.
    Family("handshakes", "wsd_handshakes_total", "counter", "WebSocket handshakes by result.",
           label="result", values=HANDSHAKE_RESULTS),
    Family("published", "wsd_messages_published_total", "counter",
           "Messages published, by where they entered the worker.", label="source", values=PUBLISH_SOURCES),
    Family("deliveries", "wsd_deliveries_total", "counter",
           "Messages delivered: one per message per subscriber connection."),
    Family("sent_bytes", "wsd_sent_bytes_total", "counter", "Bytes of WebSocket frames written to clients."),
    Family("disconnects", "wsd_disconnects_total", "counter",
           "Closed WebSocket connections by close code (1006: dropped without a close; 1005: no code).",
           label="code", values=(*map(str, CLOSE_CODES), OTHER_CLOSE_CODE)),
    Family("slow_disconnects", "wsd_slow_disconnects_total", "counter",
           "Connections cut off as slow readers (close 1013)."),
    Family("resumes", "wsd_resumes_total", "counter", "Subscriptions with `since`, by whether history covered them.",
           label="recovered", values=RESUME_RECOVERED),
    Family("bus_overruns", "wsd_bus_overruns_total", "counter",
           "Times the worker found a bus ring lapped by its writer before reading it."),
    Family("bus_lost_bytes", "wsd_bus_lost_bytes_total", "counter", "Bytes of bus ring lost to overruns."),
    Family("bus_read_bytes", "wsd_bus_read_bytes_total", "counter",
           "Bytes of bus ring entries the worker read (a wedged bus: unread bytes while this stands still)."),
    Family("bus_gaps", "wsd_bus_gaps_total", "counter", "Offsets of a channel the worker never saw."),
    Family("bus_bad_entries", "wsd_bus_bad_entries_total", "counter",
           "Bus ring entries skipped because they could not be decoded or sequenced (bad_entries)."),
    Family("publish_delivery", "wsd_publish_delivery_seconds", "histogram",
           "Seconds from a publish entering the bus to its frame being written to subscribers, per delivery.",
           buckets=LATENCY_BUCKETS),
)  # fmt: skip

WORKER_FIELDS: tuple[str, ...] = tuple(name for family in WORKER_FAMILIES for name in family.fields())
FIELD_INDEX: dict[str, int] = {name: index for index, name in enumerate(WORKER_FIELDS)}
FAMILY_OF_FIELD: dict[str, Family] = {name: family for family in WORKER_FAMILIES for name in family.fields()}
STATS_FORMAT = f"<{len(WORKER_FIELDS)}Q"
STATS_SIZE = struct.calcsize(STATS_FORMAT)  # bytes of one worker's stats block
U64_MAX = (1 << 64) - 1

# Indexes a worker's hot paths use (one lookup at import time, none per event).
_DISCONNECT_INDEX = {code: FIELD_INDEX[f"disconnects.{code}"] for code in CLOSE_CODES}
_DISCONNECT_OTHER = FIELD_INDEX[f"disconnects.{OTHER_CLOSE_CODE}"]
_LATENCY_FIRST = FIELD_INDEX[f"publish_delivery.le.{_bound_text(LATENCY_BUCKETS[0])}"]
_LATENCY_SUM = FIELD_INDEX["publish_delivery.sum_ns"]
_LATENCY_BOUNDS_NS = tuple(int(b * 1e9) for b in LATENCY_BUCKETS)


def disconnect_index(code: int | None) -> int:
    """The index of `disconnects.CODE` (`other` for a code outside CLOSE_CODES; 1005 for None)."""
    return _DISCONNECT_INDEX.get(1005 if code is None else code, _DISCONNECT_OTHER)


def latency_bucket_index(latency_ns: int) -> int:
    """The index of the latency bucket whose bound is the first >= latency (the +Inf one past all)."""
    return _LATENCY_FIRST + bisect.bisect_left(_LATENCY_BOUNDS_NS, latency_ns)


# Supervisor-level values ---------------------------------------------------------------------------

# Per worker slot, known to the supervisor (psutil and its own bookkeeping), not to the worker.
SLOT_FAMILIES: tuple[Family, ...] = (
    Family("restarts", "wsd_worker_restarts_total", "counter",
           "Times the supervisor started a worker for the slot again after it exited."),
    Family("rss_bytes", "wsd_worker_resident_memory_bytes", "gauge", "Resident memory of the slot's processes."),
    Family("cpu_seconds", "wsd_worker_cpu_seconds_total", "counter",
           "CPU time (user and system) of the slot's processes, the exited ones included."),
    Family("heartbeat_age", "wsd_worker_heartbeat_age_seconds", "gauge",
           "Seconds since the slot's worker last wrote its heartbeat (readiness fails past 3)."),
)  # fmt: skip


# A block in shared memory (or any writable buffer) -----------------------------------------------


class StatsBlock:
    """A view of one worker's stats block: `STATS_SIZE` bytes at `offset` in `buffer`.

    The worker writes (`add`, `set`, `values[i] += n`); other processes read (`snapshot`). An
    mmap, a bytearray or a memoryview all do; the offset must be 8-byte aligned.
    """

    def __init__(self, buffer, offset: int = 0):
        if offset % 8:
            raise ValueError(f"a stats block must be 8-byte aligned, offset {offset} is not")
        # A memoryview cast to unsigned 64-bit integers: item access is one native load or store.
        self.values = memoryview(buffer)[offset : offset + STATS_SIZE].cast("Q")

    def add(self, index: int, amount: int = 1) -> None:
        self.values[index] = (self.values[index] + amount) & U64_MAX

    def set(self, index: int, value: int) -> None:
        self.values[index] = int(value) & U64_MAX

    def observe_latency(self, latency_ns: int, deliveries: int = 1) -> None:
        """One message reached `deliveries` subscribers `latency_ns` after it was published."""
        if deliveries <= 0:
            return
        latency_ns = max(0, latency_ns)  # clocks of two processes may disagree by a little
        values = self.values
        bucket = latency_bucket_index(latency_ns)
        values[bucket] = (values[bucket] + deliveries) & U64_MAX
        values[_LATENCY_SUM] = (values[_LATENCY_SUM] + latency_ns * deliveries) & U64_MAX

    def count_disconnect(self, code: int | None) -> None:
        self.add(disconnect_index(code))

    def snapshot(self) -> dict[str, int]:
        return dict(zip(WORKER_FIELDS, self.values.tolist(), strict=True))

    def reset(self) -> None:
        """Zero the block (a new process on a bus slot starts from zero; see SlotTotals)."""
        for index in range(len(WORKER_FIELDS)):
            self.values[index] = 0

    def release(self) -> None:
        self.values.release()


def pack_snapshot(snapshot: Mapping[str, int]) -> bytes:
    """A snapshot as the block's bytes (unknown keys ignored, missing ones zero)."""
    return struct.pack(STATS_FORMAT, *(int(snapshot.get(name, 0)) & U64_MAX for name in WORKER_FIELDS))


def unpack_snapshot(data: bytes) -> dict[str, int]:
    return dict(zip(WORKER_FIELDS, struct.unpack_from(STATS_FORMAT, data), strict=True))


# Values of a worker slot across its processes ----------------------------------------------------


def _is_cumulative(name: str) -> bool:
    return FAMILY_OF_FIELD[name].kind in ("counter", "histogram")


def combine_snapshots(snapshots: Iterable[Mapping[str, int]]) -> dict[str, int]:
    """The values of one worker slot from the blocks of its live processes (old and new during a
    reload): counters add up, gauges combine as their family says."""
    snapshots = list(snapshots)
    combined: dict[str, int] = {}
    for name in WORKER_FIELDS:
        values = [int(s.get(name, 0)) for s in snapshots]
        if not values:
            combined[name] = 0
            continue
        rule = "sum" if _is_cumulative(name) else FAMILY_OF_FIELD[name].combine
        if rule == "sum":
            combined[name] = sum(values)
        elif rule == "max":
            combined[name] = max(values)
        elif rule == "min":
            combined[name] = min(values)
        else:  # "last": the newest process's value
            combined[name] = values[-1]
    return combined


class SlotTotals:
    """Counters of a worker slot that survive its processes, so every exported counter only grows.

    A process's block starts at zero; when the supervisor reaps a process it calls `retire` with
    the block's final values, and `totals` adds those retired counts to the live processes' values.
    Gauges come from the live processes alone.
    """

    def __init__(self) -> None:
        self.retired: dict[int, dict[str, int]] = {}

    def retire(self, slot: int, snapshot: Mapping[str, int]) -> None:
        base = self.retired.setdefault(slot, {})
        for name in WORKER_FIELDS:
            if _is_cumulative(name):
                base[name] = base.get(name, 0) + int(snapshot.get(name, 0))

    def totals(self, slot: int, live: Iterable[Mapping[str, int]]) -> dict[str, int]:
        combined = combine_snapshots(live)
        for name, value in self.retired.get(slot, {}).items():
            combined[name] += value
        return combined
