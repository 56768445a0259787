"""Token keys across reloads and respawns (issue 10: keys are re-read on reload): a rotated secret
is used by the new workers after `wsd ctl reload`; a broken one refuses the reload and the old key
keeps working; a worker respawned while its key file is gone says why it cannot start, and starts
once the file is back."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from harness.wsd_process import WsdProcess
from tests import auth_material

OLD_SECRET = "old-secret-0123456789-abcdefghijklmnopqrstuvwxyz"
NEW_SECRET = "new-secret-0123456789-abcdefghijklmnopqrstuvwxyz"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    directory = tmp_path_factory.mktemp("auth-reload")
    secret_file = directory / "secret"
    secret_file.write_text(OLD_SECRET + "\n")
    wsd = WsdProcess(directory / "wsd", workers=1,
                     flags=["--auth-secret-file", str(secret_file), "--drain-window", "1"])  # fmt: skip
    wsd.secret_file = secret_file
    wsd.start()
    yield wsd
    wsd.kill()


def accepted(server: WsdProcess, secret: str) -> bool:
    token = auth_material.hs256({"sub": "42", "exp": int(time.time()) + 60}, secret)
    try:
        with connect(f"{server.url}?token={token}", open_timeout=10):
            return True
    except InvalidStatus as refused:
        assert refused.response.status_code == 401
        return False


def reload_done(server: WsdProcess, old_pids: set[int], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = server.status()
        pids = {worker["pid"] for worker in status["workers"]}
        if status["supervisor"]["state"] == "running" and pids and not pids & old_pids and all(pids):
            return
        time.sleep(0.1)
    raise AssertionError(f"reload not done: {server.status()}")


def test_a_rotated_secret_is_used_after_a_reload_and_a_broken_one_is_refused(server):
    assert accepted(server, OLD_SECRET) and not accepted(server, NEW_SECRET)
    server.secret_file.write_text("too short\n")
    refused = server.ctl("reload", check=False)
    assert refused.returncode != 0 and "reload refused" in refused.stderr and "use at least 32" in refused.stderr
    assert accepted(server, OLD_SECRET)  # the running worker keeps its key
    server.secret_file.write_text(NEW_SECRET + "\n")
    old_pids = set(server.worker_pids())
    server.ctl("reload")
    reload_done(server, old_pids)
    assert accepted(server, NEW_SECRET) and not accepted(server, OLD_SECRET)


def test_a_worker_respawned_without_its_key_file_says_why_and_starts_once_it_is_back(server):
    secret = server.secret_file.read_text()
    [pid] = server.worker_pids()
    os.unlink(server.secret_file)
    os.kill(pid, signal.SIGKILL)
    message = f"cannot start: --auth-secret-file / [auth] secret_file: {server.secret_file} does not exist"
    deadline = time.monotonic() + 20
    while message not in server.read_log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert message in server.read_log()
    assert "Traceback" not in server.read_log()
    Path(server.secret_file).write_text(secret)
    deadline = time.monotonic() + 40  # the respawn back-off has grown a little meanwhile
    while time.monotonic() < deadline:
        workers = server.status()["workers"]
        if workers[0]["pid"] not in (0, None, pid) and workers[0]["accepting"]:
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"no worker serves again: {server.status()}\n{server.read_log()}")
    assert accepted(server, NEW_SECRET)
