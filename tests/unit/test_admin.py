"""The admin socket (server/control/admin.py) and `wsd ctl` (server/control/ctl.py), end to end over a real socket.

A real AdminServer is driven by a select loop in a background thread, the way the supervisor
drives it; `wsd.server.control.ctl.main` is called as `wsd ctl` would be.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import socket
import stat
import tempfile
import threading
import time

import pytest

from wsd.server.control import ctl
from wsd.server.control.admin import MAX_REQUEST_BYTES, AdminCommandError, AdminServer, AdminSocketError

STATUS_RESULT = {
    "supervisor": {"pid": 4242, "uptime_s": 3725.5, "state": "running", "epoch": 3},
    "workers": [
        {
            "slot": 0, "pid": 5001, "state": "running", "accepting": True,
            "connections": 120, "max_connections": 10000, "channels": 7, "rss_bytes": 50 * 1024 * 1024,
            "cpu_percent": 12.34, "msgs_in": 1000, "msgs_out": 98765, "bus_lag": 0,
            "overruns": 1, "slow_disconnects": 2, "restarts": 0,
        },
        {
            "slot": 1, "pid": None, "state": "crash-loop", "accepting": False,
            "connections": 0, "max_connections": 10000, "channels": 0, "rss_bytes": 0,
            "cpu_percent": 0.0, "msgs_in": 0, "msgs_out": 0, "bus_lag": 17,
            "overruns": 0, "slow_disconnects": 0, "restarts": 5,
        },
    ],
    "totals": {
        "connections": 120, "channels": 7, "rss_bytes": 50 * 1024 * 1024, "cpu_percent": 12.34,
        "msgs_in": 1000, "msgs_out": 98765, "overruns": 1, "slow_disconnects": 2,
    },
}  # fmt: skip


class ServedAdmin:
    """An AdminServer plus the select loop thread that plays the supervisor."""

    def __init__(self, server: AdminServer) -> None:
        self.server = server
        self.path = server.path
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stopping.is_set():
            ready, _, _ = select.select(self.server.readable_fds(), [], [], 0.02)
            for fd in ready:
                self.server.handle_readable(fd)

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=5)
        self.server.close()


@pytest.fixture
def socket_dir():
    # Not tmp_path: its long names can exceed the 107-byte AF_UNIX path limit.
    directory = tempfile.mkdtemp(prefix="wsd-admin-")
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def serve(socket_dir):
    """serve(handlers) -> ServedAdmin on a fresh socket path, stopped after the test."""
    served: list[ServedAdmin] = []

    def start(handlers: dict) -> ServedAdmin:
        admin = ServedAdmin(AdminServer(os.path.join(socket_dir, "wsd.sock"), handlers))
        served.append(admin)
        return admin

    yield start
    for admin in served:
        admin.stop()


def default_handlers(**extra) -> dict:
    handlers = {
        "status": lambda args: STATUS_RESULT,
        "publish": lambda args: {"offset": 41, "channel": args["channel"]},
        "stop": lambda args: "stopping",
    }
    handlers.update(extra)
    return handlers


def raw_exchange(path: str, payload: bytes, replies: int = 1) -> list[dict]:
    """Send raw bytes and read `replies` response lines (for protocol-level tests)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(path)
        sock.sendall(payload)
        stream = sock.makefile("rb")
        return [json.loads(stream.readline()) for _ in range(replies)]


# -- wsd ctl against a live server ----------------------------------------------------------------


def test_status_prints_a_table_with_a_row_per_worker_and_a_totals_row(serve, capsys):
    admin = serve(default_handlers())

    assert ctl.main(["--admin-socket", admin.path, "status"]) == 0

    out, err = capsys.readouterr()
    assert err == ""
    lines = out.splitlines()
    assert lines[0] == "wsd supervisor pid 4242, running, up 1h02m, epoch 3"
    header, worker0, worker1, totals = lines[1:]
    assert header.split()[:5] == ["SLOT", "PID", "STATE", "ACCEPTING", "CONNS"]
    assert worker0.split()[:8] == ["0", "5001", "running", "yes", "120/10000", "7", "50.0", "MiB"]
    assert "12.3%" in worker0
    assert worker1.split()[:4] == ["1", "-", "crash-loop", "NO"]
    assert totals.split()[:5] == ["total", "120", "7", "50.0", "MiB"]
    # Aligned: every row ends its numeric columns at the same position as the header.
    assert len({len(line) for line in (header, worker0, worker1)}) == 1


def test_status_json_prints_the_raw_result_as_one_document(serve, capsys):
    admin = serve(default_handlers())

    assert ctl.main(["--admin-socket", admin.path, "--json", "status"]) == 0

    assert json.loads(capsys.readouterr().out) == STATUS_RESULT


def test_json_and_admin_socket_are_also_accepted_after_the_command(serve, capsys):
    admin = serve(default_handlers())

    assert ctl.main(["status", "--json", "--admin-socket", admin.path]) == 0

    assert json.loads(capsys.readouterr().out) == STATUS_RESULT


