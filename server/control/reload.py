"""The rolling reload: replace every slot's worker process with a new one, one slot at a time, losing
no message and no connection.

For each slot in turn: start a new process on a spare bus slot (stand-by: no role yet); once it
accepts on the slot's socket, the old one is told to drain with a hand-over (SIGUSR1: it stops
accepting at once and moves its clients with 1012 over the drain window) and joins the slot's
retiring processes. The old process's role passes to the new one when it exits (the supervisor's
reaping does that). A new process that exits or is not ready in time stops the reload and the old
one keeps serving.

A reload asked for while one is in progress (including old processes still draining) is queued:
at most one waits, and it starts when the previous one is complete.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

from wsd.server.control.processes import WorkerProcess, WorkerSlot, describe_exit

log = logging.getLogger("wsd.supervisor")

READY_TIMEOUT_S = 30.0


@dataclass
class ReloadStep:
    slot: WorkerSlot
    new: WorkerProcess
    deadline: float


class RollingReload:
    def __init__(
        self,
        slots: list[WorkerSlot],
        spawn_standby: Callable[[WorkerSlot], WorkerProcess],
        serving: Callable[[WorkerProcess], bool],
        hand_over: Callable[[WorkerProcess], None],
    ):
        self.slots = slots
        self.spawn_standby = spawn_standby  # start a stand-by process for a slot
        self.serving = serving  # whether a process accepts on its slot's socket yet
        self.hand_over = hand_over  # tell an old process to drain with a hand-over
        self.queue: list[int] = []
        self.step: ReloadStep | None = None
        self.queued = False  # a reload asked for during this one
        self.count = 0

    @property
    def in_progress(self) -> bool:
        """Until every replaced process has drained and exited."""
        return bool(self.step or self.queue or any(slot.retiring for slot in self.slots))

    def request(self) -> bool:
        """Start a reload of every slot now, or queue it behind the one in progress (True)."""
        if self.in_progress:
            self.queued = True
            return True
        self._begin()
        return False

    def _begin(self) -> None:
        self.count += 1
        self.queue = [slot.index for slot in self.slots]

    def starting_process(self, slot: WorkerSlot) -> WorkerProcess | None:
        """The stand-by process being started for `slot`, if any."""
        step = self.step
        return step.new if step is not None and step.slot is slot else None

    def advance(self) -> None:
        """One look at the reload: start the next slot's new process, or hand over to it once it
        serves, or give up on it."""
        if self.step is None:
            self._start_next()
            return
        step = self.step
        new = step.new
        if not new.alive():
            log.error(
                "reload: the new worker for slot %d exited (%s); keeping the old one, reload stopped",
                step.slot.index, describe_exit(new.popen.returncode),
            )  # fmt: skip
            step.slot.retiring.append(new)  # reaped like any retiring process (its counts kept)
            self._stop()
        elif self.serving(new):
            # The new process accepts on the slot's socket: only now may the old one stop.
            old = step.slot.current
            step.slot.current = new
            new.state = "running"
            if old is not None:
                old.state = "draining"
                step.slot.retiring.append(old)
                self.hand_over(old)
                log.info("reload: slot %d now served by pid %d; pid %d drains", step.slot.index, new.pid, old.pid)
            self.step = None
            if not self.queue:
                log.info("reload: every slot has a new worker")
        elif time.monotonic() > step.deadline:
            log.error(
                "reload: the new worker for slot %d was not ready in %gs; keeping the old one",
                step.slot.index, READY_TIMEOUT_S,
            )  # fmt: skip
            new.kill()
            step.slot.retiring.append(new)  # reaped like any retiring process
            self._stop()

    def _start_next(self) -> None:
        while self.queue:
            slot = self.slots[self.queue.pop(0)]
            if slot.current is None:
                continue  # a dead slot is respawned with the new code anyway
            new = self.spawn_standby(slot)
            self.step = ReloadStep(slot, new, time.monotonic() + READY_TIMEOUT_S)
            return
        if self.queued and not self.in_progress:
            self.queued = False
            log.info("reload: starting the reload that was asked for during the last one")
            self._begin()

    def _stop(self) -> None:
        self.step, self.queue, self.queued = None, [], False

    def abandon(self) -> None:
        """Stop reloading (the server stops or drains): a stand-by process is stopped with the rest."""
        step = self.step
        if step is not None:
            step.slot.retiring.append(step.new)
            step.new.signal(signal.SIGINT)
        self._stop()
