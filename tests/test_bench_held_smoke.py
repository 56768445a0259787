"""Smoke test of `python -m bench.held_connections`: a 500-connection run against wsd writes a complete
report, every broadcast reached every connection, and wsd's own part of each broadcast was read.

Checks the harness and the report's shape only; the figures themselves are never asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_held_connections_benchmark_writes_memory_and_broadcast_figures(tmp_path: Path) -> None:
    command = [
        sys.executable, "-m", "bench.held_connections", "--connections", "500", "--workers", "2",
        "--broadcasts", "2", "--pause", "0.2", "--out", str(tmp_path), "--tag", "smoke",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=180, cwd=REPO_ROOT)
    assert result.returncode == 0, f"bench.held_connections failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    report = json.loads((tmp_path / "held-smoke.json").read_text())
    assert (tmp_path / "held-smoke.md").read_text().startswith("# Held connections")
    wsd = report["servers"]["wsd"]
    assert wsd["memory"]["held"]["processes"] == 3  # the supervisor and two workers
    assert wsd["memory"]["per_connection"]["rss"] > 0
    assert [b["deliveries"] for b in wsd["broadcasts"]] == [500, 500]
    assert all(b["missing"] == 0 and b["out_of_order"] == 0 for b in wsd["broadcasts"])
    assert all(b["server"]["deliveries"] == 500 for b in wsd["broadcasts"])
