"""The supervisor's admin endpoint: a Unix stream socket speaking one JSON object per line.

`wsd ctl` (server/control/ctl.py) is its client. The supervisor runs a `select` loop, not asyncio, so
`AdminServer` never blocks on a read: the supervisor adds `readable_fds()` to its select set and
calls `handle_readable(fd)` for each ready one.

Wire protocol, one line each way (UTF-8 JSON, newline-terminated):

    request:  {"cmd": "status", "args": {...}}
    response: {"ok": true, "result": ...}   or   {"ok": false, "error": "clear message"}

Handlers are synchronous: `handler(args) -> result`, where `result` is any JSON-serialisable value.
The reply is written as soon as the handler returns. A handler that needs a round trip (publish)
does it inline with its own short timeout; a handler with an after-effect (stop) records the
intent, returns, and the supervisor acts on it in its next loop turn, after the reply has gone.
A handler raises `AdminCommandError` for a user-facing refusal (sent as is); any other exception
is logged with its traceback and reported as "<cmd> failed: <message>"; the server keeps serving.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import stat
import weakref
from collections.abc import Callable

log = logging.getLogger(__name__)

DEFAULT_ADMIN_SOCKET = "./wsd.sock"

# A request is a command name and a few arguments; anything near this size is a bug or abuse,
# and bounding it bounds the memory a misbehaving client can pin in the supervisor.
MAX_REQUEST_BYTES = 64 * 1024
# Replies are small and go to a local peer, so a blocking sendall is fine, but a client that
# never reads must not stall the supervisor loop for longer than this.
SEND_TIMEOUT_S = 1.0
# Each admin client costs the supervisor an fd; `wsd ctl` uses one at a time.
MAX_CLIENTS = 32
# AF_UNIX sun_path is 108 bytes on Linux, including the terminating NUL.
MAX_SOCKET_PATH_BYTES = 107

Handler = Callable[[dict], object]


class AdminSocketError(Exception):
    """The admin socket cannot be set up at the requested path (in use, not a socket, ...)."""


class AdminCommandError(Exception):
    """Raised by a handler to refuse a request; the message goes to the client verbatim."""


class _Client:
    """One connected admin client and the bytes it sent that do not form a full line yet."""

    __slots__ = ("sock", "pending")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.pending = bytearray()

    def is_open(self) -> bool:
        return self.sock.fileno() != -1


class AdminServer:
    """Listens on a Unix socket (mode 0600) and dispatches JSON-line requests to `handlers`.

    `handlers` maps a command name to `handler(args: dict) -> JSON-serialisable result`; adding a
    command to the server is adding one entry.
    """

    def __init__(self, path: str, handlers: dict[str, Handler]) -> None:
        self.path = path
        self.handlers = dict(handlers)
        self._clients: dict[int, _Client] = {}
        self._listener = _bind_listener(path)
        # Remember which file we created so close() never removes a successor's socket.
        self._socket_inode = os.stat(path).st_ino
        # Kept absolute so close() still finds the file if the supervisor changes directory.
        self._absolute_path = os.path.abspath(path)
        # Workers are forked from the supervisor. A child holding the listener would keep the
        # socket "live" (connects succeed, nobody answers) after the supervisor dies, so every
        # forked child lets go of it automatically.
        server_ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _release_in_child(server_ref))

    # -- select integration -------------------------------------------------------------------

    def fileno(self) -> int:
        """The listening socket's fd (readable when a client is waiting to be accepted)."""
        return self._listener.fileno()

    def readable_fds(self) -> list[int]:
        """Every fd the supervisor should select on for reading: the listener and all clients."""
        if self._listener.fileno() == -1:
            return []
        return [self._listener.fileno(), *self._clients]

    def handle_readable(self, fd: int) -> None:
        """Do the work for one fd that select reported readable: accept, or read and dispatch."""
        if self._listener.fileno() == fd:
            self._accept_pending()
            return
        client = self._clients.get(fd)
        if client is None:
            # Closed earlier in the same select round (e.g. by a failed reply); nothing to do.
            return
        self._read_from(client)

    # -- lifecycle ------------------------------------------------------------------------------

    def close(self) -> None:
        """Disconnect every client, stop listening and remove the socket file (if still ours)."""
        for client in list(self._clients.values()):
            self._drop(client)
        if self._listener.fileno() != -1:
            self._listener.close()
            with contextlib.suppress(FileNotFoundError):
                if os.stat(self._absolute_path).st_ino == self._socket_inode:
                    os.unlink(self._absolute_path)

    def release_in_child(self) -> None:
        """In a forked child: close the inherited fds but leave the file to the parent serving it."""
        for client in list(self._clients.values()):
            self._drop(client)
        self._listener.close()

    def __enter__(self) -> AdminServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- internals ------------------------------------------------------------------------------

    def _accept_pending(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # EMFILE and friends: leave the connection queued and let the loop go on.
                log.warning("admin socket %s: accept failed: %s", self.path, exc)
                return
            if len(self._clients) >= MAX_CLIENTS:
                with contextlib.suppress(OSError):
                    sock.sendall(_encode_error(f"too many admin clients (limit {MAX_CLIENTS}); retry"))
                sock.close()
                continue
            sock.setblocking(False)
            self._clients[sock.fileno()] = _Client(sock)

    def _read_from(self, client: _Client) -> None:
        try:
            data = client.sock.recv(MAX_REQUEST_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.debug("admin client dropped: %s", exc)
            self._drop(client)
            return
        if not data:
            self._drop(client)
            return
        client.pending += data
        while client.is_open():
            newline = client.pending.find(b"\n")
            if newline < 0:
                break
            line = bytes(client.pending[:newline])
            del client.pending[: newline + 1]
            if len(line) > MAX_REQUEST_BYTES:
                self._reject_oversized(client)
                return
            if line.strip():
                self._reply(client, self._dispatch(line))
        if client.is_open() and len(client.pending) > MAX_REQUEST_BYTES:
            self._reject_oversized(client)

    def _reject_oversized(self, client: _Client) -> None:
        # We cannot find where the next request starts, so the connection is unusable.
        self._reply(client, {"ok": False, "error": f"request line longer than {MAX_REQUEST_BYTES} bytes"})
        self._drop(client)

    def _dispatch(self, line: bytes) -> dict:
        """Turn one request line into its response object; never raises."""
        try:
            request = json.loads(line)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return {"ok": False, "error": f"malformed request: not JSON ({exc})"}
        if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
            return {"ok": False, "error": 'malformed request: expected {"cmd": NAME, "args": {...}}'}
        command = request["cmd"]
        args = request.get("args", {})
        if args is None:
            args = {}
        if not isinstance(args, dict):
            kind = type(args).__name__
            return {"ok": False, "error": f"malformed request: 'args' must be an object, not {kind}"}
        handler = self.handlers.get(command)
        if handler is None:
            known = ", ".join(sorted(self.handlers))
            return {"ok": False, "error": f"unknown command {command!r}; known: {known}"}
        try:
            result = handler(args)
        except AdminCommandError as exc:
            return {"ok": False, "error": str(exc)}
        except Exception as exc:
            log.exception("admin command %r failed", command)
            return {"ok": False, "error": f"{command} failed: {exc}"}
        return {"ok": True, "result": result}

    def _reply(self, client: _Client, response: dict) -> None:
        try:
            payload = _encode(response)
        except (TypeError, ValueError) as exc:
            log.error("admin reply is not JSON-serialisable: %s", exc)
            payload = _encode_error(f"internal error: reply is not JSON-serialisable ({exc})")
        try:
            client.sock.settimeout(SEND_TIMEOUT_S)
            client.sock.sendall(payload)
            client.sock.setblocking(False)
        except OSError as exc:  # includes TimeoutError from a client that stopped reading
            log.warning("admin client dropped while replying: %s", exc)
            self._drop(client)

    def _drop(self, client: _Client) -> None:
        fd = client.sock.fileno()
        if fd != -1:
            self._clients.pop(fd, None)
        client.sock.close()


def _release_in_child(server_ref: weakref.ref[AdminServer]) -> None:
    server = server_ref()
    if server is not None:
        server.release_in_child()


def _encode(response: dict) -> bytes:
    return json.dumps(response, separators=(",", ":")).encode() + b"\n"


def _encode_error(message: str) -> bytes:
    return _encode({"ok": False, "error": message})


def _bind_listener(path: str) -> socket.socket:
    """Bind a non-blocking listening socket at `path` with mode 0600, clearing a stale file."""
    if len(os.fsencode(path)) > MAX_SOCKET_PATH_BYTES:
        raise AdminSocketError(
            f"admin socket path {path!r} is too long ({len(os.fsencode(path))} bytes; "
            f"the limit is {MAX_SOCKET_PATH_BYTES}): choose a shorter --admin-socket"
        )
    _remove_stale_socket(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # The umask is process-wide, but bind is instantaneous and the supervisor binds during
        # start-up; this way the file never exists with wider permissions, not even briefly.
        previous_umask = os.umask(0o177)
        try:
            listener.bind(path)
        finally:
            os.umask(previous_umask)
        os.chmod(path, 0o600)
        listener.listen(MAX_CLIENTS)
        listener.setblocking(False)
    except OSError as exc:
        listener.close()
        raise AdminSocketError(f"cannot listen on admin socket {path!r}: {exc.strerror or exc}") from exc
    return listener


def _remove_stale_socket(path: str) -> None:
    """Remove a socket file left by a dead wsd; refuse if a live server answers or it is no socket."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise AdminSocketError(
            f"admin socket path {path!r} exists and is not a socket; "
            "refusing to remove it: move it away or choose another --admin-socket"
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        # Nobody listens: a previous wsd died without cleaning up.
        log.info("removing stale admin socket %s", path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    except FileNotFoundError:
        return
    except OSError as exc:
        if exc.errno == errno.EAGAIN:
            # Listen backlog full: someone is there and busy.
            raise AdminSocketError(_in_use_message(path)) from exc
        raise AdminSocketError(f"cannot check admin socket {path!r}: {exc.strerror or exc}") from exc
    finally:
        probe.close()
    raise AdminSocketError(_in_use_message(path))


def _in_use_message(path: str) -> str:
    return (
        f"admin socket {path!r} is in use by a running wsd; "
        "stop it (wsd ctl stop) or choose another --admin-socket"
    )
