"""Issue 12 with `--cluster`: `/readyz` turns 503 when Redis is killed and 200 once it is back, and
`/metrics` has the cluster families (wsd_cluster_up and the per-shard ones), against a real Redis."""

from __future__ import annotations

import json
import time

from harness.wsd_process import WsdProcess
from tests.cluster.redis_servers import RedisServer
from tests.operations.helpers import NO_PINGS, http, scrape, wait_for


def readyz(server: WsdProcess) -> tuple[int, dict]:
    status, _, body = http(f"{server.api_url}/readyz")
    return status, json.loads(body)


def test_readyz_fails_while_redis_is_down_and_the_cluster_families_say_so(redis_factory, tmp_path):
    redis: RedisServer = redis_factory()
    wsd = WsdProcess(tmp_path / "wsd", workers=2, flags=["--cluster", redis.url, *NO_PINGS])
    wsd.start()
    try:
        wait_for(lambda: readyz(wsd) == (200, {"ready": True}), timeout=10)
        shard = f"{redis.url}/0"  # as wsd names it (without a password, with the database)
        metrics = scrape(wsd)
        assert metrics.value("wsd_cluster_up") == 1
        assert metrics.value("wsd_cluster_shard_up", shard=shard) == 1
        assert "wsd_cluster_round_trip_seconds" in metrics.families
        redis.kill()
        killed_at = time.monotonic()
        status, body = wait_for(lambda: (a := readyz(wsd))[0] == 503 and a, timeout=10)
        assert time.monotonic() - killed_at < 5
        assert f"cluster: {shard} unreachable" in body["failing"], body
        assert scrape(wsd).value("wsd_cluster_up") == 0
        redis.start()  # the same port, empty
        wait_for(lambda: readyz(wsd) == (200, {"ready": True}), timeout=20)
        # /readyz is the answering worker's view of Redis, the metric the whole server's: the other
        # worker may reconnect a moment later (CI saw it 0.1 s after the restart).
        wait_for(lambda: scrape(wsd).value("wsd_cluster_up") == 1, timeout=10)
    finally:
        wsd.kill()
