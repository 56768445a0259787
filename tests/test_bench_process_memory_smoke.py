"""Smoke test of `python -m bench.process_memory`: a run against an idle 2-worker wsd writes a complete
report with every process's memory. Checks the harness and the report's shape only; the figures
themselves are never asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_process_memory_benchmark_reports_every_process_and_the_reserved_shared_memory(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "bench.process_memory", "--workers", "2", "--settle", "0.2",
               "--out", str(tmp_path), "--tag", "smoke"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert result.returncode == 0, f"bench.process_memory failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    report = json.loads((tmp_path / "process-memory-smoke.json").read_text())
    assert (tmp_path / "process-memory-smoke.md").read_text().startswith("# Process memory")
    processes = report["result"]["processes"]
    assert [p["title"] for p in processes] == ["wsd: supervisor", "wsd: worker 0", "wsd: worker 1"]
    for process in processes:
        assert process["status_kib"]["VmRSS"] > 0 and process["pss_kib"] > 0
        assert process["top_mappings_kib"] and process["shared_objects"]
    assert {"wsd-bus-slot0", "wsd-bus-slot3"} <= set(report["result"]["reserved_shared_memory_bytes"])
