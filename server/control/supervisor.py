"""The supervisor: owns the slots (listening sockets) and the bus (segments, doorbells), runs the
worker processes, drains and reloads them, answers the admin socket.

It reads like gunicorn's arbiter: signal handlers only queue the signal and wake the loop through
a pipe; the loop is a list of verbs (handle the queued signals, reap, watch heartbeats, advance the
reload, spawn), and no error inside one of them ends the loop.

Slots and bus slots: slot k owns the k-th SO_REUSEPORT socket of each port, for good, so the
kernel's reuseport group never changes and queued connections are never reset. A process also
takes a bus slot (its ring), out of twice as many as there are slots, so that during a rolling
reload the new process of a slot can join the bus while the old one still drains its clients.
Role k (sequencing the channels with hash % workers == k) passes from the old process to the new
one when the old one exits.

Operations: the supervisor writes what only it knows into the supervisor areas of the segments
(restarts, memory and CPU per slot, the counts of exited processes, the log level; see
wsd.server.stats), so the worker that answers `/metrics` reads the whole server from shared memory;
it tells systemd when the server is ready, reloading and stopping (wsd.server.sd_notify); it
creates the private directory of the workers' intercom sockets, through which `wsd ctl` reaches
the server API.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import math
import os
import select
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from typing import Any

import psutil

from wsd.server.bus.provision import Bus, BusSetupError
from wsd.server.bus.segment import HASH_SECRET_SIZE, MAX_SLOTS, Segment, SegmentLayout
from wsd.server.cluster.host import make_status_dir, merge, read_statuses, remove_status_dir
from wsd.server.control.admin import AdminCommandError, AdminServer
from wsd.server.control.config import (
    Config,
    ConfigError,
    build_config,
    load_toml,
    per_worker_api_connection_limit,
    per_worker_connection_limit,
    resolve_worker_count,
)
from wsd.server.control.listeners import reuseport_socket, slot_sockets
from wsd.server.control.processes import WorkerProcess, WorkerSlot, describe_exit, start_worker_process
from wsd.server.control.reload import RollingReload
from wsd.server.control.security import exposure_checks, load_security
from wsd.server.control.status import totals, workers_status
from wsd.server.logs import current_level, flush_suppressed, level_number, set_level, setup_logging
from wsd.server.sd_notify import Notifier
from wsd.server.worker.address_limits import create_counts_memfd, zero_region
from wsd.server.worker.intercom_wire import ASK_TIMEOUT_S, IntercomError, ask_blocking

log = logging.getLogger("wsd.supervisor")

CRASH_LOOP_RUNS = 5  # this many short-lived runs in a row is a crash loop
SHORT_RUN_S = 10.0  # a worker that exits sooner than this counts as a failed start
LEAVE_GROUP_AFTER_S = 1.0  # a respawn back-off this long takes the slot out of the listening group
BACKOFF_BASE_S = 0.1
BACKOFF_MAX_S = 30.0
LOOP_TIMEOUT_S = 0.5
BUSY_LOOP_TIMEOUT_S = 0.05  # while a reload waits for a new process
STARTUP_TIMEOUT_S = 30.0  # a new worker gets at least this long to write its first heartbeat
RETIRE_GRACE_S = 10.0  # a retiring process gets its drain window, the stop timeout and this
USAGE_EVERY_S = 1.0  # how often RSS and CPU of the workers are sampled for /metrics
DRAIN_STATUS_EVERY_S = 5.0  # STATUS= to systemd while draining
# Settings a reload cannot change: they are built into sockets and segments.
FIXED_ON_RELOAD = (
    "host", "port", "api_host", "api_port", "workers", "admin_socket", "ring_size", "channel_table_slots",
)  # fmt: skip
# `wsd ctl` commands that are the server API's operations (carried out by the workers).
SERVER_API_COMMANDS = ("disconnect", "unsubscribe", "channels")
# Handled by the loop; SIGUSR1 and SIGUSR2 are only logged (they must not kill the supervisor).
HANDLED_SIGNALS = (
    signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGCHLD, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2,
)  # fmt: skip


class Supervisor:
    def __init__(
        self, config: Config, config_file: str | None = None, flag_settings: dict | None = None,
        api_key: bytes | None = None,
    ):  # fmt: skip
        self.config = config
        self.api_key = api_key  # `ctl publish` goes through the publish API, which may want it
        self.config_file = config_file
        self.flag_settings = flag_settings or {}
        self.workers = resolve_worker_count(config)
        if 2 * self.workers > MAX_SLOTS:
            raise SystemExit(f"wsd: {self.workers} workers requested; at most {MAX_SLOTS // 2} are supported")
        self.connection_limit = per_worker_connection_limit(config, self.workers)
        # os.urandom, as the secrets module reads it (importing secrets loads OpenSSL, through hmac).
        self.run_id = f"{os.getpid()}{os.urandom(2).hex()}"
        self.epoch = int.from_bytes(os.urandom(4), "little") >> 1 | 1
        self.slots: list[WorkerSlot] = []
        self.bus: Bus | None = None
        self.segments: list[Segment] = []
        self.signal_queue: list[int] = []
        self.state = "starting"
        self.started_at = time.time()
        self.stop_deadline: float | None = None
        self.exit_code = 0
        self.admin: AdminServer | None = None
        self.reload = RollingReload(self.slots, self._spawn_standby, self._serving, self._hand_over)
        # --cluster: one node id per run for all the host's workers, and where they report their state.
        self.cluster_node_id = _new_node_id() if config.cluster else None
        self.cluster_status_dir: str | None = None
        # Taken from the environment now, so that no worker inherits $NOTIFY_SOCKET.
        self.notifier = Notifier.from_environment()
        self.ready_notified = False
        self.reload_notified = False  # RELOADING=1 sent, READY=1 owed when the reload is over
        self.intercom_dir: str | None = None
        self._usage_at = 0.0
        self._flushed_at = 0.0
        self._drain_status_at = 0.0

    # -- set-up --

    def setup(self) -> None:
        """Bind everything before starting any worker, so a bad port fails the whole start."""
        config = self.config
        self.setup_bus()
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
                "log-level": self.cmd_log_level,
                **{op: lambda args, op=op: self.cmd_server_api(op, args) for op in SERVER_API_COMMANDS},
            },
        )
        if config.cluster:
            self.cluster_status_dir = make_status_dir(self.run_id)
        server = self.segments[0].supervisor
        server.put("start_time_ms", int(self.started_at * 1000))
        server.put("log_level", level_number(config.log_level))
        # 0700: only the server's user may reach the workers' intercom sockets (they disconnect users).
        _remove_stale_intercom_dirs()
        self.intercom_dir = tempfile.mkdtemp(prefix=f"wsd-{self.run_id}-")
        self.slots.extend(WorkerSlot(i, ws_sockets[i], api_sockets[i]) for i in range(self.workers))
        self.pipe_r, self.pipe_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self.pipe_w)
        for sig in HANDLED_SIGNALS:
            signal.signal(sig, self._queue_signal)
        log.info(
            "wsd listening on ws://%s:%d/ws, publish API on http://%s:%d, %d workers (up to %d connections each), "
            "admin socket %s",
            config.host, self.port, config.api_host, self.api_port, self.workers, self.connection_limit,
            config.admin_socket,
        )  # fmt: skip

    def setup_bus(self) -> None:
        """The bus first: reserving its memory is what most often cannot be done, and failing
        here leaves nothing behind (docs/bus.md, "Shared memory")."""
        layout = SegmentLayout(self.config.ring_size, self.config.channel_table_slots)
        hash_secret = os.urandom(HASH_SECRET_SIZE)  # channel identity, per server (docs/bus.md)
        try:
            self.bus = Bus.create(self.workers, layout, self.epoch, hash_secret)
        except BusSetupError as exc:
            raise SystemExit(f"wsd: {exc}") from None
        self.segments = self.bus.segments
        # Per-address connection counts (--max-connections-per-ip), made always so a reload can turn
        # the limit on; a worker touches its pages only when it counts.
        self.address_counts_fd, self.address_counts_secret = create_counts_memfd(2 * self.workers)
        log.info(
            "bus: %d MiB of shared memory reserved (%d bus slots of %.1f MiB)",
            self.bus.memory_bytes // (1 << 20), len(self.segments), layout.size / (1 << 20),
        )  # fmt: skip

    def _queue_signal(self, signum: int, _frame: Any) -> None:
        self.signal_queue.append(signum)

    # -- the loop --

    def run(self) -> int:
        self.setup()
        self.state = "running"
        try:
            self.step(self.manage_workers)
            while not self.finished():
                self.sleep()
                self.step(self.handle_signals)
                self.step(self.reap_workers)
                self.step(self.murder_workers)
                if self.state == "running":
                    self.step(self.reload.advance)
                    self.step(self.manage_workers)
                self.step(self.notify_progress)
                self.step(self.sample_usage)
                self.step(self.flush_log)
        finally:
            self.cleanup()
        log.info("wsd stopped")
        return self.exit_code

    def step(self, verb: Callable[[], None]) -> None:
        """Run one verb of the loop; an error in it is logged, and the loop goes on."""
        try:
            verb()
        except Exception:
            log.exception("supervisor: %s failed; carrying on", getattr(verb, "__name__", verb))

    def finished(self) -> bool:
        return self.state in ("stopping", "draining") and not self.live_processes()

    def sleep(self) -> None:
        fds = [self.pipe_r] + (self.admin.readable_fds() if self.admin else [])
        timeout = BUSY_LOOP_TIMEOUT_S if self.reload.step or self.reload.queue else LOOP_TIMEOUT_S
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
                self.step(lambda fd=fd: self.admin.handle_readable(fd))

    def handle_signals(self) -> None:
        while self.signal_queue:
            signum = self.signal_queue.pop(0)
            self.step(getattr(self, f"handle_{signal.Signals(signum).name.lower()}"))

    def handle_sigchld(self) -> None:
        pass  # reap_workers() runs after every wake-up

    def handle_sigterm(self) -> None:
        self.drain(self.config.drain_window, "received SIGTERM")

    def handle_sigint(self) -> None:
        self.stop("received SIGINT")

    def handle_sigquit(self) -> None:
        self.stop("received SIGQUIT")

    def handle_sighup(self) -> None:
        try:
            self.start_reload("received SIGHUP")
        except AdminCommandError as exc:
            log.error("SIGHUP: %s; still serving with the current workers and config", exc)

    # -- what systemd, /metrics and the log see --

    def notify_progress(self) -> None:
        """READY=1 once every slot's worker serves (and again when a reload is over); while a
        drain goes on, how many clients are left."""
        if self.state == "running":
            if not self.ready_notified:
                if all(slot.current is not None and self._serving(slot.current) for slot in self.slots):
                    self.ready_notified = True
                    log.info("every worker serves (%d)", self.workers)
                    self.notifier.ready(f"serving: {self.workers} workers")
            elif self.reload_notified and not self.reload.in_progress:
                self.reload_notified = False
                self.notifier.ready(f"serving: {self.workers} workers (reload {self.reload.count} done)")
        elif self.state == "draining" and time.monotonic() - self._drain_status_at >= DRAIN_STATUS_EVERY_S:
            self._drain_status_at = time.monotonic()
            left = sum(self.segments[p.bus_slot].read_stats()["connections"] for p in self.live_processes())
            self.notifier.status(f"draining: {left} clients left")

    def sample_usage(self) -> None:
        """RSS and CPU of every slot's processes into the supervisor areas (once a second)."""
        now = time.monotonic()
        if now - self._usage_at < USAGE_EVERY_S:
            return
        self._usage_at = now
        per_slot: dict[int, list[WorkerProcess]] = {slot.index: [] for slot in self.slots}
        for process in self.live_processes():
            per_slot[process.slot].append(process)
        for slot in self.slots:
            rss = 0
            cpu = slot.exited_cpu_s
            for process in per_slot[slot.index]:
                try:
                    if process.psutil_process is None:
                        process.psutil_process = psutil.Process(process.pid)
                    with process.psutil_process.oneshot():
                        rss += process.psutil_process.memory_info().rss
                        times = process.psutil_process.cpu_times()
                    process.cpu_s = times.user + times.system
                except psutil.Error:
                    pass
                cpu += process.cpu_s
            area = self.segments[slot.index].supervisor
            area.put("rss_bytes", rss)
            area.put("cpu_ms", int(cpu * 1000))
            area.put("restarts", slot.restarts)
        self.segments[0].supervisor.put("reloads", self.reload.count)

    def flush_log(self) -> None:
        now = time.monotonic()
        if now - self._flushed_at >= 1.0:
            self._flushed_at = now
            flush_suppressed()

    def _retire(self, process: WorkerProcess) -> None:
        """An exited process's counts join its slot's retired counts and its block is freed, under
        the sequence lock readers honour (wsd.server.stats: SUPERVISOR_FIELDS)."""
        if process.retired:
            return
        process.retired = True
        self.slots[process.slot].exited_cpu_s += process.cpu_s
        segment = self.segments[process.bus_slot]
        stats = segment.read_stats()
        if stats["pid"] != process.pid:
            return  # it never wrote its block
        lock = self.segments[0].supervisor
        lock.put("generation", lock.get("generation") + 1)  # odd: moving
        self.segments[process.slot].supervisor.retire(stats)
        segment.stats.reset()
        lock.put("generation", lock.get("generation") + 1)  # even: done

    def handle_sigusr1(self) -> None:
        log.warning("received SIGUSR1: ignored (SIGHUP reloads, SIGTERM drains, SIGINT or SIGQUIT stop)")

    def handle_sigusr2(self) -> None:
        log.warning("received SIGUSR2: ignored (SIGHUP reloads, SIGTERM drains, SIGINT or SIGQUIT stop)")

    def live_processes(self) -> list[WorkerProcess]:
        processes = []
        for slot in self.slots:
            processes.extend(slot.retiring)
            if slot.current is not None:
                processes.append(slot.current)
            starting = self.reload.starting_process(slot)
            if starting is not None:
                processes.append(starting)
        return processes

    # -- stop and drain --

    def stop(self, reason: str) -> None:
        """Quick graceful stop: every client gets 1001; a second request kills the workers."""
        if self.state == "stopping":
            log.warning("second stop request (%s): killing workers now", reason)
            for process in self.live_processes():
                process.kill()
            self.exit_code = 1
            return
        log.info("graceful stop (%s): closing clients with 1001, at most %gs", reason, self.config.stop_timeout)
        self.state = "stopping"
        self.reload.abandon()
        self.stop_deadline = time.monotonic() + self.config.stop_timeout + 2.0
        self._notify_stopping("stopping: closing clients with 1001")
        for process in self.live_processes():
            process.signal(signal.SIGINT)

    def drain(self, window_s: float, reason: str) -> None:
        """Drain the whole server: /healthz and new handshakes answer 503, clients are closed
        with 1012 spread over the window, then wsd exits 0. Again: finish promptly (1001)."""
        if self.state == "draining":
            log.info("second drain request (%s): closing the remaining clients now", reason)
            for process in self.live_processes():
                process.signal(signal.SIGTERM)
            return
        if self.state == "stopping":
            return
        log.info("draining (%s): clients closed with 1012 over %gs, then exit", reason, window_s)
        self.state = "draining"
        self.reload.abandon()
        self.stop_deadline = time.monotonic() + max(window_s, self.config.lame_duck) + self.config.stop_timeout + 5.0
        self._notify_stopping(f"draining: clients closed with 1012 over {window_s:g} s")
        for slot in self.slots:
            process = slot.current
            if process is not None:
                self.segments[process.bus_slot].set_drain_window_s(window_s)
                process.state = "draining"
                process.signal(signal.SIGTERM)

    def _notify_stopping(self, status: str) -> None:
        # The stop may take until the workers are killed at the stop deadline, and a little for the
        # kill itself: ask for that much (it only ever extends TimeoutStopSec=, never shortens it).
        extend_us = int(max(0.0, self.stop_deadline - time.monotonic() + 5.0) * 1_000_000)
        self.notifier.notify("STOPPING=1", f"EXTEND_TIMEOUT_USEC={extend_us}", f"STATUS={status}")

    def murder_workers(self) -> None:
        """Kill what is past its time: everything at the stop deadline; a worker whose heartbeat is
        older than --worker-timeout (its loop hangs); a retiring process past its drain."""
        now = time.monotonic()
        if self.stop_deadline is not None and now > self.stop_deadline:
            for process in self.live_processes():
                log.warning("worker %d (pid %d) did not stop in time; killing it", process.slot, process.pid)
                process.kill()
            self.stop_deadline = now + 5.0
        timeout = self.config.worker_timeout
        now_ns = time.monotonic_ns()
        for process in self.live_processes():
            if not process.alive():
                continue
            stats = self.segments[process.bus_slot].read_stats()
            if stats["pid"] == process.pid:
                silent_s, limit = (now_ns - stats["heartbeat_ns"]) / 1e9, timeout
            else:
                # Not serving yet: its start counts, with room for a slow start on a loaded host.
                silent_s, limit = now - process.started_at, max(timeout, STARTUP_TIMEOUT_S)
            if silent_s > limit:
                log.error(
                    "worker %d (pid %d) has not written its heartbeat for %.1f s (--worker-timeout %g): "
                    "killing it; it is respawned", process.slot, process.pid, silent_s, timeout,
                )  # fmt: skip
                process.kill()
        retire_limit = self.config.drain_window + self.config.stop_timeout + RETIRE_GRACE_S
        for slot in self.slots:
            for process in slot.retiring:
                if process.alive() and now - process.retiring_since > retire_limit:
                    log.warning(
                        "worker %d old process %d still drains %.0f s after its hand-over: killing it",
                        slot.index, process.pid, now - process.retiring_since,
                    )  # fmt: skip
                    process.kill()

    # -- rolling reload --

    def start_reload(self, reason: str) -> dict:
        if self.state != "running":
            raise AdminCommandError(f"cannot reload while {self.state}")
        self._reload_config()
        queued = self.reload.request()
        if not self.reload_notified:
            self.reload_notified = True
            self.notifier.reloading(f"reloading: replacing {self.workers} workers")
        if queued:
            log.info("rolling reload (%s) queued: it starts when the reload in progress is complete", reason)
        else:
            log.info("rolling reload (%s): replacing %d workers one slot at a time", reason, self.workers)
        return {"reloading": True, "queued": queued, "workers": self.workers}

    def _reload_config(self) -> None:
        """New processes get the config file's current settings (flags still win); a config that
        does not load is refused and the running one kept."""
        if self.config_file:
            try:
                config = build_config(load_toml(self.config_file), self.flag_settings)
            except ConfigError as exc:
                raise AdminCommandError(f"reload refused, the config file is invalid: {exc}") from None
        else:
            config = dataclasses.replace(self.config)
        for name in FIXED_ON_RELOAD:
            if getattr(config, name) != getattr(self.config, name):
                log.warning(
                    "reload: %s changed in %s; it takes a full restart, keeping the old value", name, self.config_file
                )
                setattr(config, name, getattr(self.config, name))
        try:
            # New processes read the key, secret and certificate files again: check them first, so a
            # broken renewal leaves the running workers (and their keys) in place.
            security = load_security(config)
            exposure_checks(config, security)
        except ConfigError as exc:
            raise AdminCommandError(f"reload refused: {exc}") from None
        self.config = config
        self.api_key = security.api_key
        # The config's log settings apply again (a `wsd ctl log-level` change lasts until a reload).
        setup_logging(config.log_level, "supervisor", config.log_format)
        self.segments[0].supervisor.put("log_level", level_number(config.log_level))

    def _spawn_standby(self, slot: WorkerSlot) -> WorkerProcess:
        return self.spawn_worker(slot, standby=True)

    def _serving(self, process: WorkerProcess) -> bool:
        stats = self.segments[process.bus_slot].read_stats()
        return stats["pid"] == process.pid and bool(stats["accepting"])

    def _hand_over(self, old: WorkerProcess) -> None:
        old.retiring_since = time.monotonic()
        self.segments[old.bus_slot].set_drain_window_s(self.config.drain_window)
        old.signal(signal.SIGUSR1)

    # -- processes --

    def reap_workers(self) -> None:
        for slot in self.slots:
            for process in list(slot.retiring):
                if not process.alive():
                    slot.retiring.remove(process)
                    self._retire(process)
                    log.info(
                        "worker %d old process %d exited (%s)",
                        slot.index, process.pid, describe_exit(process.popen.returncode),
                    )  # fmt: skip
                    self._forget_process(process)
            process = slot.current
            if process is None or process.alive():
                continue
            code = process.popen.returncode
            slot.current = None
            slot.last_exit = describe_exit(code)
            self._retire(process)
            self._forget_process(process)
            if self.state in ("stopping", "draining"):
                slot.state = "stopped"
                log.info("worker %d stopped (%s)", slot.index, slot.last_exit)
                continue
            self._schedule_respawn(slot, process)

    def _schedule_respawn(self, slot: WorkerSlot, process: WorkerProcess) -> None:
        ran_for = time.monotonic() - process.started_at
        slot.failed_runs = slot.failed_runs + 1 if ran_for < SHORT_RUN_S else 0
        delay = 0.0 if slot.failed_runs == 0 else min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** (slot.failed_runs - 1))
        slot.spawn_at = time.monotonic() + delay
        if delay >= LEAVE_GROUP_AFTER_S:
            # Nobody accepts on the slot until the back-off ends: its share of new connections
            # would wait in the kernel's queue; let the other workers take them meanwhile. Not for
            # a shorter back-off: closing the sockets resets the connections already queued (an API
            # publish among them), and a new worker takes them within a second anyway.
            self._leave_reuseport_group(slot)
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

    def _forget_process(self, gone: WorkerProcess) -> None:
        """What a process leaves behind when it exits: its role passes on, its counts go."""
        self._pass_on_role(gone)
        zero_region(self.address_counts_fd, gone.bus_slot)

    def _pass_on_role(self, gone: WorkerProcess) -> None:
        """A process that sequenced a role is gone: its slot's current process takes the role."""
        if gone.role is None:
            return
        role = gone.role
        gone.role = None
        heir = self.slots[role].current
        if heir is None or not heir.alive():
            return  # the respawn takes the role when it starts
        if heir.role is None:
            heir.role = role
            self.segments[heir.bus_slot].set_role_to_take(role)
            heir.signal(signal.SIGUSR2)
            log.info("worker %d: role %d passes to pid %d", role, role, heir.pid)

    def _role_is_held(self, role: int) -> bool:
        return any(p.role == role for p in self.live_processes())

    def _free_bus_slot(self, slot: WorkerSlot) -> int:
        used = {p.bus_slot for p in self.live_processes()}
        for candidate in (slot.index, slot.index + self.workers, *range(2 * self.workers)):
            if candidate not in used:
                return candidate
        # At most two processes per slot are alive at once (a reload waits for the retiring ones).
        raise RuntimeError(f"no free bus slot for a new worker of slot {slot.index}")

    def manage_workers(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            if slot.current is None and now >= slot.spawn_at and self.state == "running":
                slot.current = self.spawn_worker(slot, standby=False)
            elif slot.current is not None and slot.failed_runs and now - slot.current.started_at >= SHORT_RUN_S:
                self._ran_long_enough(slot)

    def _ran_long_enough(self, slot: WorkerSlot) -> None:
        """The slot's worker outlived SHORT_RUN_S: its failed starts are behind it. A slot marked
        crash-loop was otherwise marked so for good, in `ctl status` and the metrics, however long
        its next worker then served (seen after 6 SIGKILLs in 45 s of `make chaos`)."""
        slot.failed_runs = 0
        if slot.state == "crash-loop":
            slot.state = "running"
            log.info("worker %d is running again after its crash loop (pid %d)", slot.index, slot.current.pid)

    def _leave_reuseport_group(self, slot: WorkerSlot) -> None:
        """A slot in respawn back-off would leave its share of new connections waiting in its queue:
        close its sockets so the kernel spreads them over the other workers meanwhile (connections
        already queued are reset, and their clients retry)."""
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
            "api_connection_limit": per_worker_api_connection_limit(self.config, self.workers),
            "ws_fd": slot.ws_socket.fileno(),
            "api_fd": slot.api_socket.fileno(),
            **self.bus.worker_spec(bus_slot),
            "cluster_node_id": self.cluster_node_id,
            "cluster_status_dir": self.cluster_status_dir,
            "address_counts_fd": self.address_counts_fd,
            "address_counts_secret": self.address_counts_secret.hex(),
            "intercom_dir": self.intercom_dir,
        }
        self.segments[bus_slot].set_role_to_take(None)
        self.segments[bus_slot].set_drain_window_s(None)
        fds = (
            slot.ws_socket.fileno(), slot.api_socket.fileno(), *self.bus.pass_fds(bus_slot), self.address_counts_fd,
        )  # fmt: skip
        popen = start_worker_process(spec, fds)
        if not standby and slot.state in ("dead", "crash-loop"):
            slot.restarts += 1
        if slot.state != "crash-loop":
            slot.state = "running"
        log.info(
            "worker %d started (pid %d, bus slot %d%s)",
            slot.index, popen.pid, bus_slot, ", stand-by for a reload" if standby else "",
        )  # fmt: skip
        return WorkerProcess(slot.index, bus_slot, popen, role)

    def cleanup(self) -> None:
        signal.set_wakeup_fd(-1)
        remove_status_dir(self.cluster_status_dir)
        if self.admin is not None:
            self.admin.close()
        if self.intercom_dir is not None:
            shutil.rmtree(self.intercom_dir, ignore_errors=True)
        if self.bus is not None:
            self.bus.close()  # memory only: gone once the workers are too

    # -- admin commands --

    def cmd_status(self, _args: dict) -> dict:
        starting = {}
        for slot in self.slots:
            process = self.reload.starting_process(slot)
            if process is not None:
                starting[slot.index] = process
        workers = workers_status(self.slots, starting, self.segments, self.connection_limit)
        state = self.state
        if state == "running" and self.reload.in_progress:
            state = "reloading"
        return {
            "supervisor": {
                "pid": os.getpid(),
                "uptime_s": round(time.time() - self.started_at, 3),
                "state": state,
                "log_level": current_level(),
                "epoch": self.epoch,
                "port": self.port,
                "api_port": self.api_port,
                "reloads": self.reload.count,
            },
            "workers": workers,
            "totals": totals(workers),
            **self._cluster_status(),
        }

    def _cluster_status(self) -> dict:
        """`cluster`: the host's Redis state merged from its processes' reports (with --cluster)."""
        if self.cluster_status_dir is None:
            return {}
        processes = self.live_processes()
        statuses = read_statuses(self.cluster_status_dir, [p.bus_slot for p in processes],
                                 {p.bus_slot: p.pid for p in processes})  # fmt: skip
        return {"cluster": merge(self.cluster_node_id, statuses)}

    def cmd_publish(self, args: dict) -> dict:
        channel, data = args.get("channel"), args.get("message")
        if not isinstance(channel, str) or "message" not in args:
            raise AdminCommandError('publish needs "channel" (a string) and "message" (any JSON value)')
        host = "127.0.0.1" if self.config.api_host in ("0.0.0.0", "") else self.config.api_host
        headers = {"Content-Type": "application/json"}
        if self.api_key is not None:
            headers["Authorization"] = f"Bearer {self.api_key.decode()}"
        # Imported here: only `wsd ctl publish` needs them (http.client brings the email package,
        # ssl OpenSSL: ~6 MiB of the supervisor's memory for a command most servers never get).
        import http.client

        if self.config.api_tls_cert is not None:
            import ssl

            # Our own listener, on this host: its certificate names the public host, not this address.
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            connection = http.client.HTTPSConnection(host, self.api_port, timeout=5, context=context)
        else:
            connection = http.client.HTTPConnection(host, self.api_port, timeout=5)
        try:
            connection.request("POST", "/api/publish", json.dumps({"channel": channel, "data": data}), headers)
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
        if not isinstance(window, int | float) or isinstance(window, bool) or not 0 <= window < math.inf:
            raise AdminCommandError(f"drain window must be a finite number of seconds >= 0, got {window!r}")
        self.drain(float(window), "wsd ctl drain")
        return {"draining": True, "window_s": float(window)}

    def cmd_reload(self, _args: dict) -> dict:
        return self.start_reload("wsd ctl reload")

    def cmd_log_level(self, args: dict) -> dict:
        """`wsd ctl log-level LEVEL`: the supervisor's level now, every worker's within a stats tick."""
        level = args.get("level")
        try:
            number = level_number(level.lower() if isinstance(level, str) else level)
        except ValueError as exc:
            raise AdminCommandError(str(exc)) from None
        previous = set_level(level.lower())
        self.segments[0].supervisor.put("log_level", number)
        log.info("log level %s (was %s), in every process", current_level(), previous)
        return {"level": current_level(), "previous": previous}

    def cmd_server_api(self, op: str, args: dict) -> dict:
        """`wsd ctl disconnect|unsubscribe|channels|channel`: the server API's operation, asked of one
        serving worker, which carries it out on every worker (wsd.server.worker.server_api)."""
        request = {key: value for key, value in args.items() if key in ("user", "channel") and value is not None}
        if op == "channels" and "channel" in request:
            op = "channel"  # `wsd ctl channels NAME`: one channel
        request.update(op=op, gather=True)
        workers = [p for p in self.live_processes() if self._serving(p)]
        if not workers:
            raise AdminCommandError("no worker serves right now; try again in a moment")
        try:
            return ask_blocking(self.intercom_dir, workers[0].bus_slot, request, ASK_TIMEOUT_S + 2.0)
        except IntercomError as exc:
            raise AdminCommandError(str(exc)) from None


def _remove_stale_intercom_dirs() -> None:
    """Remove the intercom directories of supervisors that died without cleaning up."""
    for path in glob.glob(os.path.join(tempfile.gettempdir(), "wsd-*-*")):
        run_id = os.path.basename(path).split("-")[1]
        pid = int(run_id[:-4]) if run_id[:-4].isdigit() else 0
        if pid and os.path.isdir(path) and not psutil.pid_exists(pid):
            shutil.rmtree(path, ignore_errors=True)


def _new_node_id() -> str:
    from wsd.server.cluster.client import new_node_id  # imports redis: only with --cluster

    return new_node_id()
