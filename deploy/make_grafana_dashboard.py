"""Writes deploy/grafana-dashboard.json, the Grafana dashboard over wsd's /metrics.

Edit the panels here and run `python deploy/make_grafana_dashboard.py`; a test checks that the JSON
is this script's output and runs every query against a real Prometheus. Import the JSON in Grafana
(Dashboards > New > Import) and pick the Prometheus data source that scrapes wsd's API port.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

OUTPUT = Path(__file__).with_name("grafana-dashboard.json")
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"


def selector(metric: str, extra: str = "") -> str:
    """`metric{instance=~"$instance"}`: every query follows the dashboard's instance picker."""
    labels = 'instance=~"$instance"' + (f",{extra}" if extra else "")
    return f"{metric}{{{labels}}}"


def rate(metric: str, extra: str = "") -> str:
    return f"rate({selector(metric, extra)}[{RATE}])"


def quantile(q: float) -> str:
    return f"histogram_quantile({q}, sum by (le) ({rate('wsd_publish_delivery_seconds_bucket')}))"


class Layout:
    """Places panels left to right in rows of 24 grid units, as Grafana's editor does."""

    def __init__(self) -> None:
        self.panels: list[dict] = []
        self.x = self.y = self.row_height = 0

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append({"type": "row", "title": title, "collapsed": False, "panels": [],
                            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}})  # fmt: skip
        self.y += 1

    def add(self, panel: dict, width: int, height: int) -> None:
        if self.x + width > 24:
            self._newline()
        panel["gridPos"] = {"h": height, "w": width, "x": self.x, "y": self.y}
        self.panels.append(panel)
        self.x += width
        self.row_height = max(self.row_height, height)

    def _newline(self) -> None:
        if self.x:
            self.y += self.row_height
        self.x = self.row_height = 0


def targets(*queries: tuple[str, str]) -> list[dict]:
    return [{"datasource": DATASOURCE, "expr": expr, "legendFormat": legend, "refId": chr(ord("A") + i)}
            for i, (expr, legend) in enumerate(queries)]  # fmt: skip


def timeseries(title: str, description: str, unit: str, *queries: tuple[str, str], stack: bool = False) -> dict:
    custom = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never", "spanNulls": True}
    if stack:
        custom["stacking"] = {"mode": "normal", "group": "A"}
    return {
        "type": "timeseries", "title": title, "description": description, "datasource": DATASOURCE,
        "targets": targets(*queries),
        "fieldConfig": {"defaults": {"unit": unit, "min": 0, "custom": custom}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                    "tooltip": {"mode": "multi", "sort": "desc"}},
    }  # fmt: skip


def stat(title: str, description: str, unit: str, expr: str, legend: str = "", thresholds=None, mappings=None,
         text_mode: str = "value") -> dict:  # fmt: skip
    steps = thresholds or [{"color": "green", "value": None}]
    return {
        "type": "stat", "title": title, "description": description, "datasource": DATASOURCE,
        "targets": targets((expr, legend)),
        "fieldConfig": {"defaults": {"unit": unit, "thresholds": {"mode": "absolute", "steps": steps},
                                     "mappings": mappings or []}, "overrides": []},
        "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                    "colorMode": "value", "graphMode": "area", "textMode": text_mode, "justifyMode": "auto"},
    }  # fmt: skip


