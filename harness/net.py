"""Loopback ports and source addresses for tests and benchmarks that share one machine.

Other people's tests run at the same time, so every listener takes a port the kernel says is free.
Many client connections to one server are spread over 127.0.0.2, 127.0.0.3, ...: one source address
has only ~28,000 ephemeral ports towards one destination.
"""

from __future__ import annotations

import socket

# Linux socket option missing from the socket module: defer the port choice from bind() to
# connect(), so a port only has to be unique per 4-tuple rather than per source address.
IP_BIND_ADDRESS_NO_PORT = 24


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the kernel's pick for port 0)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def source_address(index: int, per_address: int) -> str:
    """The loopback source address of connection `index` when each address carries `per_address`:
    127.0.0.2 for the first `per_address`, then 127.0.0.3, ... (127.0.0.1 is left to the servers)."""
    address = 2 + index // per_address
    if address > 255:
        raise ValueError(f"connection {index} at {per_address} per address is past 127.0.0.255")
    return f"127.0.0.{address}"


def source_addresses(connections: int, per_address: int) -> list[str]:
    """Every source address that `connections` connections use at `per_address` each, in order."""
    return [source_address(index, per_address) for index in range(0, connections, per_address)]


def bound_socket(source: str) -> socket.socket:
    """A non-blocking TCP socket bound to `source` whose port is chosen only at connect()."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((source, 0))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock
