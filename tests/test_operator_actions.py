"""What an operator does to a running wsd never takes it down (issue 9, items 2, 13, 14): a bad
config on reload, reloads on top of reloads, stray signals, a hung worker, odd drain windows."""

from __future__ import annotations

import asyncio
import glob
import json
import os
import signal
import time

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"not true after {timeout}s: {what}")


def _serving(wsd) -> bool:
    status = wsd.status()
    return status["supervisor"]["state"] == "running" and all(
        w["state"] == "running" and w["accepting"] for w in status["workers"]
    )


def _reload_done(wsd, old_pids: set[int]) -> bool:
    status = wsd.status()
    pids = {w["pid"] for w in status["workers"]}
    return status["supervisor"]["state"] == "running" and not pids & old_pids and len(pids) == wsd.workers


def test_a_bad_config_on_reload_is_refused_and_the_server_keeps_serving(wsd_factory, tmp_path):
    config = tmp_path / "wsd.toml"
    config.write_text("history_size = 50\n")
    wsd = wsd_factory("--config", str(config), "--drain-window", "1", workers=2)
    pids = set(wsd.worker_pids())
    config.write_text("workers = [\n")  # a typo

    wsd.signal(signal.SIGHUP)
    _wait_for(lambda: "SIGHUP: reload refused, the config file is invalid" in wsd.read_log(), 10, "SIGHUP refusal")
    result = wsd.ctl("reload", check=False)
    assert result.returncode == 1 and "reload refused, the config file is invalid" in result.stderr
    assert "not valid TOML" in result.stderr
    time.sleep(0.5)
    assert wsd.proc.poll() is None and set(wsd.worker_pids()) == pids and _serving(wsd)
    assert wsd.publish("still", "serving") == 1

    config.write_text("history_size = 60\n")  # fixed: the next reload goes through
    wsd.ctl("reload")
    _wait_for(lambda: _reload_done(wsd, pids), 30, "reload with the fixed config")


def test_reloads_asked_for_during_a_reload_are_queued_and_run_after_it(wsd_factory):
    wsd = wsd_factory("--drain-window", "2", workers=2)
    first = set(wsd.worker_pids())
    assert json.loads(wsd.ctl("--json", "reload").stdout)["queued"] is False
    wsd.signal(signal.SIGHUP)  # during the first reload
    second = json.loads(wsd.ctl("--json", "reload").stdout)  # and again, while old workers drain
    assert second["queued"] is True
    _wait_for(lambda: wsd.status()["supervisor"]["reloads"] == 2, 60, "the queued reload to start")
    status = _wait_for(
        lambda: (s := wsd.status())["supervisor"]["state"] == "running" and len(s["workers"]) == 2 and s, 60,
        "both reloads to finish",
    )
    assert not {w["pid"] for w in status["workers"]} & first
    log = wsd.read_log()
    assert "no free bus slot" not in log and "Traceback" not in log
    assert wsd.proc.poll() is None and _serving(wsd)


@pytest.mark.parametrize("signum", [signal.SIGUSR1, signal.SIGUSR2])
def test_sigusr_to_the_supervisor_is_logged_and_ignored(wsd_factory, signum):
    wsd = wsd_factory(workers=1)
    pids = wsd.worker_pids()
    wsd.signal(signum)
    name = signal.Signals(signum).name
    _wait_for(lambda: f"received {name}: ignored" in wsd.read_log(), 10, "the log line")
    assert wsd.proc.poll() is None and wsd.worker_pids() == pids and _serving(wsd)


def test_sigquit_is_a_quick_stop(wsd_factory):
    wsd = wsd_factory(workers=2)

    async def scenario():
        clients = [await connect(wsd.url) for _ in range(6)]
        wsd.signal(signal.SIGQUIT)
        codes = []
        for ws in clients:
            try:
                await asyncio.wait_for(ws.recv(), 10)
            except ConnectionClosed as exc:
                codes.append(exc.rcvd.code if exc.rcvd else None)
        return codes

    assert asyncio.run(scenario()) == [1001] * 6
    assert wsd.wait(15) == 0
    assert glob.glob(f"/dev/shm/wsd-{wsd.proc.pid}*") == []  # the segments are gone with it
    assert not os.path.exists(wsd.admin_socket)


def test_a_hung_worker_is_killed_and_respawned_by_the_watchdog(wsd_factory):
    wsd = wsd_factory("--worker-timeout", "3", workers=2)
    victim = wsd.status()["workers"][1]["pid"]
    os.kill(victim, signal.SIGSTOP)
    try:
        _wait_for(
            lambda: (w := wsd.status()["workers"][1])["pid"] not in (None, victim) and w["accepting"], 40,
            "a new worker on slot 1",
        )
    finally:
        try:
            os.kill(victim, signal.SIGCONT)
        except ProcessLookupError:
            pass
    assert "has not written its heartbeat" in wsd.read_log() and "--worker-timeout 3" in wsd.read_log()
    assert wsd.status()["workers"][1]["restarts"] == 1


def test_drain_with_a_window_of_zero_moves_everyone_with_1012_at_once(wsd_factory):
    wsd = wsd_factory(workers=2)

    async def scenario():
        clients = [await connect(wsd.url) for _ in range(10)]
        started = time.monotonic()
        await asyncio.to_thread(wsd.ctl, "drain", "--window", "0")
        codes = []
        for ws in clients:
            try:
                await asyncio.wait_for(ws.recv(), 5)
            except ConnectionClosed as exc:
                codes.append(exc.rcvd.code if exc.rcvd else None)
        return codes, time.monotonic() - started

    codes, took = asyncio.run(scenario())
    assert codes == [1012] * 10
    assert took < 3, f"closing everyone took {took:.1f}s"
    assert wsd.wait(15) == 0


@pytest.mark.parametrize("window", ["inf", "nan", "-1"])
def test_a_drain_window_that_is_not_a_finite_number_of_seconds_is_refused(wsd_factory, window):
    wsd = wsd_factory(workers=1)
    result = wsd.ctl("drain", "--window", window, check=False)
    assert result.returncode == 1 and "finite number of seconds" in result.stderr, result.stderr
    time.sleep(0.3)
    assert wsd.status()["supervisor"]["state"] == "running" and _serving(wsd)


def test_a_drain_during_a_reload_stops_every_process(wsd_factory):
    wsd = wsd_factory("--drain-window", "1", workers=2)
    wsd.ctl("reload")
    time.sleep(0.2)  # the first stand-by process is starting
    wsd.ctl("drain", "--window", "1")
    assert wsd.wait(30) == 0
    assert "did not stop in time" not in wsd.read_log()
