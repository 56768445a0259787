"""Listening sockets for the worker slots: one SO_REUSEPORT socket per slot and port.

The supervisor creates them and each worker inherits its slot's sockets; a respawned worker gets
the same socket, so the kernel's reuseport group never changes and queued connections survive.
"""

from __future__ import annotations

import socket

BACKLOG = 4096


class BindError(OSError):
    """Binding a listening socket failed; the message says where and what to do."""


def reuseport_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise BindError(
            exc.errno, f"cannot listen on {host}:{port}: {exc.strerror} (is another server using the port?)"
        ) from None
    sock.set_inheritable(True)
    return sock


def ensure_port_is_free(host: str, port: int) -> None:
    """Fail if anything listens on host:port already.

    SO_REUSEPORT would otherwise let us join another running server's group (same user) and
    silently take half of its connections. A bind without SO_REUSEPORT fails on a live listener.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT leftovers are fine
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise BindError(
                exc.errno, f"cannot listen on {host}:{port}: {exc.strerror} (is another server using the port?)"
            ) from None


def slot_sockets(host: str, port: int, count: int) -> list[socket.socket]:
    """`count` sockets in one reuseport group. Port 0 picks a free port, shared by the group."""
    if port != 0:
        ensure_port_is_free(host, port)
    first = reuseport_socket(host, port)
    sockets = [first]
    actual_port = first.getsockname()[1]
    try:
        for _ in range(count - 1):
            sockets.append(reuseport_socket(host, actual_port))
    except BindError:
        for sock in sockets:
            sock.close()
        raise
    return sockets
