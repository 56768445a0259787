"""The stats layout (wsd.server.stats) and the Prometheus exposition (wsd.server.metrics),
checked by parsing the output with prometheus_client's own parsers."""

from __future__ import annotations

import math
import mmap
import os
import subprocess
import sys

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from wsd.server import stats as schema
from wsd.server.metrics import ServerSnapshot, ShardState, render

NOW_NS = 1_800_000_000 * 10**9

# The contract: family name -> (type, label names besides `worker`, label values).
CONTRACT = {
    "wsd_connections": ("gauge", {}),
    "wsd_handshakes": (
        "counter",
        # `incomplete` extends the set (closed before a whole upgrade request).
        {"result": {"accepted", "draining", "limit", "unauthorized", "origin", "rate_limited", "incomplete"}},
    ),
    "wsd_messages_published": ("counter", {"source": {"client", "api", "cluster"}}),
    "wsd_deliveries": ("counter", {}),
    "wsd_disconnects": ("counter", {"code": None}),  # numbers; checked below
    "wsd_slow_disconnects": ("counter", {}),
    "wsd_subscriptions": ("gauge", {}),
    "wsd_channel_table_used": ("gauge", {}),
    "wsd_resumes": ("counter", {"recovered": {"true", "false"}}),
    "wsd_publish_delivery_seconds": ("histogram", {}),
    "wsd_worker_restarts": ("counter", {}),
}
# The other families the issue lists (bytes out, table size, bus lag, overruns, ring horizon,
# worker RSS/CPU), with the names chosen for them.
OTHERS = {
    "wsd_sent_bytes": "counter",
    "wsd_channel_table_size": "gauge",
    "wsd_bus_lag_bytes": "gauge",
    "wsd_bus_overruns": "counter",
    "wsd_ring_history_seconds": "gauge",
    "wsd_worker_resident_memory_bytes": "gauge",
    "wsd_worker_cpu_seconds": "counter",
}


def parse(snapshot: ServerSnapshot) -> dict:
    text, content_type = render(snapshot)
    assert content_type.startswith("text/plain; version=0.0.4")
    return {family.name: family for family in text_string_to_metric_families(text.decode())}


def two_idle_workers(**kwargs) -> ServerSnapshot:
    return ServerSnapshot(version="1.2.3", workers={0: {}, 1: {}}, now_ns=NOW_NS, **kwargs)


def sample_value(family, name: str, **labels) -> float:
    matches = [s.value for s in family.samples if s.name == name and s.labels == labels]
    assert len(matches) == 1, (name, labels, [s for s in family.samples if s.name == name])
    return matches[0]


# -- the exposition -------------------------------------------------------------------------------


def test_every_contract_family_is_exported_zero_valued_with_its_labels_from_the_start():
    families = parse(two_idle_workers())
    for name, (kind, labels) in CONTRACT.items():
        assert name in families, name
        family = families[name]
        assert family.type == kind, name
        samples = [s for s in family.samples if not s.name.endswith(("_bucket", "_sum", "_count"))] or family.samples
        assert samples, name
        for sample in family.samples:
            assert set(sample.labels) - {"le"} == {"worker", *labels}, (name, sample)
            assert sample.labels["worker"] in ("0", "1")
            assert sample.value == 0, (name, sample)
        for label, values in labels.items():
            seen = {s.labels[label] for s in family.samples}
            if values is not None:
                assert seen == values, (name, label)
        for worker in ("0", "1"):
            assert any(s.labels["worker"] == worker for s in family.samples), (name, worker)
    for name, kind in OTHERS.items():
        assert families[name].type == kind, name


def test_disconnect_codes_are_numbers_declared_in_advance_plus_other():
    family = parse(two_idle_workers())["wsd_disconnects"]
    codes = {s.labels["code"] for s in family.samples if s.labels["worker"] == "0"}
    assert codes == {str(code) for code in schema.CLOSE_CODES} | {"other"}
    assert {"1000", "1001", "1006", "1008", "1009", "1011", "1012", "1013", "4000"} <= codes
    assert all(code.isdigit() for code in codes - {"other"})


