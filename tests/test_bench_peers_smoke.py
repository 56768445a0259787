"""Smoke test of `python -m bench.peers.run`: wsd, the Node `ws` peer and wsd --cluster (Redis), 200 subscribers, every
workload in miniature, through the shared load generator (harness.loadgen) and its Cython listener
(harness/fastlisten.pyx, built at run time); checks the report is complete and well formed. No
timing is asserted: the numbers of a run this small mean nothing."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
NODE_WS = REPO_ROOT / "bench" / "peers" / "node_ws"
SUBSCRIBERS = 200
MESSAGES = 20
HANDSHAKES = 1000  # the default, 3 rounds of 10,000 for each of the three peers, took ~35 s here


def test_peers_benchmark_runs_every_workload_against_wsd_and_node_ws(tmp_path: Path) -> None:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node/npm not installed: the Node ws peer cannot run (apt-get install nodejs npm)")
    if not (NODE_WS / "node_modules").is_dir():
        # The bench's own set-up: npm ci from the lock file.
        setup = subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_WS, capture_output=True, text=True
        )
        if setup.returncode != 0:
            pytest.skip(f"npm ci for bench/peers/node_ws failed (no registry?): {setup.stderr[-500:]}")
    command = [
        sys.executable, "-m", "bench.peers.run", "--peers", "wsd,node_ws,wsd_cluster",
        "--subscribers", str(SUBSCRIBERS), "--client-processes", "1", "--messages", str(MESSAGES),
        "--rounds", "1", "--rates", "5",
        "--paced-seconds", "2", "--targeted-messages", "2", "--targeted-rounds", "1",
        "--handshakes", str(HANDSHAKES), "--handshake-rounds", "1",
        "--out", str(tmp_path), "--tag", "smoke",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=180, cwd=REPO_ROOT)
    assert result.returncode == 0, f"bench.peers.run failed:\n{result.stdout}\n{result.stderr}"

    report = json.loads((tmp_path / "peers-smoke.json").read_text())
    markdown = (tmp_path / "peers-smoke.md").read_text()
    assert markdown.startswith("# Fan-out against the peers")
    assert "| wsd |" in markdown and "| node_ws |" in markdown and "| wsd_cluster |" in markdown
    assert "wsd with `--cluster` (Redis) / node_ws:" in markdown
    for key in ("parameters", "machine", "command", "results"):
        assert key in report, f"report lacks {key!r}"
    for name in ("wsd", "node_ws", "wsd_cluster"):
        result = report["results"][name]
        assert "error" not in result, result.get("error")
        assert result["load_generator"] == "picows, Cython listener (harness/fastlisten.pyx)"
        assert result["connect"]["subscribers"] == SUBSCRIBERS
        burst = result["burst"]
        assert burst["deliveries"] == burst["expected_deliveries"] == SUBSCRIBERS * MESSAGES
        assert (burst["missing"], burst["extra"], burst["out_of_order"], burst["wrong_first_offset"]) == (0, 0, 0, 0)
        assert burst["deliveries_per_second"]["median"] > 0
        [paced] = result["paced"]
        assert paced["deliveries"] == paced["expected_deliveries"] == SUBSCRIBERS * paced["messages"]
        assert paced["latency_samples"] == paced["deliveries"]
        assert 0 <= paced["latency_us"]["p50"] <= paced["latency_us"]["p99"] <= paced["latency_us"]["max"]
        targeted = result["targeted"]
        assert targeted["deliveries"] == targeted["expected_deliveries"] == SUBSCRIBERS * 2
        assert (targeted["missing"], targeted["out_of_order"]) == (0, 0)
        handshakes = result["handshakes"]
        assert handshakes["connections"] == HANDSHAKES and handshakes["failed"] == 0
        assert [r["connected"] for r in handshakes["rounds"]] == [HANDSHAKES]
        assert handshakes["handshakes_per_second"]["median"] > 0