def dashboard() -> dict:
    layout = Layout()
    red_below_1 = [{"color": "red", "value": None}, {"color": "green", "value": 1}]
    up_down = [{"type": "value", "options": {"0": {"text": "DOWN", "color": "red"},
                                             "1": {"text": "UP", "color": "green"}}}]  # fmt: skip
    ready = [{"type": "value", "options": {"0": {"text": "NOT READY", "color": "red"},
                                           "1": {"text": "READY", "color": "green"}}}]  # fmt: skip

    layout.row("Overview")
    layout.add(stat("Connections", "Open WebSocket connections on the selected servers.", "short",
                    f"sum({selector('wsd_connections')})"), 4, 4)  # fmt: skip
    layout.add(stat("Ready", "Every selected server answers /readyz with 200.", "none",
                    f"min({selector('wsd_ready')})", thresholds=red_below_1, mappings=ready), 4, 4)  # fmt: skip
    layout.add(stat("Publishes / s", "Messages published (clients, API, cluster).", "short",
                    f"sum({rate('wsd_messages_published_total')})"), 4, 4)  # fmt: skip
    layout.add(stat("Deliveries / s", "One per message per subscriber connection.", "short",
                    f"sum({rate('wsd_deliveries_total')})"), 4, 4)  # fmt: skip
    layout.add(stat("p99 delivery latency", "Publish to frame written, 99th percentile.", "s", quantile(0.99),
                    thresholds=[{"color": "green", "value": None}, {"color": "orange", "value": 0.05},
                                {"color": "red", "value": 0.25}]), 4, 4)  # fmt: skip
    layout.add(stat("Version", "wsd_build_info of each server.", "none",
                    f"count by (version) ({selector('wsd_build_info')})", "{{version}}", text_mode="name"), 4, 4)

    layout.row("Clients")
    layout.add(timeseries("Connections per worker", "wsd_connections by server and worker slot.", "short",
                          (selector("wsd_connections"), "{{instance}} worker {{worker}}"), stack=True), 12, 8)
    layout.add(timeseries("Handshakes / s by result", "accepted, or why refused: draining, limit, unauthorized, "
                          "origin, rate_limited; incomplete: closed before a whole upgrade request.", "reqps",
                          (f"sum by (result) ({rate('wsd_handshakes_total')})", "{{result}}")), 12, 8)  # fmt: skip
    layout.add(timeseries("Disconnects / s by close code", "1000 normal, 1001 going away, 1006 dropped without a "
                          "close, 1008 policy, 1009 too big, 1011 error, 1012 restart (drain), 1013 slow reader, "
                          "4000 disconnected by the server.", "short",
                          (f"sum by (code) ({rate('wsd_disconnects_total')}) > 0", "{{code}}")), 8, 8)  # fmt: skip
    layout.add(timeseries("Slow-reader cut-offs / s", "Clients closed with 1013 because they did not read.", "short",
                          (f"sum by (instance) ({rate('wsd_slow_disconnects_total')})", "{{instance}}")), 8, 8)
    layout.add(timeseries("Resumes / s", "Subscriptions with `since`: recovered from history, or not (gap).",
                          "short", (f"sum by (recovered) ({rate('wsd_resumes_total')})", "recovered={{recovered}}")),
               8, 8)  # fmt: skip
    layout.add(timeseries("Subscriptions and channels", "Connection-channel pairs, and channels with a local "
                          "subscriber.", "short", (f"sum by (instance) ({selector('wsd_subscriptions')})",
                                                   "subscriptions {{instance}}"),
                          (f"sum by (instance) ({selector('wsd_subscribed_channels')})", "channels {{instance}}")),
               24, 7)  # fmt: skip

    layout.row("Messages")
    layout.add(timeseries("Publishes / s by source", "client (WebSocket pub), api (HTTP), cluster (other hosts).",
                          "short", (f"sum by (source) ({rate('wsd_messages_published_total')})", "{{source}}")),
               8, 8)  # fmt: skip
    layout.add(timeseries("Deliveries / s", "Messages written to subscriber connections.", "short",
                          (f"sum by (instance) ({rate('wsd_deliveries_total')})", "{{instance}}")), 8, 8)
    layout.add(timeseries("Bytes out / s", "WebSocket frames written to clients.", "Bps",
                          (f"sum by (instance) ({rate('wsd_sent_bytes_total')})", "{{instance}}")), 8, 8)
    layout.add(timeseries("Publish-to-delivery latency", "Quantiles from wsd_publish_delivery_seconds, per delivery.",
                          "s", (quantile(0.5), "p50"), (quantile(0.9), "p90"), (quantile(0.99), "p99"),
                          (f"sum({rate('wsd_publish_delivery_seconds_sum')}) / "
                           f"sum({rate('wsd_publish_delivery_seconds_count')})", "mean")), 24, 8)  # fmt: skip

    layout.row("Bus")
    layout.add(timeseries("Bus lag", "Bytes of bus ring a worker has not read yet (grows when a worker falls "
                          "behind).", "bytes", (selector("wsd_bus_lag_bytes"), "{{instance}} worker {{worker}}")),
               6, 8)  # fmt: skip
    layout.add(timeseries("Overruns, gaps, bad entries / s", "A ring lapped before a worker read it, offsets "
                          "never seen, entries skipped.", "short",
                          (f"sum by (instance) ({rate('wsd_bus_overruns_total')})", "overruns {{instance}}"),
                          (f"sum by (instance) ({rate('wsd_bus_gaps_total')})", "gaps {{instance}}"),
                          (f"sum by (instance) ({rate('wsd_bus_bad_entries_total')})", "bad entries {{instance}}")),
               6, 8)  # fmt: skip
    layout.add(timeseries("Channel table use", "Entries used / slots, per worker (publishing to new channels "
                          "needs room).", "percentunit",
                          (f"{selector('wsd_channel_table_used')} / {selector('wsd_channel_table_size')}",
                           "{{instance}} worker {{worker}}")), 6, 8)  # fmt: skip
    layout.add(timeseries("Ring history horizon", "Seconds of messages each ring holds for resume; below "
                          "--history-ttl, resumes lose history sooner than promised.", "s",
                          (selector("wsd_ring_history_seconds"), "{{instance}} worker {{worker}}")), 6, 8)

    layout.row("Processes")
    layout.add(timeseries("Worker memory (RSS)", "Resident memory of each worker slot's processes.", "bytes",
                          (selector("wsd_worker_resident_memory_bytes"), "{{instance}} worker {{worker}}")), 8, 8)
    layout.add(timeseries("Worker CPU", "Cores used by each worker slot (1 = one core).", "percentunit",
                          (rate("wsd_worker_cpu_seconds_total"), "{{instance}} worker {{worker}}")), 8, 8)
    layout.add(timeseries("Worker restarts", "Restarts in the last hour (a crash loop shows here).", "short",
                          (f"increase({selector('wsd_worker_restarts_total')}[1h])",
                           "{{instance}} worker {{worker}}")), 8, 8)  # fmt: skip

    layout.row("Cluster (--cluster)")
    layout.add(stat("Cluster", "Every Redis of --cluster answers, on every selected server.", "none",
                    f"min({selector('wsd_cluster_up')})", thresholds=red_below_1, mappings=up_down), 4, 8)
    layout.add(timeseries("Redis round trip", "The last publish round trip to each Redis, per server.", "s",
                          (selector("wsd_cluster_round_trip_seconds"), "{{instance}} {{shard}}")), 10, 8)
    layout.add(timeseries("Redis shards up", "1 up, 0 down.", "none",
                          (selector("wsd_cluster_shard_up"), "{{instance}} {{shard}}")), 10, 8)

    for number, panel in enumerate(layout.panels, start=1):
        panel["id"] = number
    return {
        "title": "wsd",
        "uid": "wsd-overview",
        "description": "wsd WebSocket push server: clients, messages, bus, processes, cluster (GET /metrics).",
        "tags": ["wsd", "websocket"],
        "editable": True,
        "graphTooltip": 1,
        "refresh": "10s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "annotations": {"list": []},
        "links": [],
        "templating": {
            "list": [
                {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
                 "current": {}, "hide": 0, "refresh": 1},
                {"name": "instance", "label": "Server", "type": "query", "datasource": DATASOURCE,
                 "query": {"query": "label_values(wsd_build_info, instance)", "refId": "instance"},
                 "definition": "label_values(wsd_build_info, instance)", "multi": True, "includeAll": True,
                 "allValue": ".*", "current": {}, "hide": 0, "refresh": 2, "sort": 1},
            ]
        },  # fmt: skip
        "panels": layout.panels,
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


if __name__ == "__main__":
    OUTPUT.write_text(render())
    print(f"wrote {OUTPUT}", file=sys.stderr)