def test_build_info_carries_the_version_and_server_families_are_present():
    families = parse(two_idle_workers(ready=True, reloads=2, start_time_s=1_700_000_000.5))
    build = families["wsd_build_info"]
    assert build.type == "gauge"
    assert [(s.labels["version"], s.value) for s in build.samples] == [("1.2.3", 1.0)]
    assert sample_value(families["wsd_ready"], "wsd_ready") == 1.0
    assert sample_value(families["wsd_reloads"], "wsd_reloads_total") == 2
    assert sample_value(families["wsd_start_time_seconds"], "wsd_start_time_seconds") == 1_700_000_000.5


def test_cluster_families_appear_only_with_a_cluster():
    assert not any(name.startswith("wsd_cluster") for name in parse(two_idle_workers()))
    shards = [ShardState("redis://10.0.0.1:6379", up=True, round_trip_s=0.0015, subscriptions=7, catch_ups=1),
              ShardState("redis://10.0.0.2:6379", up=False)]  # fmt: skip
    families = parse(two_idle_workers(cluster=shards))
    assert families["wsd_cluster_up"].type == "gauge"
    assert sample_value(families["wsd_cluster_up"], "wsd_cluster_up") == 0.0  # one shard is down
    up = families["wsd_cluster_shard_up"]
    assert sample_value(up, "wsd_cluster_shard_up", shard="redis://10.0.0.1:6379") == 1.0
    assert sample_value(up, "wsd_cluster_shard_up", shard="redis://10.0.0.2:6379") == 0.0
    rtt = families["wsd_cluster_round_trip_seconds"]
    assert sample_value(rtt, "wsd_cluster_round_trip_seconds", shard="redis://10.0.0.1:6379") == 0.0015
    assert math.isnan(sample_value(rtt, "wsd_cluster_round_trip_seconds", shard="redis://10.0.0.2:6379"))
    assert sample_value(families["wsd_cluster_subscriptions"], "wsd_cluster_subscriptions",
                        shard="redis://10.0.0.1:6379") == 7  # fmt: skip
    all_up = parse(two_idle_workers(cluster=shards[:1]))
    assert sample_value(all_up["wsd_cluster_up"], "wsd_cluster_up") == 1.0


def test_values_kept_in_a_stats_block_reach_their_series():
    buffer = bytearray(schema.STATS_SIZE)
    block = schema.StatsBlock(buffer)
    index = schema.FIELD_INDEX
    block.set(index["connections"], 42)
    block.add(index["handshakes.accepted"], 50)
    block.add(index["handshakes.limit"], 3)
    block.add(index["published.api"], 7)
    block.add(index["deliveries"], 700)
    block.add(index["sent_bytes"], 12345)
    block.count_disconnect(1006)
    block.count_disconnect(1006)
    block.count_disconnect(1013)
    block.count_disconnect(3001)  # a client's private code: "other"
    block.count_disconnect(None)  # a close frame without a code
    block.add(index["slow_disconnects"])
    block.add(index["resumes.false"], 2)
    block.set(index["ring_history_ms"], 2500)
    block.set(index["heartbeat_ns"], NOW_NS - 1_500_000_000)
    families = parse(ServerSnapshot("1.2.3", workers={0: block.snapshot(), 1: {}}, now_ns=NOW_NS,
                                    slots={0: {"restarts": 4, "rss_bytes": 50e6, "cpu_seconds": 1.25}}))  # fmt: skip

    def value(family: str, sample: str | None = None, **labels) -> float:
        return sample_value(families[family], sample or family, worker="0", **labels)

    assert value("wsd_connections") == 42
    assert value("wsd_handshakes", "wsd_handshakes_total", result="accepted") == 50
    assert value("wsd_handshakes", "wsd_handshakes_total", result="limit") == 3
    assert value("wsd_handshakes", "wsd_handshakes_total", result="origin") == 0
    assert value("wsd_messages_published", "wsd_messages_published_total", source="api") == 7
    assert value("wsd_deliveries", "wsd_deliveries_total") == 700
    assert value("wsd_sent_bytes", "wsd_sent_bytes_total") == 12345
    assert value("wsd_disconnects", "wsd_disconnects_total", code="1006") == 2
    assert value("wsd_disconnects", "wsd_disconnects_total", code="1013") == 1
    assert value("wsd_disconnects", "wsd_disconnects_total", code="other") == 1
    assert value("wsd_disconnects", "wsd_disconnects_total", code="1005") == 1
    assert value("wsd_slow_disconnects", "wsd_slow_disconnects_total") == 1
    assert value("wsd_resumes", "wsd_resumes_total", recovered="false") == 2
    assert value("wsd_ring_history_seconds") == 2.5
    assert value("wsd_worker_restarts", "wsd_worker_restarts_total") == 4
    assert value("wsd_worker_resident_memory_bytes") == 50e6
    assert value("wsd_worker_cpu_seconds", "wsd_worker_cpu_seconds_total") == 1.25
    assert value("wsd_worker_heartbeat_age_seconds") == 1.5
    # Worker 1 has values too, all zero; a slot that never wrote a heartbeat is infinitely old.
    assert sample_value(families["wsd_connections"], "wsd_connections", worker="1") == 0
    assert sample_value(families["wsd_worker_heartbeat_age_seconds"], "wsd_worker_heartbeat_age_seconds",
                        worker="1") == math.inf  # fmt: skip


