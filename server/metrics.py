"""Prometheus exposition of a wsd server: `render(snapshot)` turns per-worker stats into the text
(or OpenMetrics) format that `GET /metrics` answers, written by `prometheus_client`.

The values are read, not kept, here: each worker keeps its counters in its stats block
(`wsd.server.stats`), the supervisor adds what only it knows (restarts, memory, CPU), and the
worker that serves `/metrics` gathers them into a `ServerSnapshot` (wsd.server.server_view) and
calls `render`. Every family is
in the output from the start, zero-valued, with every label value the schema declares, so a query
or an alert never sees a series appear out of nothing. Cluster families appear with `--cluster`.
"""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Iterator, Mapping

from prometheus_client.exposition import choose_encoder, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)

from wsd.server.stats import SLOT_FAMILIES, WORKER_FAMILIES, Family, ServerSnapshot, ShardState

__all__ = ["CONTENT_TYPE_TEXT", "ServerSnapshot", "ShardState", "render"]

# The content type of the classic text format (what `render` returns without an Accept header).
CONTENT_TYPE_TEXT = "text/plain; version=0.0.4; charset=utf-8"


def render(snapshot: ServerSnapshot, accept: str | None = None) -> tuple[bytes, str]:
    """The exposition of `snapshot` and its content type.

    `accept` is the scrape's Accept header: Prometheus asking for OpenMetrics gets OpenMetrics,
    anything else the classic text format.
    """
    collector = _SnapshotCollector(snapshot)
    if accept:
        encoder, content_type = choose_encoder(accept)
        return encoder(collector), content_type
    return generate_latest(collector), CONTENT_TYPE_TEXT


class _SnapshotCollector:
    """A prometheus_client collector over one snapshot (`generate_latest` calls `collect`)."""

    def __init__(self, snapshot: ServerSnapshot):
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        snapshot = self.snapshot
        slots = sorted(set(snapshot.workers) | set(snapshot.slots))
        for family in WORKER_FAMILIES:
            if family.kind != "state":
                yield _worker_family(family, slots, snapshot.workers)
        now_ns = time.monotonic_ns() if snapshot.now_ns is None else snapshot.now_ns
        for family in SLOT_FAMILIES:
            metric = _new_family(family, ["worker"])
            for slot in slots:
                if family.key == "heartbeat_age":
                    value = _heartbeat_age_s(snapshot.workers.get(slot, {}), now_ns)
                else:
                    value = float(snapshot.slots.get(slot, {}).get(family.key, 0))
                metric.add_metric([str(slot)], value)
            yield metric
        yield from self._server_families(snapshot)

    def _server_families(self, snapshot: ServerSnapshot) -> Iterator[Metric]:
        info = InfoMetricFamily("wsd_build", "The running wsd's version and Python.")
        info.add_metric([], {"version": snapshot.version, "python": platform.python_version()})
        yield info
        yield GaugeMetricFamily("wsd_ready", "1 when /readyz answers 200.", value=1.0 if snapshot.ready else 0.0)
        yield CounterMetricFamily("wsd_reloads", "Rolling reloads started.", value=snapshot.reloads)
        yield GaugeMetricFamily("wsd_start_time_seconds", "Unix time the supervisor started.",
                                value=snapshot.start_time_s)  # fmt: skip
        if snapshot.cluster is None:
            return
        shards = list(snapshot.cluster)
        yield GaugeMetricFamily("wsd_cluster_up", "1 when every Redis of --cluster answers.",
                                value=1.0 if shards and all(s.up for s in shards) else 0.0)  # fmt: skip
        up = GaugeMetricFamily("wsd_cluster_shard_up", "1 when this Redis answers.", labels=["shard"])
        rtt = GaugeMetricFamily("wsd_cluster_round_trip_seconds", "The last publish round trip to this Redis.",
                                labels=["shard"])  # fmt: skip
        subscriptions = GaugeMetricFamily("wsd_cluster_subscriptions",
                                          "wsd channels this host is subscribed to in this Redis.", labels=["shard"])
        catch_ups = CounterMetricFamily("wsd_cluster_catch_ups",
                                        "Channels caught up from this Redis's streams after an outage.",
                                        labels=["shard"])  # fmt: skip
        for shard in shards:
            up.add_metric([shard.url], 1.0 if shard.up else 0.0)
            rtt.add_metric([shard.url], math.nan if shard.round_trip_s is None else shard.round_trip_s)
            subscriptions.add_metric([shard.url], shard.subscriptions)
            catch_ups.add_metric([shard.url], shard.catch_ups)
        yield from (up, rtt, subscriptions, catch_ups)


def _new_family(family: Family, labels: list[str]) -> Metric:
    if family.kind == "counter":
        # prometheus_client adds the _total suffix back.
        return CounterMetricFamily(family.metric.removesuffix("_total"), family.help, labels=labels)
    if family.kind == "gauge":
        return GaugeMetricFamily(family.metric, family.help, labels=labels)
    if family.kind == "histogram":
        return HistogramMetricFamily(family.metric, family.help, labels=labels)
    raise ValueError(f"family {family.key!r} of kind {family.kind!r} is not exported")


def _worker_family(family: Family, slots: list[int], workers: Mapping[int, Mapping[str, int]]) -> Metric:
    labels = ["worker"] + ([family.label] if family.label else [])
    metric = _new_family(family, labels)
    for slot in slots:
        stats = workers.get(slot, {})
        worker = str(slot)
        if family.kind == "histogram":
            buckets, running = [], 0
            for name in family.fields()[:-1]:
                running += int(stats.get(name, 0))
                buckets.append((name.rsplit(".le.", 1)[1], running))
            metric.add_metric([worker], buckets, int(stats.get(f"{family.key}.sum_ns", 0)) * 1e-9)
        elif family.label:
            for value, name in zip(family.values, family.fields(), strict=True):
                metric.add_metric([worker, value], int(stats.get(name, 0)) * family.scale)
        else:
            metric.add_metric([worker], int(stats.get(family.key, 0)) * family.scale)
    return metric


def _heartbeat_age_s(stats: Mapping[str, int], now_ns: int) -> float:
    heartbeat = int(stats.get("heartbeat_ns", 0))
    if not heartbeat:
        return math.inf  # no process has written a heartbeat for this slot yet
    return max(0.0, (now_ns - heartbeat) / 1e9)
