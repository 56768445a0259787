"""A fake systemd notify socket for tests: a real AF_UNIX datagram socket (a path or an abstract
name) that receives sd_notify messages with the sender's credentials, as systemd does."""

from __future__ import annotations

import os
import secrets
import socket
import struct
import tempfile
from dataclasses import dataclass


@dataclass
class Notification:
    fields: dict[str, str]
    pid: int  # of the sender, from SCM_CREDENTIALS (how systemd applies NotifyAccess=main)
    raw: bytes


class FakeNotifySocket:
    """`address` goes into $NOTIFY_SOCKET; `receive()` returns the next notification."""

    def __init__(self, abstract: bool = False):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.directory = None
        if abstract:
            name = f"wsd-test-notify-{secrets.token_hex(6)}"
            self.sock.bind(b"\0" + name.encode())
            self.address = "@" + name
        else:
            self.directory = tempfile.mkdtemp(prefix="wsd-notify-")
            self.address = os.path.join(self.directory, "notify")
            self.sock.bind(self.address)

    def receive(self, timeout: float = 5.0) -> Notification:
        self.sock.settimeout(timeout)
        data, ancillary, _flags, _addr = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
        pid = -1
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid, _uid, _gid = struct.unpack("iII", payload[:12])
        fields = dict(line.split("=", 1) for line in data.decode().splitlines() if line)
        return Notification(fields, pid, data)

    def receive_until(self, key: str, value: str = "1", timeout: float = 30.0) -> list[Notification]:
        """Every notification up to and including the first with KEY=VALUE."""
        seen = []
        while True:
            notification = self.receive(timeout)
            seen.append(notification)
            if notification.fields.get(key) == value:
                return seen

    def close(self) -> None:
        self.sock.close()
        if self.directory is not None:
            os.unlink(self.address)
            os.rmdir(self.directory)
