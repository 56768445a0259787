"""The whole server as any of its processes reads it from shared memory: each worker slot's numbers
(the stats blocks of its live processes plus the counts of its exited ones), the supervisor's
values, who holds each role, and from those `/readyz` and the `/metrics` snapshot.

Every worker maps every segment, so the worker that answers `GET /metrics` or `/readyz` reads
them all itself: no request to the other workers, no answer to wait for. The supervisor moves an
exited process's counts into its slot's retired counts under a sequence lock (segment 0's
`generation`, wsd.server.stats), which `read_view` honours, so no scrape counts them twice or not
at all.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from wsd.server.bus.segment import Segment
from wsd.server.readiness import BusProgress, Readiness, RoleWatch, check
from wsd.server.stats import ServerSnapshot, ShardState, retired_counts, slot_totals

# A reader retries while the supervisor moves counts (microseconds); past this it takes what it
# read rather than stall its event loop (a supervisor stopped half way must not hang the workers).
_SEQLOCK_PATIENCE_S = 0.01


@dataclass
class ServerView:
    workers: int
    # (bus slot, stats) of every stats block in use (pid != 0): the live processes
    processes: list[tuple[int, dict[str, int]]]
    # worker slot -> the supervisor's values for it (segment 0 also has the server's)
    supervisor: list[dict[str, int]]
    monotonic_ns: int = field(default_factory=time.monotonic_ns)

    def processes_of(self, slot: int) -> list[dict[str, int]]:
        return [stats for _bus_slot, stats in self.processes if stats["slot"] == slot]

    def slot_totals(self, slot: int) -> dict[str, int]:
        """The slot's numbers: live processes combined, plus the counts of the exited ones."""
        return slot_totals(self.processes_of(slot), retired_counts(self.supervisor[slot]))

    def serving_stats(self, slot: int) -> dict[str, int]:
        """The stats readiness judges a slot by: its freshest process that is not draining (the
        new process during a reload), else its freshest one; {} when it has none."""
        processes = self.processes_of(slot)
        serving = [stats for stats in processes if not stats["draining"]] or processes
        return max(serving, key=lambda stats: stats["heartbeat_ns"], default={})

    def role_holders(self) -> dict[int, int | None]:
        """Per role, the bus slot of a live process that sequences it (None: no one)."""
        holders: dict[int, int | None] = dict.fromkeys(range(self.workers))
        for bus_slot, stats in self.processes:
            role = stats["role"] - 1
            if 0 <= role < self.workers:
                holders[role] = bus_slot
        return holders


def read_view(segments: Sequence[Segment], workers: int) -> ServerView:
    """Read every segment's stats block and the supervisor's areas consistently (see the module doc)."""
    lock = segments[0].supervisor
    deadline = time.monotonic() + _SEQLOCK_PATIENCE_S
    while True:
        generation = lock.get("generation")
        blocks = [(bus_slot, segment.read_stats()) for bus_slot, segment in enumerate(segments)]
        areas = [segments[slot].supervisor.snapshot() for slot in range(workers)]
        if (generation % 2 == 0 and lock.get("generation") == generation) or time.monotonic() > deadline:
            break
    return ServerView(workers, [(bus_slot, stats) for bus_slot, stats in blocks if stats["pid"]], areas)


class ServerObserver:
    """What one worker keeps to answer `/readyz` and `/metrics`: the state readiness needs between
    checks. `observe()` runs on the worker's stats tick, so a wedged bus or an unheld role is
    seen even when nobody asks for a while."""

    def __init__(self, segments: Sequence[Segment], workers: int, version: str | Callable[[], str]):
        self.segments = segments
        self.workers = workers
        # The installed version, or how to find it (called on the first metrics snapshot).
        self._version = version
        self.progress = BusProgress()
        self.role_watch = RoleWatch()
        # With --cluster: a callable returning the shards' state (wsd.server.stats.ShardState)
        # for the Redis check and the cluster families. The cluster wiring (issue 11) sets it.
        self.cluster_state: Callable[[], Sequence[ShardState]] | None = None

    @property
    def version(self) -> str:
        if callable(self._version):
            self._version = self._version()
        return self._version

    def view(self) -> ServerView:
        return read_view(self.segments, self.workers)

    def readiness(self, view: ServerView | None = None) -> Readiness:
        view = self.view() if view is None else view
        serving = {slot: view.serving_stats(slot) for slot in range(self.workers)}
        cluster = self.cluster_state() if self.cluster_state is not None else None
        now_ns = time.monotonic_ns()
        return check(serving, view.role_holders(), now_ns, progress=self.progress, monotonic_ns=now_ns,
                     cluster=cluster, role_watch=self.role_watch)  # fmt: skip

    def observe(self) -> None:
        self.readiness()

    def readyz(self) -> tuple[int, bytes]:
        return self.readiness().http()

    def metrics_snapshot(self) -> ServerSnapshot:
        view = self.view()
        server = view.supervisor[0]
        slots = {}
        for slot in range(self.workers):
            area = view.supervisor[slot]
            slots[slot] = {"restarts": area["restarts"], "rss_bytes": area["rss_bytes"],
                           "cpu_seconds": area["cpu_ms"] / 1000.0}  # fmt: skip
        return ServerSnapshot(
            version=self.version,
            workers={slot: view.slot_totals(slot) for slot in range(self.workers)},
            slots=slots,
            ready=self.readiness(view).ready,
            reloads=server["reloads"],
            start_time_s=server["start_time_ms"] / 1000.0,
            cluster=list(self.cluster_state()) if self.cluster_state is not None else None,
            now_ns=view.monotonic_ns,
        )
