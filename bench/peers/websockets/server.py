"""Fan-out peer: Python `websockets` (asyncio API) with its `broadcast()`, one process on uvloop.

Speaks the subset of wsd's protocol the load generator uses: `{"op":"sub","ch":C,"id":N}` answered
`{"op":"ok","id":N,"off":O}`, deliveries `{"op":"msg","ch":C,"off":O,"data":D}`; and wsd's publish
API (`POST /api/publish`, `POST /api/publish_batch`) on a second port, with a minimal HTTP/1.1
keep-alive parser (websockets serves only GET handshakes).

    python server.py WS_PORT API_PORT     # prints "ready" when both listen
"""

from __future__ import annotations

import asyncio
import sys

import orjson
import uvloop
from websockets.asyncio.server import ServerConnection, broadcast, serve

channels: dict[str, set[ServerConnection]] = {}
offsets: dict[str, int] = {}


def publish(channel: str, data: object) -> int:
    offset = offsets.get(channel, 0) + 1
    offsets[channel] = offset
    members = channels.get(channel)
    if members:
        broadcast(members, orjson.dumps({"op": "msg", "ch": channel, "off": offset, "data": data}).decode())
    return offset


async def subscriber(connection: ServerConnection) -> None:
    mine: list[str] = []
    try:
        async for raw in connection:
            request = orjson.loads(raw)
            if request.get("op") == "sub":
                channel = request["ch"]
                channels.setdefault(channel, set()).add(connection)
                mine.append(channel)
                reply = {"op": "ok", "id": request.get("id"), "off": offsets.get(channel, 0)}
                await connection.send(orjson.dumps(reply).decode())
    finally:
        for channel in mine:
            channels[channel].discard(connection)


async def api_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        head = await reader.readuntil(b"\r\n\r\n") if not reader.at_eof() else b""
        if not head:
            break
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.split(":", 1) for line in header_lines if ":" in line)
        length = int(next((v for k, v in headers.items() if k.lower() == "content-length"), "0"))
        body = orjson.loads(await reader.readexactly(length)) if length else None
        path = request_line.split(" ")[1]
        if path == "/api/publish":
            reply = {"offset": publish(body["channel"], body["data"])}
        elif path == "/api/publish_batch":
            reply = {"offsets": [publish(item["channel"], item["data"]) for item in body]}
        else:
            reply = {"error": "not found"}
        payload = orjson.dumps(reply)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (len(payload), payload)
        )
        await writer.drain()


async def main(ws_port: int, api_port: int) -> None:
    api = await asyncio.start_server(api_client, "127.0.0.1", api_port)
    async with serve(subscriber, "127.0.0.1", ws_port, compression=None, backlog=4096, max_queue=None):
        print("ready", flush=True)
        async with api:
            await asyncio.Future()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]), int(sys.argv[2])))
