"""Smoke test of `python -m bench.fanout`: a tiny run end to end writes a well-formed, complete report.

It runs the load generator's Python listener (harness/listener.py), the reference of the Cython one
that the peers smoke test runs, so both count the same deliveries against the same checks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

SUBSCRIBERS = 200
MESSAGES = 20


def test_fanout_benchmark_delivers_every_message_and_writes_its_report(tmp_path: Path) -> None:
    command = [
        sys.executable, "-m", "bench.fanout", "--listener", "python",
        "--subscribers", str(SUBSCRIBERS), "--messages", str(MESSAGES), "--rounds", "1",
        "--paced-seconds", "2", "--client-processes", "1", "--out", str(tmp_path), "--tag", "smoke",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=REPO_ROOT)
    assert result.returncode == 0, f"bench.fanout failed:\n{result.stdout}\n{result.stderr}"

    report = json.loads((tmp_path / "fanout-smoke.json").read_text())
    assert (tmp_path / "fanout-smoke.md").read_text().startswith("# wsd fan-out benchmark")
    for key in ("parameters", "machine", "command", "connect", "rounds", "burst", "paced", "server_rss_bytes"):
        assert key in report, f"report lacks {key!r}"
    assert report["parameters"]["subscribers"] == SUBSCRIBERS
    assert report["connect"]["subscribers"] == SUBSCRIBERS
    assert report["load_generator"] == "picows, Python listener"

    burst = report["burst"]
    assert burst["deliveries"] == burst["expected_deliveries"] == SUBSCRIBERS * MESSAGES
    assert (burst["missing"], burst["extra"], burst["out_of_order"], burst["wrong_first_offset"]) == (0, 0, 0, 0)
    assert len(report["rounds"]) == 1 and report["rounds"][0]["deliveries_per_second"] > 0

    paced = report["paced"]
    assert paced["deliveries"] == paced["expected_deliveries"] == SUBSCRIBERS * paced["messages"]
    assert (paced["missing"], paced["out_of_order"]) == (0, 0)
    assert paced["latency_samples"] == paced["deliveries"]
    assert 0 <= paced["latency_us"]["p50"] <= paced["latency_us"]["p99"] <= paced["latency_us"]["max"]
