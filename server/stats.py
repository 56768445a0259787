"""The numbers of a wsd server, declared once: what each worker keeps (counters, gauges, labeled
values, the publish-to-delivery histogram) and what the supervisor adds per worker slot.

One declaration serves every reader and writer: the worker's stats block in its bus segment (a
`StatsBlock`, on its own page, `wsd.server.bus.segment`), the worker that counts events into a
`WorkerCounters`, the supervisor's area beside it (`SupervisorArea`: restarts, memory, CPU, the
counts of exited processes), `wsd ctl status` and its totals (`STATUS_FIELDS`), readiness, and the
Prometheus exporter (`wsd.server.metrics`) that turns the families into series.

Everything is a plain unsigned 64-bit integer at a fixed index, so counting an event costs one
integer add on a list (no dict, no label lookup, no lock); the worker copies the list into its
block on its stats tick (each block has one writer, and an aligned u64 store is never torn on the
machines wsd runs on). A labeled family has one value per label value, all known in advance (a
close code outside the list counts as `other`); the latency histogram has a fixed set of buckets,
counted one by one (not cumulative) and summed up by the exporter. Values that are naturally
fractional are stored as integers of a small unit and scaled on export (`scale`): milliseconds of
ring history, nanoseconds of latency sum.

Keys: an unlabeled value is the family's `key` (`deliveries`); a labeled one is `key.value`
(`handshakes.accepted`, `disconnects.1006`, `disconnects.other`); the histogram has
`key.le.BOUND` per bucket (`publish_delivery.le.0.005`, ..., `publish_delivery.le.+Inf`) and
`key.sum_ns`. `WORKER_FIELDS` is the order in the block; `FIELD_INDEX` maps a key to its index.
Adding a number is one `Family` line here and one place in the worker that counts it.
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
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

    @property
    def cumulative(self) -> bool:
        return self.kind in ("counter", "histogram")


def _bound_text(bound: float) -> str:
    """A bucket bound as Prometheus writes it (`0.005`, `1.0`)."""
    return repr(float(bound))


# Label values the issue fixes (the contract) -------------------------------------------------------

# `incomplete`: closed before its upgrade request was complete, by the client or at picows's
# handshake timeout (5 s); never answered, so neither accepted nor refused.
HANDSHAKE_RESULTS = ("accepted", "draining", "limit", "unauthorized", "origin", "rate_limited", "incomplete")
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
    Family("pid", "", "state", "pid of the process writing this block (0: the block is free)", combine="last"),
    # CLOCK_MONOTONIC is one clock for every process of a boot, and does not jump with the wall clock.
    Family("heartbeat_ns", "", "state", "monotonic clock (ns) of the worker's last stats write: its heartbeat",
           combine="max"),
    Family("slot", "", "state", "the worker slot the process serves", combine="last"),
    Family("role", "", "state", "the sequencing role the process holds, + 1 (0: none)", combine="max"),
    Family("accepting", "", "state", "1 while the worker accepts new connections", combine="max"),
    Family("draining", "", "state", "1 while the worker drains", combine="min"),
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
           "Bytes of bus rings the worker has not read yet (over all rings).", combine="max"),
    Family("ring_history_ms", "wsd_ring_history_seconds", "gauge",
           "Seconds of messages the worker's bus ring currently holds for resume.", scale=1e-3, combine="min"),
    # Counters.
    Family("handshakes", "wsd_handshakes_total", "counter", "WebSocket handshakes by result.",
           label="result", values=HANDSHAKE_RESULTS),
    Family("requests", "wsd_client_requests_total", "counter",
           "Requests received from WebSocket clients (sub, unsub, pub, and those refused as invalid)."),
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
    Family("rate_limited", "wsd_rate_limited_total", "counter",
           "Client requests refused with err rate_limited (over --client-rate)."),
    Family("flood_closes", "wsd_flood_closes_total", "counter",
           "Connections closed with 1008 for flooding (far over --client-rate)."),
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
    Family("bus_channels_forgotten", "wsd_bus_channels_forgotten_total", "counter",
           "Channels forgotten to make room in the channel table (least recently used, without subscribers; "
           "their history with them)."),
    Family("publish_delivery", "wsd_publish_delivery_seconds", "histogram",
           "Seconds from a publish entering the bus to its frame being written to subscribers, per delivery.",
           buckets=LATENCY_BUCKETS),
)  # fmt: skip

WORKER_FIELDS: tuple[str, ...] = tuple(name for family in WORKER_FAMILIES for name in family.fields())
FIELD_INDEX: dict[str, int] = {name: index for index, name in enumerate(WORKER_FIELDS)}
FAMILY_OF_FIELD: dict[str, Family] = {name: family for family in WORKER_FAMILIES for name in family.fields()}
CUMULATIVE_FIELDS: tuple[str, ...] = tuple(name for name in WORKER_FIELDS if FAMILY_OF_FIELD[name].cumulative)
STATS_FORMAT = f"<{len(WORKER_FIELDS)}Q"
STATS_SIZE = struct.calcsize(STATS_FORMAT)  # bytes of one worker's stats block
U64_MAX = (1 << 64) - 1

# Indexes a worker's hot paths use (one lookup at import time, none per event).
HANDSHAKE_INDEX = {result: FIELD_INDEX[f"handshakes.{result}"] for result in HANDSHAKE_RESULTS}
PUBLISHED_INDEX = {source: FIELD_INDEX[f"published.{source}"] for source in PUBLISH_SOURCES}
REQUESTS = FIELD_INDEX["requests"]
DELIVERIES = FIELD_INDEX["deliveries"]
SENT_BYTES = FIELD_INDEX["sent_bytes"]
SLOW_DISCONNECTS = FIELD_INDEX["slow_disconnects"]
RATE_LIMITED = FIELD_INDEX["rate_limited"]
FLOOD_CLOSES = FIELD_INDEX["flood_closes"]
RESUMES_RECOVERED = FIELD_INDEX["resumes.true"]
RESUMES_LOST = FIELD_INDEX["resumes.false"]
_DISCONNECT_INDEX = {code: FIELD_INDEX[f"disconnects.{code}"] for code in CLOSE_CODES}
_DISCONNECT_OTHER = FIELD_INDEX[f"disconnects.{OTHER_CLOSE_CODE}"]
LATENCY_FIRST = FIELD_INDEX[f"publish_delivery.le.{_bound_text(LATENCY_BUCKETS[0])}"]
LATENCY_SUM = FIELD_INDEX["publish_delivery.sum_ns"]
LATENCY_BOUNDS_NS = tuple(int(b * 1e9) for b in LATENCY_BUCKETS)


def disconnect_index(code: int | None) -> int:
    """The index of `disconnects.CODE` (`other` for a code outside CLOSE_CODES; 1005 for None)."""
    return _DISCONNECT_INDEX.get(1005 if code is None else code, _DISCONNECT_OTHER)


def latency_bucket_index(latency_ns: int) -> int:
    """The index of the latency bucket whose bound is the first >= latency (the +Inf one past all)."""
    return LATENCY_FIRST + bisect.bisect_left(LATENCY_BOUNDS_NS, latency_ns)


class WorkerCounters:
    """A worker's numbers while it runs: `counts[FIELD_INDEX[key]]`, one int per field of the block.

    Hot paths add to `counts` at an index taken once (`counts[DELIVERIES] += n`); the worker's
    stats tick sets the gauges and copies the list into its block (`StatsBlock.write`).
    """

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts = [0] * len(WORKER_FIELDS)

    def handshake(self, result: str) -> None:
        """One WebSocket handshake answered: `accepted`, or refused (`draining`, `limit`, and with
        auth `unauthorized`, `origin`, `rate_limited`); or a connection closed before its upgrade
        request was complete (`incomplete`)."""
        self.counts[HANDSHAKE_INDEX[result]] += 1

    def published(self, source: str, count: int = 1) -> None:
        """Messages put on the bus: from a `client`, the `api`, or another host (`cluster`)."""
        self.counts[PUBLISHED_INDEX[source]] += count

    def disconnect(self, code: int | None) -> None:
        self.counts[disconnect_index(code)] += 1

    def resume(self, recovered: bool) -> None:
        self.counts[RESUMES_RECOVERED if recovered else RESUMES_LOST] += 1

    def observe_latency(self, latency_ns: int, deliveries: int = 1) -> None:
        """One message reached `deliveries` subscribers `latency_ns` after it was published."""
        if deliveries <= 0:
            return
        latency_ns = max(0, latency_ns)  # clocks of two processes may disagree by a little
        counts = self.counts
        counts[LATENCY_FIRST + bisect.bisect_left(LATENCY_BOUNDS_NS, latency_ns)] += deliveries
        counts[LATENCY_SUM] += latency_ns * deliveries

    def set(self, key: str, value: int) -> None:
        self.counts[FIELD_INDEX[key]] = int(value)

    def get(self, key: str) -> int:
        return self.counts[FIELD_INDEX[key]]


# The fields of `wsd ctl status` -------------------------------------------------------------------


@dataclass(frozen=True)
class StatusField:
    """One number of a worker's `ctl status` entry: the sum of some stats-block keys.

    The names are a contract with scripts (`ctl --json status`): extend, never rename.
    """

    name: str
    keys: tuple[str, ...]
    help: str
    total: bool = False  # summed over the workers into the server's totals
    flag: bool = False  # shown as true/false


_REFUSED = tuple(f"handshakes.{result}" for result in HANDSHAKE_RESULTS if result not in ("accepted", "incomplete"))

STATUS_FIELDS: tuple[StatusField, ...] = (
    StatusField("connections", ("connections",), "open WebSocket connections", total=True),
    StatusField("max_connections", ("max_connections",), "connections this worker accepts before it stops"),
    StatusField("accepting", ("accepting",), "the worker accepts new connections", flag=True),
    StatusField("channels", ("channels",), "channels with local subscribers", total=True),
    StatusField("subscriptions", ("subscriptions",), "connection and channel pairs", total=True),
    StatusField("msgs_in", ("requests", "published.api"), "client requests and API publishes received",
                total=True),
    StatusField("msgs_out", ("deliveries",), "deliveries: one per message per subscriber connection", total=True),
    StatusField("sent_bytes", ("sent_bytes",), "bytes of WebSocket frames written to clients", total=True),
    StatusField("overruns", ("bus_overruns",), "times this worker fell a whole ring behind a writer", total=True),
    StatusField("lost_bytes", ("bus_lost_bytes",), "ring bytes skipped by overruns", total=True),
    StatusField("gaps", ("bus_gaps",), "offsets missing from a channel's sequence", total=True),
    StatusField("slow_disconnects", ("slow_disconnects",), "clients cut off for not reading (close 1013)",
                total=True),
    StatusField("rate_limited", ("rate_limited",), "requests refused rate_limited", total=True),
    StatusField("flood_closes", ("flood_closes",), "connections closed 1008 for flooding", total=True),
    StatusField("bus_lag", ("bus_lag_bytes",), "bytes of ring this worker has not read yet"),
    StatusField("draining", ("draining",), "the worker drains", flag=True),
    StatusField("drain_remaining", ("drain_remaining",), "clients still connected to a draining worker", total=True),
    StatusField("handshakes_accepted", ("handshakes.accepted",), "WebSocket handshakes accepted", total=True),
    StatusField("handshakes_refused", _REFUSED, "handshakes refused (draining, limit, auth, origin, rate)",
                total=True),
    StatusField("handshakes_incomplete", ("handshakes.incomplete",), "connections closed before a complete "
                "upgrade request (by the client, or at the 5 s handshake timeout)", total=True),
    StatusField("bad_entries", ("bus_bad_entries",), "ring entries that could not be handled, skipped",
                total=True),
    StatusField("channels_forgotten", ("bus_channels_forgotten",), "channels forgotten to make room in the "
                "channel table", total=True),
)  # fmt: skip

STATUS_NAMES: tuple[str, ...] = tuple(f.name for f in STATUS_FIELDS)
TOTALS: tuple[str, ...] = tuple(f.name for f in STATUS_FIELDS if f.total)


def status_values(stats: Mapping[str, int]) -> dict[str, int | bool]:
    """A worker's `ctl status` numbers from its stats-block snapshot."""
    values: dict[str, int | bool] = {}
    for status_field in STATUS_FIELDS:
        value = sum(int(stats.get(key, 0)) for key in status_field.keys)
        values[status_field.name] = bool(value) if status_field.flag else value
    return values


