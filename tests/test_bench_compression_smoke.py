"""Smoke test of `python -m bench.compression`: a tiny run end to end, compression on and off, writes
its report, every compressed frame inflated to the next `msg`, and compression halves the bytes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_compression_benchmark_compares_on_and_off_and_writes_its_report(tmp_path: Path) -> None:
    command = [
        sys.executable, "-m", "bench.compression", "--connections", "40", "--client-processes", "1",
        "--messages", "10", "--per-user", "2", "--rounds", "1", "--out", str(tmp_path), "--tag", "smoke",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=REPO_ROOT)
    assert result.returncode == 0, f"bench.compression failed:\n{result.stdout}\n{result.stderr}"
    report = json.loads((tmp_path / "compression-smoke.json").read_text())
    assert (tmp_path / "compression-smoke.md").read_text().startswith("# permessage-deflate")
    runs = {(run["scenario"], run["compression"]): run for run in report["runs"]}
    assert set(runs) == {(s, c) for s in ("broadcast", "targeted") for c in ("on", "off")}
    for (_scenario, compression), run in runs.items():
        assert run["connections"] == 40 and run["bad_frames"] == 0
        assert run["negotiated"] == (40 if compression == "on" else 0)
        (round_,) = run["rounds"]
        assert round_["compressed_frames"] == (round_["deliveries"] if compression == "on" else 0)
    for scenario in ("broadcast", "targeted"):
        on = runs[scenario, "on"]["median"]["wire_bytes_per_delivery"]
        off = runs[scenario, "off"]["median"]["wire_bytes_per_delivery"]
        assert on < 0.7 * off, (scenario, on, off)
