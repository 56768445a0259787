"""The status document of `wsd ctl status`: per worker process, what its stats block says (the
numbers declared in wsd.server.stats, as its STATUS_FIELDS) and what the supervisor knows (state,
RSS, CPU, restarts); then the server's totals."""

from __future__ import annotations

import time
from typing import Any

import psutil

from wsd.server.bus.segment import Segment
from wsd.server.bus.status import bus_status
from wsd.server.control.processes import WorkerProcess, WorkerSlot
from wsd.server.stats import TOTALS, status_values

_NOTHING = status_values({})


def process_status(
    slot: WorkerSlot, process: WorkerProcess | None, segments: list[Segment], connection_limit: int
) -> dict[str, Any]:
    stats = segments[process.bus_slot].read_stats() if process is not None else {}
    # A stats block belongs to this process only once the process has written it.
    alive = process is not None and stats.get("pid") == process.pid
    rss, cpu = _usage(process)
    if process is None:
        state = slot.state
    elif not alive:
        state = "starting"
    elif stats.get("draining"):
        state = "draining"
    elif process.role is None and slot.current is process:
        state = "standby"
    else:
        state = "running" if slot.state != "crash-loop" else "crash-loop"
    entry: dict[str, Any] = {
        "slot": slot.index,
        "pid": process.pid if process is not None else None,
        "bus_slot": process.bus_slot if process is not None else None,
        "role": process.role if process is not None else None,
        "state": state,
    }
    entry.update(status_values(stats) if alive else _NOTHING)
    entry["max_connections"] = connection_limit
    entry.update(rss_bytes=rss, cpu_percent=cpu, restarts=slot.restarts, last_exit=slot.last_exit or None)
    # What shared memory says of the process's ring and role table (history horizon, table use).
    if process is None:
        entry.update(bus_status(segments, 0, None, time.time_ns()) | {"history_horizon_s": None})
    else:
        entry.update(bus_status(segments, process.bus_slot, process.role, time.time_ns()))
    return entry


def _usage(process: WorkerProcess | None) -> tuple[int, float]:
    if process is None:
        return 0, 0.0
    try:
        if process.psutil_process is None:
            process.psutil_process = psutil.Process(process.pid)
            process.psutil_process.cpu_percent(None)  # the first call only starts the measurement
        return process.psutil_process.memory_info().rss, process.psutil_process.cpu_percent(None)
    except psutil.Error:
        return 0, 0.0


def workers_status(
    slots: list[WorkerSlot], starting: dict[int, WorkerProcess], segments: list[Segment], connection_limit: int
) -> list[dict[str, Any]]:
    """One entry per process: each slot's current one, a reload's new one, the retiring ones."""
    workers = []
    for slot in slots:
        workers.append(process_status(slot, slot.current, segments, connection_limit))
        if slot.index in starting:
            workers.append(process_status(slot, starting[slot.index], segments, connection_limit))
        workers.extend(process_status(slot, process, segments, connection_limit) for process in slot.retiring)
    return workers


def totals(workers: list[dict[str, Any]]) -> dict[str, Any]:
    return {key: sum(worker[key] for worker in workers) for key in (*TOTALS, "rss_bytes", "cpu_percent")}