# A block in shared memory (or any writable buffer) -----------------------------------------------


class U64View:
    """`count` u64 values at `offset` in `buffer` (8-byte aligned), by index."""

    def __init__(self, buffer, offset: int, count: int):
        if offset % 8:
            raise ValueError(f"a stats block must be 8-byte aligned, offset {offset} is not")
        # A memoryview cast to unsigned 64-bit integers: item access is one native load or store.
        self.values = memoryview(buffer)[offset : offset + 8 * count].cast("Q")

    def add(self, index: int, amount: int = 1) -> None:
        self.values[index] = (self.values[index] + amount) & U64_MAX

    def set(self, index: int, value: int) -> None:
        self.values[index] = int(value) & U64_MAX

    def write(self, values: Iterable[int]) -> None:
        """Store every value, one aligned u64 store each (a reader never sees a torn number)."""
        target = self.values
        for index, value in enumerate(values):
            target[index] = value & U64_MAX

    def reset(self) -> None:
        for index in range(len(self.values)):
            self.values[index] = 0

    def release(self) -> None:
        self.values.release()


class StatsBlock(U64View):
    """A view of one worker's stats block: `STATS_SIZE` bytes at `offset` in `buffer`.

    The worker writes (`write(counters.counts)` on its tick); other processes read (`snapshot`).
    An mmap, a bytearray or a memoryview all do; the offset must be 8-byte aligned.
    """

    def __init__(self, buffer, offset: int = 0):
        super().__init__(buffer, offset, len(WORKER_FIELDS))

    def observe_latency(self, latency_ns: int, deliveries: int = 1) -> None:
        """One message reached `deliveries` subscribers `latency_ns` after it was published."""
        if deliveries <= 0:
            return
        latency_ns = max(0, latency_ns)
        self.add(latency_bucket_index(latency_ns), deliveries)
        self.add(LATENCY_SUM, latency_ns * deliveries)

    def count_disconnect(self, code: int | None) -> None:
        self.add(disconnect_index(code))

    def snapshot(self) -> dict[str, int]:
        return dict(zip(WORKER_FIELDS, self.values.tolist(), strict=True))


