"""Doorbells: wake another worker with one datagram on its socket, at most once per wake-up.

Each bus slot has a datagram socketpair, made by the supervisor: the slot's process inherits the
receiving end, every process inherits every sending end (server/bus/provision.py). Nothing is bound
to a name, so no other local user can pre-bind a doorbell or flood one. A writer sets the target's
pending flag (in the target's segment) with an atomic exchange and sends a datagram only if the
flag was clear, so a busy reader costs its writers no system calls; the reader clears the flag
before it drains the rings.
"""

from __future__ import annotations

import socket

from wsd.ext.atomics import exchange_u32, fence, store_u32
from wsd.server.bus.segment import PENDING_FLAG_AT, Segment


def doorbell_pair() -> tuple[socket.socket, socket.socket]:
    """(receiver, sender) of one bus slot's doorbell, both non-blocking and close-on-exec."""
    receiver, sender = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.setblocking(False)
    sender.setblocking(False)
    return receiver, sender


class Doorbells:
    """Ring other slots' doorbells; drain our own."""

    def __init__(self, own_socket: socket.socket, senders: list[socket.socket], segments: list[Segment]):
        self.own_socket = own_socket
        self.senders = senders
        self.segments = segments
        self.rings_sent = 0

    def ring(self, slot: int) -> None:
        if exchange_u32(self.segments[slot].map, PENDING_FLAG_AT, 1) != 0:
            return  # already pending: the target will look at the rings anyway
        try:
            self.senders[slot].send(b"\1")
            self.rings_sent += 1
        except BlockingIOError:
            # Full queue: the target has wake-ups queued (or is restarting, and reads its rings
            # when it comes back). Its periodic tick covers both.
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
