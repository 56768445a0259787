"""`/readyz`: whether the whole server can serve, decided from values every process can read (the
workers' stats blocks, the role holders, the cluster state), without I/O.

Ready means: every worker slot has a heartbeat no older than 3 s (and is not draining), every
sequencing role has a holder, no worker's bus is wedged (unread bytes waiting while its read
counter has not moved for 3 s), and with `--cluster` every Redis answers. Anything else is 503 with
the list of what fails: `{"ready": false, "failing": ["worker 1: no heartbeat for 4.2 s", ...]}`.

A role passes from one process to the next during a reload or after a respawn; a role without a
holder fails only after ROLE_GRACE_S of it (`RoleWatch`), so a hand-over does not take the server
out of rotation. The heartbeats are CLOCK_MONOTONIC (time.monotonic_ns()), as the workers write
them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import orjson

from wsd.server.stats import ShardState

HEARTBEAT_MAX_AGE_S = 3.0
WEDGED_AFTER_S = 3.0
ROLE_GRACE_S = 1.0


@dataclass
class Readiness:
    ready: bool
    failing: list[str] = field(default_factory=list)

    def http(self) -> tuple[int, bytes]:
        """Status code and JSON body of the `/readyz` answer."""
        body = {"ready": True} if self.ready else {"ready": False, "failing": self.failing}
        return (200 if self.ready else 503), orjson.dumps(body)


class BusProgress:
    """Remembers when each worker's bus reader last moved, to tell a wedged bus from a busy one.

    `observe` takes the worker's unread bytes and its bytes-read counter (`bus_lag_bytes`,
    `bus_read_bytes` of its stats block) at each check.
    """

    def __init__(self) -> None:
        self.last: dict[int, tuple[int, int]] = {}  # slot -> (bytes read, monotonic ns it last changed)

    def observe(self, slot: int, lag_bytes: int, read_bytes: int, now_ns: int) -> float | None:
        """Seconds the reader has been stuck with bytes waiting, or None when it is not stuck."""
        previous = self.last.get(slot)
        if previous is None or previous[0] != read_bytes or lag_bytes == 0:
            self.last[slot] = (read_bytes, now_ns)
            return None
        stuck_s = (now_ns - previous[1]) / 1e9
        return stuck_s if stuck_s >= WEDGED_AFTER_S else None


class RoleWatch:
    """Remembers since when each role has had no holder (see ROLE_GRACE_S)."""

    def __init__(self, grace_s: float = ROLE_GRACE_S) -> None:
        self.grace_ns = int(grace_s * 1e9)
        self.unheld_since: dict[int, int] = {}

    def failing(self, role: int, held: bool, now_ns: int) -> bool:
        if held:
            self.unheld_since.pop(role, None)
            return False
        since = self.unheld_since.setdefault(role, now_ns)
        return now_ns - since >= self.grace_ns


def check(
    workers: Mapping[int, Mapping[str, int]],
    roles: Mapping[int, int | None],
    now_ns: int,
    *,
    progress: BusProgress | None = None,
    monotonic_ns: int | None = None,
    cluster: Sequence[ShardState] | None = None,
    role_watch: RoleWatch | None = None,
) -> Readiness:
    """Readiness of the server.

    `workers`: per worker slot, the stats of the process serving it (heartbeat_ns, draining;
    bus_lag_bytes and bus_read_bytes when `progress` is given). `roles`: per sequencing role, the
    bus slot holding it (None: nobody). `now_ns`: the heartbeats' clock. `progress` and
    `role_watch` keep state between checks (one each per process serving /readyz), with
    `monotonic_ns` as their clock. `cluster`: the Redis shards with `--cluster`.
    """
    failing = []
    clock_ns = now_ns if monotonic_ns is None else monotonic_ns
    for slot in sorted(workers):
        stats = workers[slot]
        heartbeat = int(stats.get("heartbeat_ns", 0))
        if not heartbeat:
            failing.append(f"worker {slot}: no heartbeat yet")
        else:
            age_s = (now_ns - heartbeat) / 1e9
            if age_s > HEARTBEAT_MAX_AGE_S:
                failing.append(f"worker {slot}: no heartbeat for {age_s:.1f} s")
            elif stats.get("draining"):
                failing.append(f"worker {slot}: draining")
        if progress is not None:
            stuck_s = progress.observe(slot, int(stats.get("bus_lag_bytes", 0)), int(stats.get("bus_read_bytes", 0)),
                                       clock_ns)  # fmt: skip
            if stuck_s is not None:
                lag = int(stats.get("bus_lag_bytes", 0))
                failing.append(f"worker {slot}: bus wedged, {lag} bytes unread for {stuck_s:.1f} s")
    for role in sorted(roles):
        unheld = roles[role] is None
        if role_watch is not None:
            unheld = role_watch.failing(role, not unheld, clock_ns)
        if unheld:
            failing.append(f"role {role}: no worker sequences it")
    for shard in cluster or ():
        if not shard.up:
            failing.append(f"cluster: {shard.url} unreachable")
    return Readiness(not failing, failing)
