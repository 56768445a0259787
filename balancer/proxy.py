"""`proxy` data path: a userspace L4 TCP forwarder on the VIP, the fallback for hosts without the
kernel features or root that `ecmp` and `nft` need. Never the default: it holds both sockets of
every connection, so it costs two file descriptors, a copy per byte and the VIP's port space.

It forwards by the same Maglev table and flow hash as `nft` (so `pick()` predicts it), and it can
route at L7 instead: with `route_key = "room"`, the WebSocket handshake `GET /ws?room=123` is hashed
by the key's value, so every member of a room lands on one backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections import Counter
from urllib.parse import parse_qs, urlsplit

from wsd.balancer.config import BalancerConfig, Endpoint
from wsd.balancer.table import LookupTable

log = logging.getLogger("wsd.balancer.proxy")

HANDSHAKE_LIMIT = 8192  # a request head longer than this is not a WebSocket handshake we route by
HANDSHAKE_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 2.0
COPY_CHUNK = 65536


def route_key_of(request_head: bytes, key_name: str) -> str | None:
    """The value of query parameter `key_name` in an HTTP request line, if there is one."""
    request_line = request_head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = request_line.split(" ")
    if len(parts) != 3:
        return None
    values = parse_qs(urlsplit(parts[1]).query).get(key_name)
    return values[0] if values else None


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(COPY_CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()  # pass the half-close on; the other direction may still be talking
    except (ConnectionError, OSError):
        # Pass a reset on as a reset, not as a clean close, so neither side mistakes it.
        transport = writer.transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        transport.abort()


class ProxyDataPlane:
    """Accepts on the VIP and splices each connection to the backend the table picks."""

    mode = "proxy"

    def __init__(self, config: BalancerConfig) -> None:
        self.config = config
        self.table = LookupTable.build([], config.table_size, config.hash_seed)
        self.server: asyncio.Server | None = None
        self.connections: Counter[str] = Counter()
        self.tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(
            self._serve, self.config.vip.host, self.config.vip.port, reuse_address=True, backlog=4096
        )

    async def apply(self, wanted: list[Endpoint]) -> None:
        # Swapping the table only affects connections accepted from now on: established ones keep
        # their backend socket, which is how a draining backend keeps its clients here.
        names = [str(backend) for backend in wanted]
        self.table = LookupTable.build(names, self.config.table_size, self.config.hash_seed)

    def shares(self) -> dict[str, float]:
        return self.table.shares()

    def pick_table(self) -> LookupTable:
        return self.table

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self.tasks.add(task)
        backend_writer = None
        try:
            first_bytes = b""
            table = self.table
            if self.config.route_key:
                first_bytes = await self._read_head(client_reader)
                key = route_key_of(first_bytes, self.config.route_key) if first_bytes else None
            else:
                key = None
            if key is not None:
                backend = table.pick_key(key)
            else:
                client_ip, client_port = client_writer.get_extra_info("peername")[:2]
                backend = table.pick(client_ip, client_port, self.config.vip.host, self.config.vip.port)
            if backend is None:
                return  # no healthy backend: close, the client retries
            host, _, port = backend.rpartition(":")
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT_S):
                    backend_reader, backend_writer = await asyncio.open_connection(host, int(port))
            except (OSError, TimeoutError) as error:
                log.info("proxy: connect to %s failed (%s); closing the client", backend, error)
                return
            self.connections[backend] += 1
            try:
                if first_bytes:
                    backend_writer.write(first_bytes)
                await asyncio.gather(_copy(client_reader, backend_writer), _copy(backend_reader, client_writer))
            finally:
                self.connections[backend] -= 1
        except (ConnectionError, OSError, TimeoutError):
            pass
        finally:
            for writer in (backend_writer, client_writer):
                if writer is not None:
                    writer.close()
            if task is not None:
                self.tasks.discard(task)

    async def _read_head(self, reader: asyncio.StreamReader) -> bytes:
        """The request head (up to the blank line), or whatever arrived within the limits."""
        head = b""
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
                while b"\r\n\r\n" not in head and len(head) < HANDSHAKE_LIMIT:
                    chunk = await reader.read(HANDSHAKE_LIMIT - len(head))
                    if not chunk:
                        break
                    head += chunk
        except TimeoutError:
            pass
        return head

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self.tasks):
            task.cancel()
