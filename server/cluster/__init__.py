"""The cross-host bus on Redis: global offsets, history and interest-based pub/sub for wsd channels.

One ClusterClient per worker process; see client.py for the API and docs/cluster.md for how it works.
"""

from wsd.server.cluster.client import ClusterClient, Shard, new_node_id
from wsd.server.cluster.errors import (
    ClusterConfigError,
    ClusterError,
    ClusterOutcomeUnknown,
    ClusterReplyError,
    ClusterUnavailable,
)
from wsd.server.cluster.model import HistoryResult, Publication, PublishResult, StreamPosition
from wsd.server.cluster.urls import ClusterSpec, RedisTarget, parse_cluster_urls

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