def test_status_table_tolerates_missing_and_unknown_fields(serve, capsys):
    sparse = {
        "supervisor": {"pid": 1},
        "workers": [{"slot": 0, "future_field": [1, 2]}, "not a worker", {"rss_bytes": "lots"}],
        "totals": {},
        "future_section": {"x": 1},
    }
    admin = serve(default_handlers(status=lambda args: sparse))

    assert ctl.main(["--admin-socket", admin.path, "status"]) == 0

    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("wsd supervisor pid 1, -, up -")
    assert len(out.splitlines()) == 1 + 1 + 2 + 1  # header line, table header, 2 workers, totals


def test_publish_sends_the_channel_and_parsed_message_and_prints_the_offset(serve, capsys):
    received = []

    def publish(args):
        received.append(args)
        return {"offset": 41, "channel": args["channel"]}

    admin = serve(default_handlers(publish=publish))

    assert ctl.main(["--admin-socket", admin.path, "publish", "news", '{"text": "hi", "n": [1, 2]}']) == 0

    assert received == [{"channel": "news", "message": {"text": "hi", "n": [1, 2]}}]
    assert capsys.readouterr().out == "published to news at offset 41\n"


def test_publish_with_invalid_json_fails_locally_with_exit_2(capsys):
    # No server at all: the JSON is rejected before any connection is attempted.
    assert ctl.main(["--admin-socket", "/nonexistent/wsd.sock", "publish", "news", "{not json"]) == 2

    err = capsys.readouterr().err
    assert "argument JSON: not valid JSON" in err
    assert "cannot reach" not in err


def test_stop_prints_stopping(serve, capsys):
    admin = serve(default_handlers())

    assert ctl.main(["--admin-socket", admin.path, "stop"]) == 0

    assert capsys.readouterr().out == "stopping\n"


def test_command_the_server_does_not_know_is_an_error_with_exit_1(serve, capsys):
    admin = serve(default_handlers())

    assert ctl.main(["--admin-socket", admin.path, "drain"]) == 1

    out, err = capsys.readouterr()
    assert out == ""
    assert err == "wsd ctl: unknown command 'drain'; known: publish, status, stop\n"


def test_drain_sends_its_window_in_seconds(serve, capsys):
    received = []
    admin = serve(default_handlers(drain=lambda args: received.append(args)))

    assert ctl.main(["--admin-socket", admin.path, "drain"]) == 0
    assert ctl.main(["--admin-socket", admin.path, "drain", "--window", "2.5"]) == 0

    assert received == [{"window_s": 30.0}, {"window_s": 2.5}]
    assert capsys.readouterr().out == "ok\nok\n"


def test_command_unknown_to_ctl_is_a_usage_error(capsys):
    assert ctl.main(["frobnicate"]) == 2
    assert "invalid choice: 'frobnicate'" in capsys.readouterr().err


def test_missing_socket_gives_a_clear_error_and_exit_1(socket_dir, capsys):
    path = os.path.join(socket_dir, "absent.sock")

    assert ctl.main(["--admin-socket", path, "status"]) == 1

    assert capsys.readouterr().err == (
        f"wsd ctl: cannot reach wsd at {path}: no such file (is wsd serve running? use --admin-socket)\n"
    )


