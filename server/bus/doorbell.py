"""Doorbells: wake another worker with one datagram on its Unix socket, at most once per wake-up.

Each slot has a datagram socket bound to an abstract address (made by the supervisor, inherited by
the slot's worker across respawns). A writer sets the target's pending flag (in the target's
segment) with an atomic exchange and sends a datagram only if the flag was clear, so a busy reader
costs its writers no system calls; the reader clears the flag before it drains the rings.
"""

from __future__ import annotations

import socket

from wsd.ext.atomics import exchange_u32, fence, store_u32
from wsd.server.bus.segment import PENDING_FLAG_AT, Segment


def doorbell_address(run_id: str, slot: int) -> bytes:
    # Abstract namespace: no file to clean up, gone with the last socket.
    return f"\0wsd-{run_id}-bell{slot}".encode()


def bind_doorbell(run_id: str, slot: int) -> socket.socket:
    """The supervisor binds one doorbell socket per slot; the slot's worker inherits it."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(doorbell_address(run_id, slot))
    sock.setblocking(False)
    return sock


class Doorbells:
    """Ring other slots' doorbells; drain our own."""

    def __init__(self, run_id: str, own_socket: socket.socket, segments: list[Segment]):
        self.own_socket = own_socket
        self.segments = segments
        self.addresses = [doorbell_address(run_id, slot) for slot in range(len(segments))]
        self.sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sender.setblocking(False)
        self.rings_sent = 0

    def ring(self, slot: int) -> None:
        if exchange_u32(self.segments[slot].map, PENDING_FLAG_AT, 1) != 0:
            return  # already pending: the target will look at the rings anyway
        try:
            self.sender.sendto(b"\1", self.addresses[slot])
            self.rings_sent += 1
        except (BlockingIOError, ConnectionRefusedError, FileNotFoundError):
            # Full queue: the target has wake-ups queued. No listener: it is restarting and
            # reads its rings when it comes back. Its periodic tick covers both.
            pass

    def acknowledge(self, own_slot: int) -> None:
        """Drain queued wake-ups and clear our pending flag, before reading the rings."""
        while True:
            try:
                self.own_socket.recv(64)
            except BlockingIOError:
                break
        store_u32(self.segments[own_slot].map, PENDING_FLAG_AT, 0)
        fence()
