"""The balancer's admin Unix socket: one JSON request per line, one JSON answer per line.

`{"cmd": "status"}` answers with backends, health, share of the hash table and the change log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
from collections.abc import Callable


async def serve_admin(path: str, status: Callable[[], dict]) -> asyncio.AbstractServer:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                try:
                    request = json.loads(line)
                    command = request.get("cmd")
                    reply = status() if command == "status" else {"error": f"unknown command {command!r}; try status"}
                except (ValueError, AttributeError):
                    reply = {"error": "send one JSON object per line, e.g. {\"cmd\": \"status\"}"}
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_unix_server(answer, path)
    os.chmod(path, 0o600)
    return server


def request(path: str, command: str, timeout_s: float = 5.0) -> dict:
    """Send one command to a running balancer and return its answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.settimeout(timeout_s)
        connection.connect(path)
        connection.sendall(json.dumps({"cmd": command}).encode() + b"\n")
        answer = b""
        while not answer.endswith(b"\n"):
            chunk = connection.recv(65536)
            if not chunk:
                break
            answer += chunk
    return json.loads(answer)


def format_status(status: dict) -> str:
    """A human table of a status answer."""
    lines = [f"wsd balancer  mode={status['mode']}  vip={status['vip']}  uptime={status['uptime_s']}s", ""]
    header = f"{'BACKEND':<22} {'HEALTH':<9} {'IN TABLE':<8} {'SHARE':>6}  WHY"
    lines.append(header)
    for entry in status["backends"]:
        lines.append(
            f"{entry['backend']:<22} {entry['health']:<9} {'yes' if entry['in_table'] else 'no':<8} "
            f"{entry['share'] * 100:5.1f}%  {entry['why']}"
        )
    lines += ["", "CHANGES"]
    for change in status["changes"][-20:]:
        stamp = time.strftime("%H:%M:%S", time.localtime(change["at"]))
        lines.append(f"{stamp}  {change['backend']:<22} {change['event']:<9} {change['reason']}")
    return "\n".join(lines)
