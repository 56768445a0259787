"""What the benchmarks share for measuring and reporting: CPU per process over a phase, percentiles
and spreads, the machine a run was made on, and the command that reproduces it."""

from __future__ import annotations

import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import psutil

RESULTS_DIR = Path(__file__).resolve().parent / "results"


class CpuSampler:
    """CPU seconds used by a set of processes between two snapshots."""

    def __init__(self, processes: dict[str, psutil.Process]):
        self.processes = processes
        self.started: dict[str, float] = {}
        self.started_wall = 0.0

    def start(self) -> None:
        self.started = {name: _cpu_seconds(p) for name, p in self.processes.items()}
        self.started_wall = time.monotonic()

    def stop(self) -> dict[str, dict[str, float]]:
        """Per process: CPU seconds since start() and `busy`, CPU seconds per wall second."""
        wall = time.monotonic() - self.started_wall
        used = {name: _cpu_seconds(p) - self.started[name] for name, p in self.processes.items()}
        return {name: {"cpu_seconds": seconds, "busy": seconds / wall} for name, seconds in used.items()}


def _cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def cpu_seconds(processes: list[psutil.Process]) -> float:
    """CPU seconds the processes have used so far; one that has exited counts nothing."""
    total = 0.0
    for process in processes:
        try:
            total += _cpu_seconds(process)
        except psutil.Error:
            pass
    return total


def percentile(sorted_values: list[int], fraction: float) -> int:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return 0
    rank = max(0, min(len(sorted_values) - 1, int(round(fraction * len(sorted_values) + 0.5)) - 1))
    return sorted_values[rank]


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    """What the numbers of a WebSocket benchmark were measured on."""
    import picows
    import uvloop

    return {
        "uname": " ".join(platform.uname()),
        "cpu_model": cpu_model(),
        "nproc": os.cpu_count(),
        "memory_bytes": psutil.virtual_memory().total,
        "python": platform.python_version(),
        "picows": picows.__version__,
        "uvloop": uvloop.__version__,
    }


def command_line() -> str:
    """The command that reproduces this run, as typed from the repository root: `python -m bench.x ...`."""
    main = sys.modules["__main__"]
    module = main.__spec__.name if getattr(main, "__spec__", None) else None
    launcher = ["python", "-m", module] if module else ["python", sys.argv[0]]
    return shlex.join([*launcher, *sys.argv[1:]])
