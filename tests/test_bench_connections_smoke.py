"""Smoke test of `python -m bench.connections` + bench/locustfile.py: a 2,000-connection run writes a complete report.

Checks the harness and the report's shape only; the figures themselves are never asserted.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

CONNECTIONS = 2000
BROADCASTS = 3

# Look for Locust without importing it: importing locust monkey-patches the whole pytest process
# with gevent (threads become greenlets), which hangs later tests that run event loops in threads.
if importlib.util.find_spec("locust") is None:
    pytest.skip("Locust is in the test extras: pip install -e '.[test]'", allow_module_level=True)


def test_connection_benchmark_holds_every_connection_and_writes_its_report(tmp_path: Path) -> None:
    command = [
        sys.executable, "-m", "bench.connections", "--connections", str(CONNECTIONS),
        "--workers", "2", "--hold", "2", "--broadcasts", str(BROADCASTS), "--broadcast-timeout", "20",
        "--ramp-timeout", "60", "--out", str(tmp_path), "--tag", "smoke",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=150, cwd=REPO_ROOT)
    assert result.returncode == 0, f"bench.connections failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"

    report = json.loads((tmp_path / "connections-smoke.json").read_text())
    assert (tmp_path / "connections-smoke.md").read_text().startswith("# wsd connection benchmark")
    for key in ("parameters", "machine", "command", "ramp", "memory", "cpu", "broadcasts", "broadcast_latency",
                "deliveries", "errors", "samples"):  # fmt: skip
        assert key in report, f"report lacks {key!r}"
    assert report["connections_held"] == CONNECTIONS
    assert report["server_connections_at_end"] == CONNECTIONS
    assert report["ramp"]["connections"] == CONNECTIONS and report["ramp"]["rate_per_second"] > 0
    assert report["errors"] == {}

    per_connection = report["memory"]["per_connection_bytes"]
    assert per_connection["rss"] > 0 and per_connection["uss"] > 0 and per_connection["pss"] > 0

    assert len(report["broadcasts"]) == BROADCASTS
    assert report["deliveries"] == {"expected": CONNECTIONS * BROADCASTS, "received": CONNECTIONS * BROADCASTS,
                                    "missing": 0}  # fmt: skip
    latency = report["broadcast_latency"]
    assert 0 <= latency["p50_ms"] <= latency["p99_ms"] <= latency["max_ms"]
    assert report["samples"] and {"wsd_rss", "wsd_uss", "connections", "slab_bytes"} <= set(report["samples"][0])
