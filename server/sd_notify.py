"""systemd's notify protocol (sd_notify(3)) without libsystemd: the supervisor tells the service
manager it is ready, reloading or stopping with one datagram to `$NOTIFY_SOCKET`.

The protocol is newline-separated `KEY=VALUE` assignments in one AF_UNIX datagram; the address
is a path or, starting with `@`, a name in the abstract namespace. Without `$NOTIFY_SOCKET` (not
run by systemd, or `Type=` other than notify) every call is a no-op that returns False, and a send
that fails is reported by the return value, never raised: nothing here can stop the server.

Only the supervisor notifies (systemd's default `NotifyAccess=main` ignores other processes), so
`Notifier.from_environment()` removes the variable from the environment the workers inherit.
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger("wsd.sd_notify")


class Notifier:
    """Sends notifications to one notify socket (or nowhere, when `address` is None)."""

    def __init__(self, address: str | None):
        self.address = address or None
        self.error: str | None = None
        self._target: str | bytes | None = None
        if self.address is None:
            return
        if self.address.startswith("/"):
            self._target = self.address
        elif self.address.startswith("@") and len(self.address) > 1:
            self._target = b"\0" + self.address[1:].encode()  # the abstract namespace
        else:
            # systemd also knows vsock: addresses (for virtual machines); wsd does not need them.
            self.error = f"NOTIFY_SOCKET={self.address!r} is neither a path nor an @abstract name; not notifying"
            log.warning("%s", self.error)

    @classmethod
    def from_environment(cls, unset: bool = True) -> Notifier:
        """The notifier for `$NOTIFY_SOCKET`; with `unset`, child processes no longer see it."""
        address = os.environ.pop("NOTIFY_SOCKET", None) if unset else os.environ.get("NOTIFY_SOCKET")
        return cls(address)

    @property
    def enabled(self) -> bool:
        return self._target is not None

    def notify(self, *assignments: str) -> bool:
        """Send `KEY=VALUE` assignments in one datagram; True when the socket took it."""
        if self._target is None:
            return False
        for assignment in assignments:
            if "=" not in assignment or "\n" in assignment:
                raise ValueError(f"a notify assignment is one KEY=VALUE line, got {assignment!r}")
        message = ("\n".join(assignments) + "\n").encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(message, self._target)
        except OSError as exc:
            log.warning("cannot notify the service manager at %s: %s", self.address, exc)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """Start-up is complete (or a reload is: READY=1 ends RELOADING=1)."""
        return self.notify("READY=1", *_status(status))

    def reloading(self, status: str | None = None) -> bool:
        """A reload starts; READY=1 must follow when it ends. MONOTONIC_USEC goes with it, as
        systemd >= 253 requires for Type=notify-reload (older ones ignore it)."""
        now_us = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={now_us}", *_status(status))

    def stopping(self, status: str | None = None) -> bool:
        return self.notify("STOPPING=1", *_status(status))

    def status(self, text: str) -> bool:
        """A one-line status `systemctl status` shows."""
        return self.notify(*_status(text))

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for `seconds` more before the current start, reload or stop times out."""
        return self.notify(f"EXTEND_TIMEOUT_USEC={max(0, int(seconds * 1_000_000))}")

    def watchdog(self) -> bool:
        """Tell the manager the service is alive (with `WatchdogSec=`)."""
        return self.notify("WATCHDOG=1")


def watchdog_interval_s(environ: dict[str, str] | None = None) -> float | None:
    """`WatchdogSec=` of this process's unit in seconds (from $WATCHDOG_USEC, when $WATCHDOG_PID is
    unset or ours); ping at half of it. None without a watchdog."""
    environ = os.environ if environ is None else environ
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = environ.get("WATCHDOG_PID")
    if usec <= 0 or (pid and pid != str(os.getpid())):
        return None
    return usec / 1_000_000


def _status(text: str | None) -> tuple[str, ...]:
    if text is None:
        return ()
    return ("STATUS=" + " ".join(text.split()),)  # one line