def test_latency_histogram_buckets_are_cumulative_with_sum_and_count():
    block = schema.StatsBlock(bytearray(schema.STATS_SIZE))
    block.observe_latency(300_000, deliveries=10)  # 0.3 ms to 10 subscribers
    block.observe_latency(5_000_000, deliveries=2)  # exactly 5 ms: counted in le=0.005 (bounds are inclusive)
    block.observe_latency(20_000_000_000)  # 20 s: only +Inf
    block.observe_latency(-1_000)  # another process's clock a little ahead: counted as 0
    block.observe_latency(1_000, deliveries=0)  # nobody to deliver to: nothing
    family = parse(ServerSnapshot("1", workers={0: block.snapshot()}, now_ns=NOW_NS))["wsd_publish_delivery_seconds"]
    buckets = {s.labels["le"]: s.value for s in family.samples if s.name.endswith("_bucket")}
    assert list(buckets) == [*(repr(b) for b in schema.LATENCY_BUCKETS), "+Inf"]
    assert buckets["0.0005"] == 11
    assert buckets["0.0025"] == 11
    assert buckets["0.005"] == 13
    assert buckets["5.0"] == 13
    assert buckets["+Inf"] == 14
    assert sample_value(family, "wsd_publish_delivery_seconds_count", worker="0") == 14
    total = sample_value(family, "wsd_publish_delivery_seconds_sum", worker="0")
    assert total == pytest.approx(10 * 0.0003 + 2 * 0.005 + 20.0)


