"""The bus's shared resources: made by the supervisor before any worker starts, inherited by the
workers as descriptors.

Nothing here has a name. A segment is a memfd (sealed at its size), a doorbell a datagram
socketpair, so no other local user can open, pre-create or flood them: only a process holding the
descriptor (or allowed to ptrace one that does) reaches them, and they vanish with the last
process holding them, so no segment outlives the server. Every segment's memory is allocated at
start, after checking that the host and the memory cgroup have that much: a bus that does not fit
fails at start with a message saying how much it needs, and never with SIGBUS in the middle of
traffic (as sparse files in a small /dev/shm did).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

from wsd.server.bus.doorbell import doorbell_pair
from wsd.server.bus.segment import Segment, SegmentAllocationError, SegmentLayout

MIB = 1024 * 1024


class BusSetupError(RuntimeError):
    """The bus cannot be made (not enough memory): the message says how much it needs."""


def bus_memory_bytes(bus_slots: int, layout: SegmentLayout) -> int:
    return bus_slots * layout.size


def available_memory() -> tuple[int, str]:
    """(bytes this process may still allocate, where that limit comes from): the host's
    MemAvailable, or less if a memory cgroup (v2 or v1, as in a container) limits it."""
    available, source = _meminfo_available(), "MemAvailable in /proc/meminfo"
    for limit, where in _cgroup_room():
        if limit < available:
            available, source = limit, where
    return available, source


def _meminfo_available() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 1 << 62  # unknown: let the allocation itself decide


def _cgroup_room() -> list[tuple[int, str]]:
    """Room left under the memory cgroups of this process: limit minus usage."""
    rooms = []
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return rooms
    for line in lines:
        hierarchy, controllers, path = line.split(":", 2)
        if hierarchy == "0" and controllers == "":  # v2
            base = Path("/sys/fs/cgroup") / path.lstrip("/")
            limit, usage = _read_int(base / "memory.max"), _read_int(base / "memory.current")
        elif "memory" in controllers.split(","):  # v1
            base = Path("/sys/fs/cgroup/memory") / path.lstrip("/")
            limit, usage = _read_int(base / "memory.limit_in_bytes"), _read_int(base / "memory.usage_in_bytes")
        else:
            continue
        if limit is not None and limit < 1 << 60:  # "max", or v1's huge "no limit" value
            rooms.append((max(0, limit - (usage or 0)), f"the memory cgroup {path} (limit {limit // MIB} MiB)"))
    return rooms


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


@dataclass
class Bus:
    """The supervisor's side: every segment and doorbell, and what each worker inherits."""

    segments: list[Segment]
    receivers: list[socket.socket]  # the doorbell a bus slot's process reads
    senders: list[socket.socket]  # the doorbells every process rings
    memory_bytes: int = 0
    _closed: bool = field(default=False, repr=False)

    @classmethod
    def create(cls, workers: int, layout: SegmentLayout, epoch: int, hash_secret: bytes) -> Bus:
        """2 x workers bus slots (see server/bus/engine.py), memory allocated now or BusSetupError."""
        bus_slots = 2 * workers
        needed = bus_memory_bytes(bus_slots, layout)
        available, source = available_memory()
        if needed > available:
            raise BusSetupError(_not_enough(bus_slots, layout, needed, f"only {available // MIB} MiB are available "
                                            f"({source})"))  # fmt: skip
        bus = cls([], [], [], needed)
        try:
            for bus_slot in range(bus_slots):
                bus.segments.append(Segment.create(bus_slot, workers, epoch, layout, hash_secret))
                receiver, sender = doorbell_pair()
                bus.receivers.append(receiver)
                bus.senders.append(sender)
        except SegmentAllocationError as exc:
            bus.close()
            raise BusSetupError(_not_enough(bus_slots, layout, needed, f"allocating failed: {exc.strerror}")) from None
        except BaseException:
            bus.close()
            raise
        return bus

    def worker_spec(self, bus_slot: int) -> dict:
        """What a worker on `bus_slot` needs to attach (descriptor numbers, see pass_fds)."""
        return {
            "segment_fds": [segment.fd for segment in self.segments],
            "doorbell_fd": self.receivers[bus_slot].fileno(),
            "doorbell_sender_fds": [sender.fileno() for sender in self.senders],
        }

    def pass_fds(self, bus_slot: int) -> tuple[int, ...]:
        """The descriptors a worker on `bus_slot` inherits (its own doorbell's receiving end only)."""
        return (
            *(segment.fd for segment in self.segments),
            self.receivers[bus_slot].fileno(),
            *(sender.fileno() for sender in self.senders),
        )

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for segment in self.segments:
            segment.close()
        for sock in (*self.receivers, *self.senders):
            sock.close()


def _not_enough(bus_slots: int, layout: SegmentLayout, needed: int, why: str) -> str:
    return (
        f"the bus needs {needed / MIB:,.0f} MiB of shared memory, reserved at start: {bus_slots} bus slots "
        f"(2 per worker) of {layout.size / MIB:,.1f} MiB each (--ring-size {layout.ring_capacity} bytes, "
        f"--channel-table-slots {layout.table_slots} x 64 bytes, and headers); {why}. "
        "Lower --ring-size, --channel-table-slots or --workers, or give wsd more memory"
    )


@dataclass
class AttachedBus:
    """A worker's side: every segment mapped, its own doorbell, every doorbell to ring."""

    segments: list[Segment]
    doorbell: socket.socket
    senders: list[socket.socket]


def attach(spec: dict) -> AttachedBus:
    """Map the segments and wrap the doorbells a worker inherited (Bus.worker_spec)."""
    segments = [Segment.attach(fd) for fd in spec["segment_fds"]]
    doorbell = socket.socket(fileno=spec["doorbell_fd"])
    senders = [socket.socket(fileno=fd) for fd in spec["doorbell_sender_fds"]]
    for sock in (doorbell, *senders):
        sock.setblocking(False)
        os.set_inheritable(sock.fileno(), False)
    for segment in segments:
        os.set_inheritable(segment.fd, False)
    return AttachedBus(segments, doorbell, senders)
