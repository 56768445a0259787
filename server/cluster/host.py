"""The cluster state of one host, for `wsd ctl status` and readiness: each worker process writes its
own (its ClusterClient's shards, its ChannelOwner's channels) to a small JSON file on its stats
tick; the supervisor merges the files of its live processes into the host's `cluster` document.

    {"node_id": "web1-9f3a2c1d", "mode": "instances", "state": "up"|"down", "channels": 12,
     "catch_ups": 3, "gaps": 0, "server_api": {"listening": 2, "processes": 2, "requests_answered": 5,
     "error": ""}, "shards": [{"url": "redis://10.0.0.5:6379/0", "state": "up",
     "channels": 12, "publish_rtt_ms": 0.31, "catch_ups": 3, ...}]}

`channels` counts the host's Redis subscriptions (each is held by one process, the holder of the
channel's role); a shard is `down` when any process finds it down; the publish round trip is the
median of the processes' medians. The node id is chosen by the supervisor, once per run, and shared
by the host's workers (`ClusterClient(node_id=...)`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

_SUMMED = ("channels", "round_trips", "commands", "messages_received", "rebuilds", "probes", "probe_failures",
           "catch_ups")  # fmt: skip


def make_status_dir(run_id: str) -> str:
    """A private directory for the workers' status files (removed by `remove_status_dir`)."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    return tempfile.mkdtemp(prefix=f"wsd-{run_id}-cluster-", dir=base)


def remove_status_dir(path: str | None) -> None:
    if path:
        shutil.rmtree(path, ignore_errors=True)


def status_path(directory: str, bus_slot: int) -> str:
    return os.path.join(directory, f"{bus_slot}.json")


def write_status(path: str, status: dict[str, Any]) -> None:
    """Replace the file at once (rename), so a reader never sees half of it."""
    temporary = f"{path}.tmp"
    with open(temporary, "w") as f:
        json.dump(status, f)
    os.replace(temporary, path)


def read_statuses(directory: str, bus_slots: Iterable[int], pids: dict[int, int] | None = None) -> list[dict]:
    """The status files of these bus slots (of the process with pid `pids[slot]`, when given)."""
    found = []
    for slot in bus_slots:
        with contextlib.suppress(OSError, ValueError):
            status = json.loads(Path(status_path(directory, slot)).read_text())
            if pids is None or status.get("pid") == pids.get(slot):
                found.append(status)
    return found


def merge(node_id: str, statuses: list[dict]) -> dict[str, Any]:
    """The host's cluster document from its processes' statuses (see the module docstring)."""
    shards: dict[str, dict[str, Any]] = {}
    rtts: dict[str, list[float]] = {}
    mode = statuses[0]["mode"] if statuses else None
    for status in statuses:
        for shard in status.get("shards", ()):
            merged = shards.get(shard["url"])
            if merged is None:
                merged = shards[shard["url"]] = {"url": shard["url"], "state": "up", "error": ""}
                merged.update(dict.fromkeys(_SUMMED, 0))
            if shard["state"] != "up":
                merged["state"] = "down"
                merged["error"] = merged["error"] or shard.get("error", "")
            for key in _SUMMED:
                merged[key] += int(shard.get(key) or 0)
            if shard.get("publish_rtt_ms") is not None:
                rtts.setdefault(shard["url"], []).append(shard["publish_rtt_ms"])
    for url, merged in shards.items():
        values = rtts.get(url)
        import statistics  # here: it imports decimal and fractions, and the supervisor imports this module

        merged["publish_rtt_ms"] = round(statistics.median(values), 3) if values else None
    shard_list = sorted(shards.values(), key=lambda shard: shard["url"])
    owners = [status.get("owner", {}) for status in statuses]
    api_links = [status["server_api"] for status in statuses if "server_api" in status]
    api_errors = [link["error"] for link in api_links if not link.get("subscribed")]
    return {
        "node_id": node_id,
        "mode": mode,
        "state": "up" if shard_list and all(shard["state"] == "up" for shard in shard_list) else "down",
        "channels": sum(shard["channels"] for shard in shard_list),
        "catch_ups": sum(int(owner.get("catch_ups", 0)) for owner in owners),
        "gaps": sum(int(owner.get("gaps", 0)) for owner in owners),
        "received": sum(int(owner.get("appended", 0)) for owner in owners),
        "processes": len(statuses),
        # The server API across hosts (api_hosts.py): how many processes listen for the other hosts.
        "server_api": {"listening": len(api_links) - len(api_errors), "processes": len(api_links),
                       "requests_answered": sum(int(link.get("requests_answered", 0)) for link in api_links),
                       "error": api_errors[0] if api_errors else ""},  # fmt: skip
        "shards": shard_list,
    }


def shard_states(document: dict[str, Any]) -> list:
    """The shards of a cluster document (merge() or one process's) as readiness and the metrics
    take them (wsd.server.metrics.ShardState)."""
    from wsd.server.stats import ShardState

    return [
        ShardState(shard["url"], shard["state"] == "up",
                   None if shard.get("publish_rtt_ms") is None else shard["publish_rtt_ms"] / 1000.0,
                   int(shard.get("channels") or 0), int(shard.get("catch_ups") or 0))
        for shard in document.get("shards", ())
    ]  # fmt: skip