def test_socket_file_without_a_listener_gives_connection_refused(socket_dir, capsys):
    path = os.path.join(socket_dir, "dead.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(path)  # leaves the file behind, like a crashed wsd

    assert ctl.main(["--admin-socket", path, "status"]) == 1

    assert "connection refused" in capsys.readouterr().err


def test_handler_failure_is_reported_and_the_server_keeps_serving(serve, capsys, caplog):
    def broken_status(args):
        raise RuntimeError("stats block unreadable")

    admin = serve(default_handlers(status=broken_status))

    assert ctl.main(["--admin-socket", admin.path, "status"]) == 1
    assert capsys.readouterr().err == "wsd ctl: status failed: stats block unreadable\n"
    assert "admin command 'status' failed" in caplog.text

    assert ctl.main(["--admin-socket", admin.path, "stop"]) == 0
    assert capsys.readouterr().out == "stopping\n"


def test_admin_command_error_reaches_the_user_verbatim(serve, capsys):
    def publish(args):
        raise AdminCommandError(f"invalid channel name {args['channel']!r}: must not be empty")

    admin = serve(default_handlers(publish=publish))

    assert ctl.main(["--admin-socket", admin.path, "publish", "", "1"]) == 1

    assert capsys.readouterr().err == "wsd ctl: invalid channel name '': must not be empty\n"


# -- wire protocol --------------------------------------------------------------------------------


def test_malformed_json_line_gets_an_error_and_the_connection_keeps_working(serve):
    admin = serve(default_handlers())

    bad, good = raw_exchange(admin.path, b'{"cmd": "status"\n{"cmd": "stop", "args": {}}\n', replies=2)

    assert bad["ok"] is False and bad["error"].startswith("malformed request: not JSON")
    assert good == {"ok": True, "result": "stopping"}


@pytest.mark.parametrize(
    "line",
    [b"[1, 2]\n", b'{"args": {}}\n', b'{"cmd": 7}\n', b'{"cmd": "status", "args": [1]}\n', b"\xff\xfe\n"],
)
def test_request_that_is_not_a_command_object_is_rejected(serve, line):
    admin = serve(default_handlers())

    (reply,) = raw_exchange(admin.path, line)

    assert reply["ok"] is False
    assert reply["error"].startswith("malformed request")


def test_pipelined_requests_are_answered_in_order(serve):
    admin = serve(default_handlers())

    replies = raw_exchange(admin.path, b'{"cmd": "stop"}\n{"cmd": "publish", "args": {"channel": "c"}}\n', 2)

    assert [reply["result"] for reply in replies] == ["stopping", {"offset": 41, "channel": "c"}]


def test_oversized_request_line_gets_an_error_and_the_connection_is_closed(serve):
    admin = serve(default_handlers())
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(admin.path)
        try:
            sock.sendall(b"x" * (MAX_REQUEST_BYTES + 4096))
        except BrokenPipeError:
            pass  # the server may close before we finish sending
        stream = sock.makefile("rb")
        reply = json.loads(stream.readline())
        assert stream.read() == b""  # closed by the server

    assert reply == {"ok": False, "error": f"request line longer than {MAX_REQUEST_BYTES} bytes"}
    # ... and the server still serves others.
    assert raw_exchange(admin.path, b'{"cmd": "stop"}\n') == [{"ok": True, "result": "stopping"}]


def test_client_that_never_reads_is_dropped_instead_of_hanging_the_loop(socket_dir):
    huge = "x" * (32 * 1024 * 1024)  # far more than a socket buffer holds
    server = AdminServer(os.path.join(socket_dir, "wsd.sock"), {"big": lambda args: huge})
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(server.path)
            server.handle_readable(server.fileno())  # accept
            (client_fd,) = set(server.readable_fds()) - {server.fileno()}
            sock.sendall(b'{"cmd": "big"}\n')

            started = time.monotonic()
            server.handle_readable(client_fd)

            assert time.monotonic() - started < 3
            assert server.readable_fds() == [server.fileno()]
    finally:
        server.close()


# -- the socket file ------------------------------------------------------------------------------


def test_socket_file_is_mode_0600_even_with_a_permissive_umask(socket_dir):
    path = os.path.join(socket_dir, "wsd.sock")
    previous = os.umask(0)
    try:
        server = AdminServer(path, {})
    finally:
        os.umask(previous)
    try:
        mode = os.stat(path).st_mode
        assert stat.S_ISSOCK(mode)
        assert stat.S_IMODE(mode) == 0o600
    finally:
        server.close()


def test_stale_socket_file_is_replaced(socket_dir, capsys):
    path = os.path.join(socket_dir, "wsd.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(path)
    admin = ServedAdmin(AdminServer(path, default_handlers()))
    try:
        assert ctl.main(["--admin-socket", path, "stop"]) == 0
    finally:
        admin.stop()


def test_socket_with_a_live_server_is_refused(serve):
    admin = serve(default_handlers())

    with pytest.raises(AdminSocketError, match="in use by a running wsd"):
        AdminServer(admin.path, {})

    # The live server's socket is untouched.
    assert raw_exchange(admin.path, b'{"cmd": "stop"}\n') == [{"ok": True, "result": "stopping"}]


def test_a_regular_file_at_the_socket_path_is_not_removed(socket_dir):
    path = os.path.join(socket_dir, "wsd.sock")
    with open(path, "w") as file:
        file.write("precious")

    with pytest.raises(AdminSocketError, match="exists and is not a socket"):
        AdminServer(path, {})

    with open(path) as file:
        assert file.read() == "precious"


def test_close_removes_the_socket_file(socket_dir):
    path = os.path.join(socket_dir, "wsd.sock")
    server = AdminServer(path, {})

    server.close()

    assert not os.path.exists(path)


def test_close_leaves_a_successors_socket_alone(socket_dir):
    path = os.path.join(socket_dir, "wsd.sock")
    old = AdminServer(path, {})
    os.unlink(path)  # e.g. an operator cleaned up, and a new wsd started at the same path
    new = AdminServer(path, {})
    try:
        old.close()
        assert stat.S_ISSOCK(os.stat(path).st_mode)
    finally:
        new.close()


def test_forked_child_lets_go_of_the_socket_but_leaves_the_file(socket_dir):
    path = os.path.join(socket_dir, "wsd.sock")
    server = AdminServer(path, {})
    try:
        pid = os.fork()
        if pid == 0:  # the child, like a freshly forked worker
            released = server.readable_fds() == [] and stat.S_ISSOCK(os.stat(path).st_mode)
            os._exit(0 if released else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert os.path.exists(path)
        assert server.readable_fds() == [server.fileno()]
    finally:
        server.close()