def test_openmetrics_is_served_to_a_scraper_that_asks_for_it():
    text, content_type = render(two_idle_workers(), accept="application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    families = {f.name: f for f in parse_openmetrics(text.decode())}
    assert families["wsd_handshakes"].type == "counter"
    assert families["wsd_build"].type == "info"
    assert families["wsd_publish_delivery_seconds"].type == "histogram"
    text, content_type = render(two_idle_workers(), accept="text/plain")
    assert content_type.startswith("text/plain")


def test_unknown_and_missing_snapshot_keys_are_harmless():
    families = parse(ServerSnapshot("1", workers={3: {"connections": 5, "from_a_newer_worker": 9}}, now_ns=NOW_NS))
    assert sample_value(families["wsd_connections"], "wsd_connections", worker="3") == 5
    assert sample_value(families["wsd_deliveries"], "wsd_deliveries_total", worker="3") == 0


# -- the layout -----------------------------------------------------------------------------------


def test_layout_is_a_fixed_list_of_u64_values_with_unique_keys():
    assert len(set(schema.WORKER_FIELDS)) == len(schema.WORKER_FIELDS)
    assert schema.STATS_SIZE == 8 * len(schema.WORKER_FIELDS)
    assert schema.STATS_SIZE <= 4096  # one page of the segment header holds it
    metrics = [f.metric for f in (*schema.WORKER_FAMILIES, *schema.SLOT_FAMILIES) if f.kind != "state"]
    assert len(set(metrics)) == len(metrics)
    for family in schema.WORKER_FAMILIES:
        if family.kind == "counter":
            assert family.metric.endswith("_total"), family.metric
        if family.kind in ("gauge", "histogram"):
            assert not family.metric.endswith("_total"), family.metric
        if family.kind == "state":
            assert family.metric == ""


def test_disconnect_and_latency_indexes():
    index = schema.FIELD_INDEX
    assert schema.disconnect_index(1000) == index["disconnects.1000"]
    assert schema.disconnect_index(4000) == index["disconnects.4000"]
    assert schema.disconnect_index(4001) == index["disconnects.other"]
    assert schema.disconnect_index(None) == index["disconnects.1005"]
    assert schema.latency_bucket_index(0) == index["publish_delivery.le.0.0005"]
    assert schema.latency_bucket_index(500_000) == index["publish_delivery.le.0.0005"]
    assert schema.latency_bucket_index(500_001) == index["publish_delivery.le.0.001"]
    assert schema.latency_bucket_index(5 * 10**9) == index["publish_delivery.le.5.0"]
    assert schema.latency_bucket_index(5 * 10**9 + 1) == index["publish_delivery.le.+Inf"]


def test_pack_and_unpack_round_trip():
    snapshot = {name: i * 1000 + 1 for i, name in enumerate(schema.WORKER_FIELDS)}
    assert schema.unpack_snapshot(schema.pack_snapshot(snapshot)) == snapshot
    assert schema.unpack_snapshot(schema.pack_snapshot({})) == dict.fromkeys(schema.WORKER_FIELDS, 0)


def test_a_block_in_shared_memory_is_read_by_another_process(tmp_path):
    path = tmp_path / "segment"
    offset = 128  # any 8-byte aligned offset
    with open(path, "w+b") as f:
        f.truncate(4096)
        mapping = mmap.mmap(f.fileno(), 4096)
    block = schema.StatsBlock(mapping, offset)
    block.set(schema.FIELD_INDEX["connections"], 17)
    block.add(schema.FIELD_INDEX["handshakes.accepted"], 2**64 - 1)
    block.add(schema.FIELD_INDEX["handshakes.accepted"], 3)  # wraps like a C u64
    reader = (
        "import mmap, sys\n"
        "from wsd.server import stats as s\n"
        "f = open(sys.argv[1], 'r+b'); m = mmap.mmap(f.fileno(), 4096)\n"
        "snap = s.StatsBlock(m, 128).snapshot()\n"
        "print(snap['connections'], snap['handshakes.accepted'])\n"
    )
    out = subprocess.run([sys.executable, "-P", "-c", reader, str(path)], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(path))  # fmt: skip
    assert out.stdout.split() == ["17", "2"]
    with pytest.raises(ValueError, match="aligned"):
        schema.StatsBlock(mapping, 12)
    block.release()
    mapping.close()


def test_slot_counters_only_grow_across_processes_while_gauges_are_the_live_ones():
    index = schema.FIELD_INDEX
    totals = schema.SlotTotals()
    old = {"connections": 90, "deliveries": 1000, "publish_delivery.le.0.001": 5, "channel_table_size": 65536,
           "bus_lag_bytes": 10, "ring_history_ms": 4000, "pid": 11}  # fmt: skip
    new = {"connections": 10, "deliveries": 20, "publish_delivery.le.0.001": 1, "channel_table_size": 65536,
           "bus_lag_bytes": 300, "ring_history_ms": 9000, "pid": 12}  # fmt: skip
    during_reload = totals.totals(0, [old, new])
    assert during_reload["connections"] == 100  # both processes' clients are open
    assert during_reload["deliveries"] == 1020
    assert during_reload["channel_table_size"] == 65536  # max, not a sum
    assert during_reload["bus_lag_bytes"] == 300  # the worst
    assert during_reload["ring_history_ms"] == 4000  # the shortest
    assert during_reload["pid"] == 12  # the newest
    totals.retire(0, old)
    after = totals.totals(0, [new])
    assert after["connections"] == 10
    assert after["deliveries"] == 1020  # the old process's deliveries still count
    assert after["publish_delivery.le.0.001"] == 6
    assert totals.totals(1, []) == dict.fromkeys(schema.WORKER_FIELDS, 0)
    assert len(after) == len(index)