def pack_snapshot(snapshot: Mapping[str, int]) -> bytes:
    """A snapshot as the block's bytes (unknown keys ignored, missing ones zero)."""
    return struct.pack(STATS_FORMAT, *(int(snapshot.get(name, 0)) & U64_MAX for name in WORKER_FIELDS))


def unpack_snapshot(data: bytes) -> dict[str, int]:
    return dict(zip(WORKER_FIELDS, struct.unpack_from(STATS_FORMAT, data), strict=True))


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

# The supervisor's area of a segment (its own page, written by the supervisor only). Segment k holds
# worker slot k's values; segment 0 also the server's (`generation`, `log_level`, `reloads`...).
#   generation: a sequence lock. The supervisor makes it odd, moves an exited process's counts from
#     its block into `retired.*` of its slot and zeroes the block, then makes it even; a reader that
#     sees it odd or changed reads again, so no scrape counts an exited process twice or not at all.
#   log_level: the level every process should log at (logging's numbers: 10 debug ... 40 error);
#     workers apply a change on their stats tick.
SUPERVISOR_FIELDS: tuple[str, ...] = (
    "generation", "log_level", "reloads", "start_time_ms",
    "restarts", "rss_bytes", "cpu_ms",
    *(f"retired.{name}" for name in CUMULATIVE_FIELDS),
)  # fmt: skip
SUPERVISOR_INDEX: dict[str, int] = {name: index for index, name in enumerate(SUPERVISOR_FIELDS)}
SUPERVISOR_SIZE = 8 * len(SUPERVISOR_FIELDS)


