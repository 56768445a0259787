"""The cross-host bus on Redis: global offsets, history and interest-based pub/sub for wsd channels.

One ClusterClient per worker process; see client.py for the API and docs/cluster.md for how it works.

The names below are imported on first use (PEP 562): the client pulls in redis (~20 MiB of RSS), and
the supervisor of every server, cluster or not, imports wsd.server.cluster.host.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "ClusterClient": "client", "Shard": "client", "new_node_id": "client",
    "ClusterConfigError": "errors", "ClusterError": "errors", "ClusterOutcomeUnknown": "errors",
    "ClusterReplyError": "errors", "ClusterUnavailable": "errors",
    "HistoryResult": "model", "Publication": "model", "PublishResult": "model", "StreamPosition": "model",
    "ClusterSpec": "urls", "RedisTarget": "urls", "parse_cluster_urls": "urls",
}  # fmt: skip

__all__ = [
    "ClusterClient",
    "ClusterConfigError",
    "ClusterError",
    "ClusterOutcomeUnknown",
    "ClusterReplyError",
    "ClusterSpec",
    "ClusterUnavailable",
    "HistoryResult",
    "Publication",
    "PublishResult",
    "RedisTarget",
    "Shard",
    "StreamPosition",
    "new_node_id",
    "parse_cluster_urls",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
