"""A TCP proxy in front of Redis that can make its pub/sub connections go silent: the sockets stay
open but nothing Redis sends reaches the client, as when a failover or a NAT drops a flow."""

from __future__ import annotations

import asyncio


class SilencingProxy:
    def __init__(self, target_port: int):
        self.target_port = target_port
        self.port = 0
        self.silenced: set[int] = set()  # ids of pub/sub connections whose server→client data is dropped
        self._pubsub: set[int] = set()
        self._server: asyncio.base_events.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def silence_pubsub(self) -> int:
        """Silence every pub/sub connection open now (new ones pass); returns how many."""
        self.silenced |= self._pubsub
        return len(self._pubsub)

    async def _handle(self, client_reader, client_writer) -> None:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers += [client_writer, server_writer]
        flow = id(client_writer)

        async def upstream():
            while data := await client_reader.read(65536):
                if b"SUBSCRIBE" in data.upper():
                    self._pubsub.add(flow)
                server_writer.write(data)
                await server_writer.drain()
            server_writer.close()

        async def downstream():
            while data := await server_reader.read(65536):
                if flow not in self.silenced:
                    client_writer.write(data)
                    await client_writer.drain()
            client_writer.close()

        try:
            await asyncio.gather(upstream(), downstream())
        except (ConnectionError, OSError):
            pass
        finally:
            client_writer.close()
            server_writer.close()

    async def close(self) -> None:
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            self._server.close()
