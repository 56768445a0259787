"""The supervisor: owns the slots (listening sockets) and the bus (segments, doorbells), runs the
worker processes, drains and reloads them, answers the admin socket.

It reads like gunicorn's arbiter: signal handlers only queue the signal and wake the loop through
a pipe; the loop then calls `handle_<signal>()`, `reap_workers()`, `advance_reload()` and
`manage_workers()`.

Slots and bus slots: slot k owns the k-th SO_REUSEPORT socket of each port, for good, so the
kernel's reuseport group never changes and queued connections are never reset. A process also
takes a bus slot (its ring), out of twice as many as there are slots, so that during a rolling
reload the new process of a slot can join the bus while the old one still drains its clients.
Role k (sequencing the channels with hash % workers == k) passes from the old process to the new
one when the old one exits.
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
from dataclasses import dataclass, field
from typing import Any

import psutil

from wsd.server.admin import AdminCommandError, AdminServer
from wsd.server.bus.doorbell import bind_doorbell
from wsd.server.bus.segment import MAX_SLOTS, Segment, SegmentLayout, segment_path
from wsd.server.bus.status import bus_status
from wsd.server.config import (
    Config,
    ConfigError,
    build_config,
    load_toml,
    per_worker_connection_limit,
    resolve_worker_count,
)
from wsd.server.listeners import reuseport_socket, slot_sockets

log = logging.getLogger("wsd.supervisor")

CRASH_LOOP_RUNS = 5  # this many short-lived runs in a row is a crash loop
SHORT_RUN_S = 10.0  # a worker that exits sooner than this counts as a failed start
BACKOFF_BASE_S = 0.1
BACKOFF_MAX_S = 30.0
LOOP_TIMEOUT_S = 0.5
BUSY_LOOP_TIMEOUT_S = 0.05  # while a reload waits for a new process
RELOAD_READY_TIMEOUT_S = 30.0
STATS_FRESH_S = 2.0
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

    @property
    def pid(self) -> int:
        return self.popen.pid


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


@dataclass
class ReloadStep:
    slot: WorkerSlot
    new: WorkerProcess
    deadline: float


class Supervisor:
    def __init__(self, config: Config, config_file: str | None = None, flag_settings: dict | None = None):
        self.config = config
        self.config_file = config_file
        self.flag_settings = flag_settings or {}
        self.workers = resolve_worker_count(config)
        if 2 * self.workers > MAX_SLOTS:
            raise SystemExit(f"wsd: {self.workers} workers requested; at most {MAX_SLOTS // 2} are supported")
        self.connection_limit = per_worker_connection_limit(config, self.workers)
        self.run_id = f"{os.getpid()}{secrets.token_hex(2)}"
        self.epoch = secrets.randbits(31) | 1
        self.slots: list[WorkerSlot] = []
        self.segments: list[Segment] = []
        self.doorbells: list[Any] = []
        self.signal_queue: list[int] = []
        self.state = "starting"
        self.started_at = time.time()
        self.stop_deadline: float | None = None
        self.exit_code = 0
        self.admin: AdminServer | None = None
        self.reload_queue: list[int] = []
        self.reload_step: ReloadStep | None = None
        self.reloads = 0

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
            {
                "status": self.cmd_status,
                "publish": self.cmd_publish,
                "stop": self.cmd_stop,
                "drain": self.cmd_drain,
                "reload": self.cmd_reload,
            },
        )
        _remove_stale_segments()
        layout = SegmentLayout(config.ring_size, config.channel_table_slots)
        for bus_slot in range(2 * self.workers):
            path = segment_path(self.run_id, bus_slot)
            self.segments.append(Segment.create(path, bus_slot, self.workers, self.epoch, layout))
            self.doorbells.append(bind_doorbell(self.run_id, bus_slot))
        self.slots = [WorkerSlot(i, ws_sockets[i], api_sockets[i]) for i in range(self.workers)]
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
                if self.state in ("stopping", "draining"):
                    if not self.live_processes():
                        break
                    self.murder_workers_past_deadline()
                else:
                    self.advance_reload()
                    self.manage_workers()
        finally:
            self.cleanup()
        log.info("wsd stopped")
        return self.exit_code

    def sleep(self) -> None:
        fds = [self.pipe_r] + (self.admin.readable_fds() if self.admin else [])
        timeout = BUSY_LOOP_TIMEOUT_S if self.reload_step or self.reload_queue else LOOP_TIMEOUT_S
        try:
            ready, _, _ = select.select(fds, [], [], timeout)
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
        handler = getattr(self, f"handle_{signal.Signals(signum).name.lower()}", None)
        if handler is not None:
            handler()

    def handle_sigchld(self) -> None:
        pass  # reap_workers() runs after every wake-up

    def handle_sigterm(self) -> None:
        self.drain(self.config.drain_window, "received SIGTERM")

    def handle_sigint(self) -> None:
        self.stop("received SIGINT")

    def handle_sighup(self) -> None:
        self.reload("received SIGHUP")

    def live_processes(self) -> list[WorkerProcess]:
        processes = []
        for slot in self.slots:
            processes.extend(slot.retiring)
            if slot.current is not None:
                processes.append(slot.current)
        return processes

    def _signal(self, process: WorkerProcess, signum: int) -> None:
        if process.popen.poll() is None:
            try:
                process.popen.send_signal(signum)
            except ProcessLookupError:
                pass

    # -- stop and drain --

    def stop(self, reason: str) -> None:
        """Quick graceful stop: every client gets 1001; a second request kills the workers."""
        if self.state == "stopping":
            log.warning("second stop request (%s): killing workers now", reason)
            for process in self.live_processes():
                self._signal(process, signal.SIGKILL)
            self.exit_code = 1
            return
        log.info("graceful stop (%s): closing clients with 1001, at most %gs", reason, self.config.stop_timeout)
        self.state = "stopping"
        self._abandon_reload()
        self.stop_deadline = time.monotonic() + self.config.stop_timeout + 2.0
        for process in self.live_processes():
            self._signal(process, signal.SIGINT)

    def drain(self, window_s: float, reason: str) -> None:
        """Drain the whole server: /healthz and new handshakes answer 503, clients are closed
        with 1012 spread over the window, then wsd exits 0. Again: finish promptly (1001)."""
        if self.state == "draining":
            log.info("second drain request (%s): closing the remaining clients now", reason)
            for slot in self.slots:
                if slot.current is not None:
                    self._signal(slot.current, signal.SIGTERM)
            return
        if self.state == "stopping":
            return
        log.info("draining (%s): clients closed with 1012 over %gs, then exit", reason, window_s)
        self.state = "draining"
        self._abandon_reload()
        self.stop_deadline = time.monotonic() + window_s + self.config.stop_timeout + 5.0
        for slot in self.slots:
            process = slot.current
            if process is not None:
                self.segments[process.bus_slot].set_drain_window_s(window_s)
                process.state = "draining"
                self._signal(process, signal.SIGTERM)

    def murder_workers_past_deadline(self) -> None:
        if self.stop_deadline is not None and time.monotonic() > self.stop_deadline:
            for process in self.live_processes():
                log.warning("worker %d (pid %d) did not stop in time; killing it", process.slot, process.pid)
                self._signal(process, signal.SIGKILL)
            self.stop_deadline = time.monotonic() + 5.0

    # -- rolling reload --

    def reload(self, reason: str) -> dict:
        if self.state != "running":
            raise AdminCommandError(f"cannot reload while {self.state}")
        if self.reload_step is not None or self.reload_queue:
            raise AdminCommandError("a reload is already in progress")
        self._reload_config()
        self.reloads += 1
        self.reload_queue = list(range(self.workers))
        log.info("rolling reload (%s): replacing %d workers one slot at a time", reason, self.workers)
        return {"reloading": True, "workers": self.workers}

    def _reload_config(self) -> None:
        """New processes get the config file's current settings (flags still win)."""
        if not self.config_file:
            return
        try:
            config = build_config(load_toml(self.config_file), self.flag_settings)
        except ConfigError as exc:
            raise AdminCommandError(f"reload refused, the config file is invalid: {exc}") from None
        fixed = ("host", "port", "api_host", "api_port", "workers", "admin_socket", "ring_size", "channel_table_slots")
        for name in fixed:
            if getattr(config, name) != getattr(self.config, name):
                log.warning("reload: %s changed in %s; it takes a full restart, keeping the old value", name,
                            self.config_file)
                setattr(config, name, getattr(self.config, name))
        self.config = config

    def advance_reload(self) -> None:
        step = self.reload_step
        if step is None:
            while self.reload_queue:
                slot = self.slots[self.reload_queue.pop(0)]
                if slot.current is None:
                    continue  # a dead slot is respawned with the new code anyway
                new = self.spawn_worker(slot, standby=True)
                self.reload_step = ReloadStep(slot, new, time.monotonic() + RELOAD_READY_TIMEOUT_S)
                return
            return
        new = step.new
        if new.popen.poll() is not None:
            log.error("reload: the new worker for slot %d exited (%s); keeping the old one, reload stopped",
                      step.slot.index, _describe_exit(new.popen.returncode))
            self.reload_step, self.reload_queue = None, []
            return
        stats = self.segments[new.bus_slot].read_stats()
        if stats["pid"] == new.pid and stats["accepting"]:
            # The new process accepts on the slot's socket: only now may the old one stop.
            old = step.slot.current
            step.slot.current = new
            new.state = "running"
            old.state = "draining"
            step.slot.retiring.append(old)
            self.segments[old.bus_slot].set_drain_window_s(self.config.drain_window)
            self._signal(old, signal.SIGUSR1)
            log.info("reload: slot %d now served by pid %d; pid %d drains over %gs",
                     step.slot.index, new.pid, old.pid, self.config.drain_window)
            self.reload_step = None
            if not self.reload_queue:
                log.info("reload: every slot has a new worker")
        elif time.monotonic() > step.deadline:
            log.error("reload: the new worker for slot %d was not ready in %gs; keeping the old one",
                      step.slot.index, RELOAD_READY_TIMEOUT_S)
            self._signal(new, signal.SIGKILL)
            self.reload_step, self.reload_queue = None, []

    def _reload_in_progress(self) -> bool:
        """Until every replaced process has drained and exited."""
        return bool(self.reload_step or self.reload_queue or any(slot.retiring for slot in self.slots))

    def _abandon_reload(self) -> None:
        step = self.reload_step
        if step is not None:
            step.slot.retiring.append(step.new)  # stopped along with the rest
        self.reload_step, self.reload_queue = None, []

    # -- processes --

    def reap_workers(self) -> None:
        for slot in self.slots:
            for process in list(slot.retiring):
                if process.popen.poll() is not None:
                    slot.retiring.remove(process)
                    log.info("worker %d old process %d exited (%s)", slot.index, process.pid,
                             _describe_exit(process.popen.returncode))
                    self._pass_on_role(process)
            step = self.reload_step
            if step is not None and step.slot is slot and step.new.popen.poll() is not None:
                continue  # advance_reload() reports it
            process = slot.current
            if process is None or process.popen.poll() is None:
                continue
            code = process.popen.returncode
            slot.current = None
            slot.last_exit = _describe_exit(code)
            self._pass_on_role(process)
            if self.state in ("stopping", "draining"):
                slot.state = "stopped"
                log.info("worker %d stopped (%s)", slot.index, slot.last_exit)
                continue
            ran_for = time.monotonic() - process.started_at
            slot.failed_runs = slot.failed_runs + 1 if ran_for < SHORT_RUN_S else 0
            delay = 0.0 if slot.failed_runs == 0 else min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** (slot.failed_runs - 1))
            slot.spawn_at = time.monotonic() + delay
            if slot.failed_runs >= CRASH_LOOP_RUNS:
                slot.state = "crash-loop"
                self._leave_reuseport_group(slot)
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

    def _pass_on_role(self, gone: WorkerProcess) -> None:
        """A process that sequenced a role is gone: its slot's current process takes the role."""
        if gone.role is None:
            return
        role = gone.role
        gone.role = None
        heir = self.slots[role].current
        if heir is None or heir.popen.poll() is not None:
            return  # the respawn takes the role when it starts
        if heir.role is None:
            heir.role = role
            self.segments[heir.bus_slot].set_role_to_take(role)
            self._signal(heir, signal.SIGUSR2)
            log.info("worker %d: role %d passes to pid %d", role, role, heir.pid)

    def _role_is_held(self, role: int) -> bool:
        return any(p.role == role for p in self.live_processes())

    def _free_bus_slot(self, slot: WorkerSlot) -> int:
        used = {p.bus_slot for p in self.live_processes()}
        for candidate in (slot.index, slot.index + self.workers, *range(2 * self.workers)):
            if candidate not in used:
                return candidate
        raise RuntimeError("no free bus slot")  # cannot happen: at most two processes a slot

    def manage_workers(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            if slot.current is None and now >= slot.spawn_at and self.state == "running":
                slot.current = self.spawn_worker(slot, standby=False)

    def _leave_reuseport_group(self, slot: WorkerSlot) -> None:
        """A crash-looping slot would leave its share of new connections waiting in its queue:
        close its sockets so the kernel spreads them over the other workers meanwhile."""
        if slot.ws_socket is None:
            return
        slot.ws_socket.close()
        slot.api_socket.close()
        slot.ws_socket = slot.api_socket = None
        log.warning("worker %d: slot taken out of the listening group until a worker for it starts", slot.index)

    def spawn_worker(self, slot: WorkerSlot, standby: bool) -> WorkerProcess:
        if slot.ws_socket is None:  # rejoin the reuseport group (see _leave_reuseport_group)
            slot.ws_socket = reuseport_socket(self.config.host, self.port)
            slot.api_socket = reuseport_socket(self.config.api_host, self.api_port)
        bus_slot = self._free_bus_slot(slot)
        role = None if standby or self._role_is_held(slot.index) else slot.index
        spec = {
            "slot": slot.index,
            "bus_slot": bus_slot,
            "role": role,
            "run_id": self.run_id,
            "supervisor_pid": os.getpid(),
            "config": self.config.to_dict(),
            "connection_limit": self.connection_limit,
            "ws_fd": slot.ws_socket.fileno(),
            "api_fd": slot.api_socket.fileno(),
            "bell_fd": self.doorbells[bus_slot].fileno(),
            "segments": [segment.path for segment in self.segments],
        }
        self.segments[bus_slot].set_role_to_take(None)
        self.segments[bus_slot].set_drain_window_s(0)
        env = dict(os.environ, WSD_WORKER_SPEC=json.dumps(spec))
        fds = (slot.ws_socket.fileno(), slot.api_socket.fileno(), self.doorbells[bus_slot].fileno())
        popen = subprocess.Popen(WORKER_COMMAND, env=env, pass_fds=fds)
        if not standby and slot.state in ("dead", "crash-loop"):
            slot.restarts += 1
        if slot.state != "crash-loop":
            slot.state = "running"
        process = WorkerProcess(slot.index, bus_slot, popen, role)
        log.info("worker %d started (pid %d, bus slot %d%s)", slot.index, popen.pid, bus_slot,
                 ", stand-by for a reload" if standby else "")
        return process

    def cleanup(self) -> None:
        signal.set_wakeup_fd(-1)
        if self.admin is not None:
            self.admin.close()
        for segment in self.segments:
            segment.close()
            try:
                os.unlink(segment.path)
            except FileNotFoundError:
                pass

    # -- admin commands --

    def _process_status(self, slot: WorkerSlot, process: WorkerProcess | None) -> dict:
        stats = self.segments[process.bus_slot].read_stats() if process is not None else {}
        alive = process is not None and stats.get("pid") == process.pid
        rss, cpu = 0, 0.0
        if process is not None:
            try:
                if process.psutil_process is None:
                    process.psutil_process = psutil.Process(process.pid)
                    process.psutil_process.cpu_percent(None)
                rss = process.psutil_process.memory_info().rss
                cpu = process.psutil_process.cpu_percent(None)
            except psutil.Error:
                pass
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

        def stat(name: str) -> int:
            return stats.get(name, 0) if alive else 0

        return {
            "slot": slot.index,
            "pid": process.pid if process is not None else None,
            "bus_slot": process.bus_slot if process is not None else None,
            "role": process.role if process is not None else None,
            "state": state,
            "accepting": bool(stat("accepting")),
            "connections": stat("connections"),
            "max_connections": self.connection_limit,
            "channels": stat("channels"),
            "rss_bytes": rss,
            "cpu_percent": cpu,
            "msgs_in": stat("msgs_in"),
            "msgs_out": stat("msgs_out"),
            "bus_lag": stat("bus_lag"),
            "overruns": stat("overruns"),
            "lost_bytes": stat("lost_bytes"),
            "gaps": stat("gaps"),
            "slow_disconnects": stat("slow_disconnects"),
            "handshakes_refused": stat("handshakes_refused"),
            "bad_entries": stat("bad_entries"),
            "draining": bool(stat("draining")),
            "drain_remaining": stat("drain_remaining"),
            "restarts": slot.restarts,
            "last_exit": slot.last_exit or None,
            **self._bus_status(process),
        }

    def _bus_status(self, process: WorkerProcess | None) -> dict:
        if process is None:
            return bus_status(self.segments, 0, None, time.time_ns()) | {"history_horizon_s": None}
        return bus_status(self.segments, process.bus_slot, process.role, time.time_ns())

    def cmd_status(self, _args: dict) -> dict:
        workers = []
        for slot in self.slots:
            workers.append(self._process_status(slot, slot.current))
            step = self.reload_step
            if step is not None and step.slot is slot:
                workers.append(self._process_status(slot, step.new))
            workers.extend(self._process_status(slot, process) for process in slot.retiring)
        totals = {
            key: sum(w[key] for w in workers)
            for key in (
                "connections", "channels", "rss_bytes", "cpu_percent", "msgs_in", "msgs_out",
                "overruns", "slow_disconnects", "gaps", "drain_remaining",
            )
        }  # fmt: skip
        return {
            "supervisor": {
                "pid": os.getpid(),
                "uptime_s": round(time.time() - self.started_at, 3),
                "state": "reloading" if self.state == "running" and self._reload_in_progress() else self.state,
                "epoch": self.epoch,
                "port": self.port,
                "api_port": self.api_port,
                "reloads": self.reloads,
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
        self.signal_queue.append(signal.SIGINT)
        return {"stopping": True}

    def cmd_drain(self, args: dict) -> dict:
        window = args.get("window_s", self.config.drain_window)
        if not isinstance(window, (int, float)) or window < 0:
            raise AdminCommandError(f"drain window must be a number of seconds >= 0, got {window!r}")
        self.drain(float(window), "wsd ctl drain")
        return {"draining": True, "window_s": float(window)}

    def cmd_reload(self, _args: dict) -> dict:
        return self.reload("wsd ctl reload")


def _describe_exit(code: int) -> str:
    return f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"


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
