"""The supervisor: owns the slots (sockets, bus segments, doorbells), runs the worker processes,
answers the admin socket.

It reads like gunicorn's arbiter: signal handlers only queue the signal and wake the loop through
a pipe; the loop then calls `handle_<signal>()`, `reap_workers()` and `manage_workers()`.
"""

from __future__ import annotations

import glob
import http.client
import json
import logging
import os
import secrets
import select
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import psutil

from server.admin import AdminCommandError, AdminServer
from server.bus.doorbell import bind_doorbell
from server.bus.segment import MAX_SLOTS, Segment, SegmentLayout, segment_path
from server.config import Config, per_worker_connection_limit, resolve_worker_count
from server.listeners import slot_sockets

log = logging.getLogger("wsd.supervisor")

CRASH_LOOP_RUNS = 5  # this many short-lived runs in a row is a crash loop
SHORT_RUN_S = 10.0  # a worker that exits sooner than this counts as a failed start
BACKOFF_BASE_S = 0.1
BACKOFF_MAX_S = 30.0
LOOP_TIMEOUT_S = 0.5


@dataclass
class WorkerSlot:
    """A numbered slot: its sockets and segment outlive the worker processes that fill it."""

    index: int
    ws_socket: Any
    api_socket: Any
    doorbell: Any
    segment: Segment
    process: subprocess.Popen | None = None
    started_at: float = 0.0
    state: str = "starting"
    restarts: int = 0
    failed_runs: int = 0  # consecutive short runs
    spawn_at: float = 0.0
    last_exit: str = ""
    psutil_process: Any = None
    exits: deque = field(default_factory=lambda: deque(maxlen=20))