class SupervisorArea(U64View):
    """The supervisor's values of one segment (see SUPERVISOR_FIELDS)."""

    def __init__(self, buffer, offset: int = 0):
        super().__init__(buffer, offset, len(SUPERVISOR_FIELDS))

    def get(self, key: str) -> int:
        return self.values[SUPERVISOR_INDEX[key]]

    def put(self, key: str, value: int) -> None:
        self.set(SUPERVISOR_INDEX[key], value)

    def snapshot(self) -> dict[str, int]:
        return dict(zip(SUPERVISOR_FIELDS, self.values.tolist(), strict=True))

    def retire(self, snapshot: Mapping[str, int]) -> None:
        """Add an exited process's counts to its slot's retired counts."""
        for name in CUMULATIVE_FIELDS:
            self.add(SUPERVISOR_INDEX[f"retired.{name}"], int(snapshot.get(name, 0)))


def retired_counts(area: Mapping[str, int]) -> dict[str, int]:
    """The retired counts of a supervisor-area snapshot, by stats-block key."""
    return {name: int(area.get(f"retired.{name}", 0)) for name in CUMULATIVE_FIELDS}


# Values of a worker slot across its processes ----------------------------------------------------


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
        family = FAMILY_OF_FIELD[name]
        rule = "sum" if family.cumulative else family.combine
        if rule == "sum":
            combined[name] = sum(values)
        elif rule == "max":
            combined[name] = max(values)
        elif rule == "min":
            combined[name] = min(values)
        else:  # "last": the newest process's value
            combined[name] = values[-1]
    return combined


