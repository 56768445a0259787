"""wsd.server.readiness: each /readyz check fails on its own, says why, and recovers."""

from __future__ import annotations

import json

from wsd.server.metrics import ShardState
from wsd.server.readiness import BusProgress, Readiness, check

NOW = 1_800_000_000 * 10**9
S = 10**9


def healthy(slot_count: int = 2) -> dict[int, dict[str, int]]:
    stats = {"heartbeat_ns": NOW - S // 2, "bus_lag_bytes": 0, "bus_read_bytes": 1000}
    return {slot: dict(stats) for slot in range(slot_count)}


def test_a_serving_server_is_ready():
    readiness = check(healthy(), {0: 0, 1: 1}, NOW, cluster=[ShardState("redis://r:6379", True)])
    assert readiness == Readiness(True, [])
    assert readiness.http() == (200, b'{"ready":true}')


def test_an_old_or_missing_heartbeat_fails_with_its_age():
    workers = healthy(3)
    workers[1]["heartbeat_ns"] = NOW - int(4.2 * S)  # SIGSTOPped
    workers[2]["heartbeat_ns"] = 0  # never started
    readiness = check(workers, {0: 0, 1: 1, 2: 2}, NOW)
    assert not readiness.ready
    assert readiness.failing == ["worker 1: no heartbeat for 4.2 s", "worker 2: no heartbeat yet"]
    status, body = readiness.http()
    assert status == 503
    assert json.loads(body) == {"ready": False, "failing": readiness.failing}
    workers[1]["heartbeat_ns"] = NOW - 3 * S  # exactly at the limit is still fresh
    workers[2]["heartbeat_ns"] = NOW
    assert check(workers, {0: 0, 1: 1, 2: 2}, NOW).ready


def test_a_role_without_holder_fails():
    readiness = check(healthy(), {0: 0, 1: None}, NOW)
    assert readiness.failing == ["role 1: no worker sequences it"]


def test_an_unreachable_redis_fails():
    shards = [ShardState("redis://a:6379", True), ShardState("redis://b:6379", False)]
    assert check(healthy(), {0: 0}, NOW, cluster=shards).failing == ["cluster: redis://b:6379 unreachable"]


def test_a_wedged_bus_is_told_from_a_busy_one():
    progress = BusProgress()
    workers = healthy(1)
    workers[0]["bus_lag_bytes"] = 5000
    for second in range(10):  # busy: bytes waiting, but the reader moves
        workers[0]["bus_read_bytes"] += 100
        assert check(workers, {0: 0}, NOW, progress=progress, monotonic_ns=second * S).ready
    # The reader last moved at 9 s and stops while bytes wait: 503 once it has stood still for 3 s.
    assert check(workers, {0: 0}, NOW, progress=progress, monotonic_ns=10 * S).ready
    assert check(workers, {0: 0}, NOW, progress=progress, monotonic_ns=int(11.9 * S)).ready
    readiness = check(workers, {0: 0}, NOW, progress=progress, monotonic_ns=int(12.5 * S))
    assert readiness.failing == ["worker 0: bus wedged, 5000 bytes unread for 3.5 s"]
    # Idle is not wedged: nothing to read.
    workers[0]["bus_lag_bytes"] = 0
    assert check(workers, {0: 0}, NOW, progress=progress, monotonic_ns=20 * S).ready
    workers[0]["bus_lag_bytes"] = 10
    assert check(workers, {0: 0}, NOW, progress=progress, monotonic_ns=22 * S).ready
    workers[0]["bus_read_bytes"] += 10
    assert check(workers, {0: 0}, NOW, progress=progress, monotonic_ns=30 * S).ready  # it moved again
