"""Smoke tests of `python -m bench.auth_verify` and `bench.auth_cost`: tiny runs write well-formed reports
(no timing asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_auth_benchmark_writes_its_report(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "bench.auth_verify", "--seconds", "0.02", "--repeats", "1",
               "--out", str(tmp_path), "--tag", "smoke"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=REPO_ROOT)
    assert result.returncode == 0, f"bench.auth_verify failed:\n{result.stdout}\n{result.stderr}"
    report = json.loads((tmp_path / "auth-verify-smoke.json").read_text())
    assert (tmp_path / "auth-verify-smoke.md").read_text().startswith("# Token verification and auth checks")
    assert [row["algorithm"] for row in report["results"]["verify"]] == ["HS256", "ES256", "RS256"]
    for row in report["results"]["verify"]:
        assert row["wsd_verify"]["per_second"] > 0 and row["pyjwt_decode"]["per_second"] > 0
    assert {"subscribe_exact", "subscribe_refused", "rate_limit_check", "origin_allowed"} <= set(
        report["results"]["checks"]
    )
    assert report["results"]["memory"]["rate_state_bytes_per_connection"] > 0


def test_auth_cost_benchmark_writes_its_report(tmp_path: Path) -> None:
    # Two of the five configurations, a few connections: the run works end to end (no timing asserted).
    command = [sys.executable, "-m", "bench.auth_cost", "--subscribers", "20", "--rounds", "1", "--passes", "1",
               "--messages", "5", "--paced-seconds", "0.4", "--configurations", "plain,tls+es256",
               "--out", str(tmp_path), "--tag", "smoke"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=REPO_ROOT)
    assert result.returncode == 0, f"bench.auth_cost failed:\n{result.stdout}\n{result.stderr}"
    report = json.loads((tmp_path / "auth-cost-smoke.json").read_text())
    assert (tmp_path / "auth-cost-smoke.md").read_text().startswith("# wsd: the cost of auth and TLS")
    assert list(report["summary"]) == ["plain", "tls+es256"]
    for row in report["summary"].values():
        assert row["errors"] == 0 and row["handshakes_per_second"]["median"] > 0