def slot_totals(live: Iterable[Mapping[str, int]], retired: Mapping[str, int]) -> dict[str, int]:
    """A slot's values: its live processes' combined, plus the counts of its exited ones, so that
    every exported counter only grows across respawns and reloads."""
    combined = combine_snapshots(live)
    for name, value in retired.items():
        combined[name] += value
    return combined


class SlotTotals:
    """Retired counts kept in process memory (for tests and tools that have no supervisor area)."""

    def __init__(self) -> None:
        self.retired: dict[int, dict[str, int]] = {}

    def retire(self, slot: int, snapshot: Mapping[str, int]) -> None:
        base = self.retired.setdefault(slot, dict.fromkeys(CUMULATIVE_FIELDS, 0))
        for name in CUMULATIVE_FIELDS:
            base[name] += int(snapshot.get(name, 0))

    def totals(self, slot: int, live: Iterable[Mapping[str, int]]) -> dict[str, int]:
        return slot_totals(live, self.retired.get(slot, {}))


# What one scrape shows -----------------------------------------------------------------------------
# (Here rather than in wsd.server.metrics, so that readiness and the workers' start-up do not import
# prometheus_client: the exporter is imported at the first scrape.)


@dataclass(frozen=True)
class ShardState:
    """One Redis of `--cluster`, as the cluster bus reports it."""

    url: str  # without the password
    up: bool
    round_trip_s: float | None = None  # the last publish round trip; None before the first
    subscriptions: int = 0  # wsd channels this host holds a Redis subscription for
    catch_ups: int = 0  # times the host caught a channel up from the stream after an outage


@dataclass
class ServerSnapshot:
    """Everything one scrape shows.

    `workers`: per worker slot, the slot's stats (`SlotTotals.totals`: retired and live processes).
    `slots`: per worker slot, supervisor-level values by `SLOT_FAMILIES` key (`restarts`,
    `rss_bytes`, `cpu_seconds`); `heartbeat_age` is derived from the stats' `heartbeat_ns`.
    `cluster`: the shards with `--cluster`, None without.
    """

    version: str
    workers: Mapping[int, Mapping[str, int]] = field(default_factory=dict)
    slots: Mapping[int, Mapping[str, float]] = field(default_factory=dict)
    ready: bool = False
    reloads: int = 0
    start_time_s: float = 0.0  # Unix time the supervisor started
    cluster: Sequence[ShardState] | None = None
    now_ns: int | None = None  # the heartbeats' clock at the scrape (tests pass one); time.monotonic_ns()
