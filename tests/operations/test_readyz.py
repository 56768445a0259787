"""`/readyz` on both ports of a real server: 200 while it can serve; 503 with what fails, within 5 s
of a check failing (a frozen worker, a role nobody sequences, a drain), and 200 again after."""

from __future__ import annotations

import json
import os
import signal
import time

import psutil
import pytest

from harness.wsd_process import WsdProcess
from tests.operations.helpers import http, wait_for


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    wsd = WsdProcess(tmp_path_factory.mktemp("readyz"), workers=2)
    wsd.start()
    yield wsd
    wsd.kill()


def readyz(server, port_name: str) -> tuple[int, dict] | None:
    """One /readyz answer from the port, or None when the connection landed on a frozen worker."""
    port = server.port if port_name == "ws" else server.api_port
    try:
        status, headers, body = http(f"http://127.0.0.1:{port}/readyz", timeout=0.5)
    except OSError:
        return None
    assert headers["Content-Type"] == "application/json"
    return status, json.loads(body)


def answer_from_a_live_worker(server, port_name: str) -> tuple[int, dict]:
    return wait_for(lambda: readyz(server, port_name), timeout=10, every=0.01)


def slot_pid(server, slot: int) -> int:
    return next(w["pid"] for w in server.status()["workers"] if w["slot"] == slot)


@pytest.mark.parametrize("port_name", ["ws", "api"])
def test_ready_on_both_ports_while_every_worker_serves(server, port_name):
    assert answer_from_a_live_worker(server, port_name) == (200, {"ready": True})


def test_a_frozen_worker_turns_readyz_503_within_5_s_and_200_once_it_runs_again(server):
    pid = slot_pid(server, 1)
    os.kill(pid, signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        for port_name in ("ws", "api"):
            status, body = wait_for(lambda p=port_name: (a := answer_from_a_live_worker(server, p))[0] == 503 and a,
                                    timeout=6, every=0.05)  # fmt: skip
            assert time.monotonic() - stopped_at < 5.5
            assert body["ready"] is False
            assert [f for f in body["failing"] if f.startswith("worker 1: no heartbeat for ")], body
            assert not [f for f in body["failing"] if f.startswith("worker 0")], body
    finally:
        os.kill(pid, signal.SIGCONT)
    for port_name in ("ws", "api"):
        wait_for(lambda p=port_name: answer_from_a_live_worker(server, p) == (200, {"ready": True}), timeout=5)


def test_a_role_without_a_holder_turns_readyz_503_until_one_takes_it(server):
    supervisor = psutil.Process(server.status()["supervisor"]["pid"])
    old, known = slot_pid(server, 1), {w["pid"] for w in server.status()["workers"]}
    os.kill(old, signal.SIGKILL)
    # Freeze the process the supervisor starts in its place before it takes role 1 (at start-up).
    respawn = wait_for(lambda: [c for c in supervisor.children() if c.pid not in known], timeout=10, every=0.005)[0]
    respawn.send_signal(signal.SIGSTOP)
    try:
        status, body = wait_for(lambda: (a := answer_from_a_live_worker(server, "api"))[0] == 503
                                and "role 1: no worker sequences it" in a[1]["failing"] and a, timeout=6)  # fmt: skip
        assert "worker 1: no heartbeat yet" in body["failing"], body
    finally:
        respawn.send_signal(signal.SIGCONT)
    wait_for(lambda: answer_from_a_live_worker(server, "api") == (200, {"ready": True}), timeout=15)
    server.wait_ready()


def test_a_draining_server_is_not_ready(tmp_path):
    wsd = WsdProcess(tmp_path, workers=1)
    wsd.start()
    try:
        wsd.ctl("drain", "--window", "30")
        status, body = wait_for(lambda: (a := answer_from_a_live_worker(wsd, "ws"))[0] == 503 and a)
        assert body == {"ready": False, "failing": ["worker 0: draining"]}
        assert answer_from_a_live_worker(wsd, "api") == (status, body)
    finally:
        wsd.kill()
