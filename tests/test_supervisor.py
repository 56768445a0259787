"""The daemon's life: workers respawn, graceful stop, bind errors, worker count, titles, config."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from harness.net import free_port
from harness.wsd_process import WSD, WsdProcess


def _cmdline(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode().strip()


async def _connect_to_worker(wsd, slot: int, attempts: int = 200):
    """Open connections until one lands on `slot` (the kernel picks the worker)."""
    extra = []
    try:
        for _ in range(attempts):
            ws = await connect(wsd.url)
            if ws.response.headers["X-Wsd-Worker"] == str(slot):
                return ws
            extra.append(ws)
        raise AssertionError(f"no connection landed on worker {slot} in {attempts} attempts")
    finally:
        for ws in extra:
            await ws.close()


def test_killed_worker_is_respawned_and_clients_on_other_workers_see_nothing(wsd_factory):
    wsd = wsd_factory(workers=2)
    victim_pid = wsd.status()["workers"][1]["pid"]

    async def scenario():
        survivor = await _connect_to_worker(wsd, 0)
        await survivor.send(json.dumps({"op": "sub", "ch": "steady", "id": 1}))
        start = json.loads(await survivor.recv())["off"]
        doomed = await _connect_to_worker(wsd, 1)
        published = 0
        for n in range(60):
            if n == 20:
                os.kill(victim_pid, signal.SIGKILL)
            await asyncio.to_thread(wsd.publish, "steady", n)
            published += 1
            await asyncio.sleep(0.02)
        got = []
        while len(got) < published:
            got.append(json.loads(await asyncio.wait_for(survivor.recv(), 10)))
        assert [m["off"] for m in got] == list(range(start + 1, start + 1 + published))
        assert [m["data"] for m in got] == list(range(published))
        try:
            await asyncio.wait_for(doomed.recv(), 5)
            raise AssertionError("the killed worker's client should be disconnected")
        except ConnectionClosed:
            pass
        # The slot serves again with a new process.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            worker = wsd.status()["workers"][1]
            if worker["pid"] not in (None, victim_pid) and worker["accepting"]:
                break
            await asyncio.sleep(0.1)
        assert worker["restarts"] == 1 and worker["pid"] != victim_pid
        fresh = await _connect_to_worker(wsd, 1)
        await fresh.send(json.dumps({"op": "sub", "ch": "steady", "id": 2}))
        assert json.loads(await fresh.recv())["off"] == start + published  # offsets survived
        await asyncio.to_thread(wsd.publish, "steady", "after")
        assert json.loads(await asyncio.wait_for(fresh.recv(), 5))["data"] == "after"
        await survivor.close()
        await fresh.close()

    asyncio.run(scenario())
    assert "worker 1 (pid" in wsd.read_log() and "died" in wsd.read_log()


def test_graceful_stop_closes_clients_with_1001_and_exits_zero(wsd_factory):
    wsd = wsd_factory(workers=2)

    async def scenario():
        clients = [await connect(wsd.url) for _ in range(10)]
        wsd.signal(signal.SIGINT)
        codes = []
        for ws in clients:
            try:
                await asyncio.wait_for(ws.recv(), 10)
            except ConnectionClosed as exc:
                codes.append(exc.rcvd.code if exc.rcvd else None)
        return codes

    codes = asyncio.run(scenario())
    assert codes == [1001] * 10
    assert wsd.wait(15) == 0
    assert not os.path.exists(wsd.admin_socket)


def test_ctl_stop_stops_the_server(wsd_factory):
    wsd = wsd_factory(workers=1)
    result = wsd.ctl("stop")
    assert result.returncode == 0
    assert wsd.wait(15) == 0


def test_cannot_bind_exits_nonzero_with_a_clear_message(wsd_factory, tmp_path):
    first = wsd_factory(workers=1)
    second = WsdProcess(tmp_path / "second", workers=1)
    second.port = first.port
    result = subprocess.run(second.command(), capture_output=True, text=True, timeout=20)
    assert result.returncode != 0
    assert f"cannot listen on 127.0.0.1:{first.port}" in result.stderr
    assert "Address already in use" in result.stderr


def test_process_titles(wsd_factory):
    wsd = wsd_factory(workers=2)
    assert _cmdline(wsd.proc.pid) == "wsd: supervisor"
    for slot, pid in enumerate(wsd.worker_pids()):
        assert _cmdline(pid) == f"wsd: worker {slot}"


def test_workers_auto_sizes_for_max_connections(wsd_factory):
    # 20,000 descriptors per process: ~19,900 connections a worker, so 50,000 need 3 workers.
    wsd = wsd_factory("--max-connections", "50000", workers="auto")
    status = wsd.status()
    cores = os.cpu_count()
    assert len(status["workers"]) == max(cores, 3)
    assert all(w["max_connections"] <= 19_900 for w in status["workers"])


def test_worker_stops_accepting_at_its_connection_limit(wsd_factory):
    wsd = wsd_factory("--max-connections", "10", workers=1)

    async def scenario():
        clients = [await connect(wsd.url) for _ in range(10)]
        await asyncio.sleep(0.6)  # stats are published twice a second
        worker = wsd.status()["workers"][0]
        assert worker["connections"] == 10 and worker["accepting"] is False
        assert "stopped accepting" in wsd.read_log()
        assert "NO" in wsd.ctl("status").stdout
        for ws in clients[:5]:
            await ws.close()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not wsd.status()["workers"][0]["accepting"]:
            await asyncio.sleep(0.1)
        assert wsd.status()["workers"][0]["accepting"]
        another = await connect(wsd.url)
        await another.close()
        for ws in clients[5:]:
            await ws.close()

    asyncio.run(scenario())


def test_config_file_and_flags_win(wsd_factory, tmp_path):
    config = tmp_path / "wsd.toml"
    config.write_text('max_message_size = 2048\nworkers = 3\nlog_level = "info"\n')
    wsd = wsd_factory("--config", str(config), workers=1)  # the --workers flag wins over the file
    assert len(wsd.status()["workers"]) == 1
    from tests.raw_ws import RawWebSocket

    client = RawWebSocket("127.0.0.1", wsd.port)
    client.send_text(b"x" * 3000)  # over the file's 2048
    assert client.recv_close_code() == 1009


def test_bad_config_is_a_clear_error(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text("max_mesage_size = 10\n")
    result = subprocess.run(
        WSD + ["serve", "--config", str(config), "--port", str(free_port())], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "unknown setting 'max_mesage_size'" in result.stderr


def test_a_crash_loop_is_reported_clearly(wsd_factory):
    import psutil

    wsd = wsd_factory(workers=2)
    # Every new process of slot 1 dies at once, as a worker that fails at start-up would. (The bus
    # lives in memfds no outsider can reach, so breaking the bus from here is no longer a way.)
    supervisor = psutil.Process(wsd.proc.pid)
    os.kill(wsd.worker_pids()[1], signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for child in supervisor.children():
            try:
                if "worker 1" in " ".join(child.cmdline()):
                    child.kill()
            except psutil.Error:
                pass
        worker = wsd.status()["workers"][1]
        if worker["state"] == "crash-loop":
            break
        time.sleep(0.02)
    assert worker["state"] == "crash-loop", worker
    assert "is crash-looping" in wsd.read_log()
    assert "crash-loop" in wsd.ctl("status").stdout
    # The slot left the listening group: every new connection reaches the worker that is up.
    time.sleep(0.5)
    if wsd.status()["workers"][1]["state"] == "crash-loop":  # not in the middle of a new attempt
        assert [wsd.http_get("/healthz")[0] for _ in range(20)] == [200] * 20
    # Once a worker of the slot outlives a short run (10 s), the slot is running again: it was marked
    # crash-loop for good, however long that worker served.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and wsd.status()["workers"][1]["state"] != "running":
        time.sleep(0.2)
    worker = wsd.status()["workers"][1]
    assert worker["state"] == "running" and worker["accepting"], worker
    assert "is running again after its crash loop" in wsd.read_log()


def test_workers_stop_when_the_supervisor_is_killed(wsd_factory):
    import psutil

    wsd = wsd_factory(workers=2)
    pids = wsd.worker_pids()
    wsd.proc.kill()
    wsd.proc.wait()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"
                                              for p in pids):
        time.sleep(0.1)
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie" for p in pids)