class Supervisor:
    def __init__(self, config: Config):
        self.config = config
        self.workers = resolve_worker_count(config)
        if self.workers > MAX_SLOTS:
            raise SystemExit(f"wsd: {self.workers} workers requested; at most {MAX_SLOTS} are supported")
        self.connection_limit = per_worker_connection_limit(config, self.workers)
        self.run_id = f"{os.getpid()}{secrets.token_hex(2)}"
        self.epoch = secrets.randbits(31) | 1
        self.slots: list[WorkerSlot] = []
        self.signal_queue: list[int] = []
        self.state = "starting"
        self.started_at = time.time()
        self.stop_deadline: float | None = None
        self.exit_code = 0
        self.admin: AdminServer | None = None

    # -- set-up --

    def setup(self) -> None:
        """Bind everything before starting any worker, so a bad port fails the whole start."""
        config = self.config
        ws_sockets = slot_sockets(config.host, config.port, self.workers)
        api_sockets = slot_sockets(config.api_host, config.api_port, self.workers)
        self.port = ws_sockets[0].getsockname()[1]
        self.api_port = api_sockets[0].getsockname()[1]
        self.admin = AdminServer(
            config.admin_socket,
            {"status": self.cmd_status, "publish": self.cmd_publish, "stop": self.cmd_stop},
        )
        _remove_stale_segments()
        layout = SegmentLayout(config.ring_size, config.channel_table_slots)
        for index in range(self.workers):
            segment = Segment.create(
                segment_path(self.run_id, index), index, self.workers, self.epoch, layout
            )
            self.slots.append(
                WorkerSlot(index, ws_sockets[index], api_sockets[index], bind_doorbell(self.run_id, index), segment)
            )
        self.pipe_r, self.pipe_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self.pipe_w)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGHUP):
            signal.signal(sig, self._queue_signal)
        log.info(
            "wsd listening on ws://%s:%d/ws, publish API on http://%s:%d, %d workers (up to %d connections each), "
            "admin socket %s",
            config.host, self.port, config.api_host, self.api_port, self.workers, self.connection_limit,
            config.admin_socket,
        )  # fmt: skip

    def _queue_signal(self, signum: int, _frame: Any) -> None:
        self.signal_queue.append(signum)

    # -- the loop --

    def run(self) -> int:
        self.setup()
        self.state = "running"
        try:
            self.manage_workers()
            while True:
                self.sleep()
                while self.signal_queue:
                    self.handle_signal(self.signal_queue.pop(0))
                self.reap_workers()
                if self.state == "stopping":
                    if self.all_workers_gone():
                        break
                    self.murder_workers_past_deadline()
                else:
                    self.manage_workers()
        finally:
            self.cleanup()
        log.info("wsd stopped")
        return self.exit_code

    def sleep(self) -> None:
        fds = [self.pipe_r] + (self.admin.readable_fds() if self.admin else [])
        try:
            ready, _, _ = select.select(fds, [], [], LOOP_TIMEOUT_S)
        except InterruptedError:
            return
        for fd in ready:
            if fd == self.pipe_r:
                try:
                    while os.read(self.pipe_r, 512):
                        pass
                except BlockingIOError:
                    pass
            else:
                self.admin.handle_readable(fd)

    def handle_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        handler = getattr(self, f"handle_{name.lower()}", None)
        if handler is not None:
            handler()

    def handle_sigchld(self) -> None:
        pass  # reap_workers() runs after every wake-up

    def handle_sigterm(self) -> None:
        self.stop(f"received {signal.Signals.SIGTERM.name}")

    def handle_sigint(self) -> None:
        self.stop(f"received {signal.Signals.SIGINT.name}")

    def handle_sighup(self) -> None:
        log.info("SIGHUP received; rolling reload is not implemented yet, ignoring")

    def stop(self, reason: str) -> None:
        if self.state == "stopping":
            log.warning("second stop request (%s): killing workers now", reason)
            for slot in self.slots:
                self._signal_worker(slot, signal.SIGKILL)
            self.exit_code = 1
            self.stop_deadline = 0.0
            return
        log.info("graceful stop (%s): closing clients with 1001, at most %gs", reason, self.config.stop_timeout)
        self.state = "stopping"
        self.stop_deadline = time.monotonic() + self.config.stop_timeout + 2.0
        for slot in self.slots:
            self._signal_worker(slot, signal.SIGTERM)

    def _signal_worker(self, slot: WorkerSlot, signum: int) -> None:
        if slot.process is not None and slot.process.poll() is None:
            try:
                slot.process.send_signal(signum)
            except ProcessLookupError:
                pass

    def all_workers_gone(self) -> bool:
        return all(slot.process is None for slot in self.slots)

    def murder_workers_past_deadline(self) -> None:
        if self.stop_deadline is not None and time.monotonic() > self.stop_deadline:
            for slot in self.slots:
                if slot.process is not None:
                    log.warning("worker %d did not stop in time; killing it", slot.index)
                    self._signal_worker(slot, signal.SIGKILL)
            self.stop_deadline = time.monotonic() + 5.0

    def reap_workers(self) -> None:
        for slot in self.slots:
            process = slot.process
            if process is None or process.poll() is None:
                continue
            code = process.returncode
            slot.process = None
            slot.psutil_process = None
            slot.last_exit = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
            slot.exits.append((time.time(), slot.last_exit))
            if self.state == "stopping":
                slot.state = "stopped"
                log.info("worker %d stopped (%s)", slot.index, slot.last_exit)
                continue
            ran_for = time.monotonic() - slot.started_at
            slot.failed_runs = slot.failed_runs + 1 if ran_for < SHORT_RUN_S else 0
            delay = 0.0 if slot.failed_runs == 0 else min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** (slot.failed_runs - 1))
            slot.spawn_at = time.monotonic() + delay
            if slot.failed_runs >= CRASH_LOOP_RUNS:
                slot.state = "crash-loop"
                log.error(
                    "worker %d is crash-looping: %d runs in a row ended within %gs of starting (last: %s); "
                    "next attempt in %.1fs. Check the worker log lines above.",
                    slot.index, slot.failed_runs, SHORT_RUN_S, slot.last_exit, delay,
                )  # fmt: skip
            else:
                slot.state = "dead"
                log.warning(
                    "worker %d (pid %d) died after %.1fs (%s); respawning in %.1fs",
                    slot.index, process.pid, ran_for, slot.last_exit, delay,
                )  # fmt: skip

    def manage_workers(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            if slot.process is None and now >= slot.spawn_at:
                self.spawn_worker(slot)

    def spawn_worker(self, slot: WorkerSlot) -> None:
        spec = {
            "slot": slot.index,
            "run_id": self.run_id,
            "config": self.config.to_dict(),
            "connection_limit": self.connection_limit,
            "ws_fd": slot.ws_socket.fileno(),
            "api_fd": slot.api_socket.fileno(),
            "bell_fd": slot.doorbell.fileno(),
            "segments": [s.segment.path for s in self.slots],
        }
        env = dict(os.environ, WSD_WORKER_SPEC=json.dumps(spec))
        fds = (slot.ws_socket.fileno(), slot.api_socket.fileno(), slot.doorbell.fileno())
        if slot.started_at:
            slot.restarts += 1
        slot.process = subprocess.Popen([sys.executable, "-m", "server.worker"], env=env, pass_fds=fds)
        slot.started_at = time.monotonic()
        if slot.state != "crash-loop":
            slot.state = "running"
        log.info("worker %d started (pid %d)", slot.index, slot.process.pid)

    def cleanup(self) -> None:
        signal.set_wakeup_fd(-1)
        if self.admin is not None:
            self.admin.close()
        for slot in self.slots:
            slot.segment.close()
            try:
                os.unlink(slot.segment.path)
            except FileNotFoundError:
                pass

    # -- admin commands --

    def cmd_status(self, _args: dict) -> dict:
        workers = []
        for slot in self.slots:
            stats = slot.segment.read_stats()
            pid = slot.process.pid if slot.process is not None else None
            alive = pid is not None and stats["pid"] == pid
            rss, cpu = 0, 0.0
            if pid is not None:
                try:
                    if slot.psutil_process is None or slot.psutil_process.pid != pid:
                        slot.psutil_process = psutil.Process(pid)
                        slot.psutil_process.cpu_percent(None)
                    rss = slot.psutil_process.memory_info().rss
                    cpu = slot.psutil_process.cpu_percent(None)
                except psutil.Error:
                    pass
            workers.append(
                {
                    "slot": slot.index,
                    "pid": pid,
                    "state": slot.state if alive or slot.state != "running" else "starting",
                    "accepting": bool(stats["accepting"]) if alive else False,
                    "connections": stats["connections"] if alive else 0,
                    "max_connections": self.connection_limit,
                    "channels": stats["channels"] if alive else 0,
                    "rss_bytes": rss,
                    "cpu_percent": cpu,
                    "msgs_in": stats["msgs_in"] if alive else 0,
                    "msgs_out": stats["msgs_out"] if alive else 0,
                    "bus_lag": stats["bus_lag"] if alive else 0,
                    "overruns": stats["overruns"] if alive else 0,
                    "lost_bytes": stats["lost_bytes"] if alive else 0,
                    "gaps": stats["gaps"] if alive else 0,
                    "slow_disconnects": stats["slow_disconnects"] if alive else 0,
                    "restarts": slot.restarts,
                    "last_exit": slot.last_exit or None,
                }
            )
        totals = {
            key: sum(w[key] for w in workers)
            for key in (
                "connections", "channels", "rss_bytes", "cpu_percent", "msgs_in", "msgs_out",
                "overruns", "slow_disconnects", "gaps",
            )
        }  # fmt: skip
        return {
            "supervisor": {
                "pid": os.getpid(),
                "uptime_s": round(time.time() - self.started_at, 3),
                "state": self.state,
                "epoch": self.epoch,
                "port": self.port,
                "api_port": self.api_port,
            },
            "workers": workers,
            "totals": totals,
        }

    def cmd_publish(self, args: dict) -> dict:
        channel, data = args.get("channel"), args.get("message")
        if not isinstance(channel, str) or "message" not in args:
            raise AdminCommandError('publish needs "channel" (a string) and "message" (any JSON value)')
        host = "127.0.0.1" if self.config.api_host in ("0.0.0.0", "") else self.config.api_host
        connection = http.client.HTTPConnection(host, self.api_port, timeout=5)
        try:
            connection.request(
                "POST", "/api/publish", json.dumps({"channel": channel, "data": data}),
                {"Content-Type": "application/json"},
            )  # fmt: skip
            response = connection.getresponse()
            body = json.loads(response.read() or b"{}")
        finally:
            connection.close()
        if response.status != 200:
            raise AdminCommandError(body.get("error", f"publish API answered HTTP {response.status}"))
        return {"offset": body["offset"], "channel": channel}

    def cmd_stop(self, _args: dict) -> dict:
        self.signal_queue.append(signal.SIGTERM)
        return {"stopping": True}


def _remove_stale_segments() -> None:
    """Remove bus segments left by a supervisor that died without cleaning up."""
    for path in glob.glob("/dev/shm/wsd-*-slot*"):
        run_id = path.split("-")[1]
        pid = int(run_id[:-4]) if run_id[:-4].isdigit() else 0
        if pid and not psutil.pid_exists(pid):
            try:
                os.unlink(path)
            except OSError:
                pass
