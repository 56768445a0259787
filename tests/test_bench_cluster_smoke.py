"""Smoke test of `python -m bench.cluster`: wsd --cluster on three namespace hosts with 90
subscribers, both channels (on all hosts, on one), burst and paced in miniature; checks the report
is complete and every delivery arrived in order, and that Redis sent the one-host channel's messages
to one host only (about a third of the bytes of the all-hosts one). socket.io is left to
`make bench-cluster` (it needs npm packages). No timing is asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.netns_hosts import missing
from tests.cluster.redis_servers import MISSING

REPO_ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.netns]


def test_cluster_benchmark_runs_both_channels_against_wsd(tmp_path: Path) -> None:
    reason = missing() or MISSING
    if reason:
        pytest.skip(reason)
    command = [sys.executable, "-m", "bench.cluster", "--peers", "wsd", "--subscribers", "90", "--rounds", "1",
               "--messages", "20", "--paced-seconds", "1", "--out", str(tmp_path), "--tag", "smoke"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=REPO_ROOT)
    assert result.returncode == 0, f"bench.cluster failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    report = json.loads((tmp_path / "cluster-smoke.json").read_text())
    assert (tmp_path / "cluster-smoke.md").read_text().startswith("# The cross-host bus")
    wsd = report["results"]["wsd"]
    assert wsd["subscribers"] == 90
    everywhere, local = wsd["scenarios"]["all"], wsd["scenarios"]["local"]
    assert (everywhere["subscribers"], local["subscribers"]) == (90, 30)
    for scenario in (everywhere, local):
        burst, paced = scenario["burst"], scenario["paced"]
        assert (burst["missing"], burst["extra"], burst["out_of_order"]) == (0, 0, 0)
        assert burst["rounds"][0]["deliveries"] == scenario["subscribers"] * 20
        assert paced["deliveries"] == scenario["subscribers"] * paced["messages"] and paced["missing"] == 0
        assert 0 < paced["latency_us"]["p50"] <= paced["latency_us"]["p99"]
    # Interest: Redis sends a one-host channel's message to one host, an all-hosts one to three.
    assert local["burst"]["redis_bytes_per_message"] < 0.6 * everywhere["burst"]["redis_bytes_per_message"]
