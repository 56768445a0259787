"""The supervisor's records of its slots and worker processes, and how a worker process is started.

A slot k owns the k-th SO_REUSEPORT socket of each port for good, so the kernel's reuseport group
never changes; the processes that serve it come and go (respawns, reloads). A process also has a
bus slot (its ring) and may hold a sequencing role.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

# -P: the worker's working directory (the user's, often holding folders named like ours) is not put
# on sys.path, so nothing there can shadow the installed package.
WORKER_COMMAND = [sys.executable, "-P", "-m", "wsd.server.worker"]


@dataclass
class WorkerProcess:
    slot: int
    bus_slot: int
    popen: subprocess.Popen
    role: int | None
    started_at: float = field(default_factory=time.monotonic)
    state: str = "starting"  # starting, running, draining
    psutil_process: Any = None
    retiring_since: float = field(default_factory=time.monotonic)  # set when it is told to hand over
    cpu_s: float = 0.0  # user + system CPU seconds at the last sample (what it used, once it exits)
    retired: bool = False  # its counts have moved to its slot's retired counts

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, signum: int) -> None:
        if self.popen.poll() is None:
            try:
                self.popen.send_signal(signum)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        self.signal(signal.SIGKILL)


@dataclass
class WorkerSlot:
    """A numbered slot: its sockets outlive the worker processes that serve them."""

    index: int
    ws_socket: Any
    api_socket: Any
    current: WorkerProcess | None = None
    retiring: list[WorkerProcess] = field(default_factory=list)  # old processes still draining
    state: str = "starting"  # running, dead, crash-loop, stopped
    restarts: int = 0
    failed_runs: int = 0  # consecutive short runs
    spawn_at: float = 0.0
    last_exit: str = ""
    exited_cpu_s: float = 0.0  # CPU seconds of the slot's processes that exited


def start_worker_process(spec: dict[str, Any], pass_fds: tuple[int, ...]) -> subprocess.Popen:
    """Start `python -P -m wsd.server.worker` with its spec in the environment and `pass_fds` inherited."""
    env = dict(os.environ, WSD_WORKER_SPEC=json.dumps(spec))
    return subprocess.Popen(WORKER_COMMAND, env=env, pass_fds=pass_fds)


def describe_exit(code: int) -> str:
    return f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
