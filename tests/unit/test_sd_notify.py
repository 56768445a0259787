"""wsd.server.sd_notify against a real AF_UNIX datagram socket standing in for systemd's."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tests.fake_notify import FakeNotifySocket
from wsd.server.sd_notify import Notifier, watchdog_interval_s


@pytest.fixture(params=["path", "abstract"])
def manager(request):
    fake = FakeNotifySocket(abstract=request.param == "abstract")
    yield fake
    fake.close()


def test_ready_stopping_and_status_arrive_as_one_datagram_each_from_this_process(manager):
    notifier = Notifier(manager.address)
    assert notifier.enabled
    assert notifier.ready("serving: 2 workers,  8080")
    ready = manager.receive()
    assert ready.raw == b"READY=1\nSTATUS=serving: 2 workers, 8080\n"
    assert ready.pid == os.getpid()  # systemd's NotifyAccess=main checks this
    assert notifier.status("draining:\n120 clients left")
    assert manager.receive().fields == {"STATUS": "draining: 120 clients left"}
    assert notifier.stopping()
    assert manager.receive().raw == b"STOPPING=1\n"
    assert notifier.extend_timeout(12.5)
    assert manager.receive().fields == {"EXTEND_TIMEOUT_USEC": "12500000"}
    assert notifier.watchdog()
    assert manager.receive().fields == {"WATCHDOG": "1"}


def test_reloading_carries_the_monotonic_time_systemd_253_wants(manager):
    notifier = Notifier(manager.address)
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notifier.reloading("rolling reload")
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    message = manager.receive()
    assert list(message.fields) == ["RELOADING", "MONOTONIC_USEC", "STATUS"]
    assert message.fields["RELOADING"] == "1"
    assert before <= int(message.fields["MONOTONIC_USEC"]) <= after
    assert notifier.ready()  # the reload is done
    assert manager.receive().fields == {"READY": "1"}


def test_without_notify_socket_every_call_is_a_no_op(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = Notifier.from_environment()
    assert not notifier.enabled
    assert notifier.ready() is False
    assert notifier.reloading() is False
    assert notifier.stopping() is False


def test_a_manager_that_went_away_is_reported_not_raised(tmp_path, caplog):
    notifier = Notifier(str(tmp_path / "gone"))
    assert notifier.ready() is False
    assert "cannot notify the service manager" in caplog.text


def test_an_unusable_address_disables_notifying_with_a_warning(caplog):
    notifier = Notifier("vsock:2:1234")
    assert not notifier.enabled and "neither a path nor an @abstract name" in notifier.error
    assert notifier.ready() is False


def test_assignments_are_single_lines(manager):
    with pytest.raises(ValueError, match="one KEY=VALUE line"):
        Notifier(manager.address).notify("READY=1\nMAINPID=1")
    with pytest.raises(ValueError):
        Notifier(manager.address).notify("READY")


CHILD = """
import os, subprocess, sys
from wsd.server.sd_notify import Notifier
notifier = Notifier.from_environment()
notifier.ready("up")
# A worker started now does not inherit the variable (only the main process may notify).
out = subprocess.run([sys.executable, "-c", "import os; print(os.environ.get('NOTIFY_SOCKET'))"],
                     capture_output=True, text=True).stdout.strip()
notifier.notify("X_CHILD_SAW=" + out)
notifier.stopping()
"""


def test_a_supervisor_process_notifies_and_its_children_do_not_inherit_the_socket(manager):
    env = dict(os.environ, NOTIFY_SOCKET=manager.address)
    process = subprocess.Popen([sys.executable, "-P", "-c", CHILD], env=env)
    try:
        first = manager.receive(30)
        assert first.fields == {"READY": "1", "STATUS": "up"}
        assert first.pid == process.pid
        assert manager.receive(30).fields == {"X_CHILD_SAW": "None"}
        assert manager.receive(30).fields == {"STOPPING": "1"}
    finally:
        assert process.wait(30) == 0


def test_watchdog_interval():
    pid = str(os.getpid())
    assert watchdog_interval_s({}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": pid}) == 30.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "soon"}) is None

