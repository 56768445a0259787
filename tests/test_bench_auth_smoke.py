"""Smoke test of `python -m bench.auth_verify`: a tiny run writes a well-formed report (no timing asserted)."""

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
