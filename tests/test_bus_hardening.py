"""The shared-memory bus under hostile or unlucky conditions, driven from outside a real `wsd serve`
(issue 9): sizes checked at publish time, a full channel table, crashes of the sequencing worker,
the shared memory itself, history honesty."""

from __future__ import annotations

import concurrent.futures
import fcntl
import http.client
import itertools
import json
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request

import orjson
from websockets.sync.client import connect

from harness.wsd_process import WsdProcess


def post(url: str, body: bytes, timeout: float = 10) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_a_publish_too_large_for_the_ring_is_refused_at_once_and_the_bus_keeps_working(wsd_factory):
    # A 64 KiB ring carries entries of at most 16,376 bytes: 16,330 bytes of data fit as a publish
    # request (34-byte header) but not as the message (52-byte header) the owner would write.
    wsd = wsd_factory("--ring-size", "65536", "--max-message-size", "15000", workers=2)
    channels = [f"big{n}" for n in range(8)]
    with connect(wsd.url) as ws:
        for n, channel in enumerate(channels):
            ws.send(json.dumps({"op": "sub", "ch": channel, "id": n}))
            assert json.loads(ws.recv())["op"] == "ok"
        data = "x" * 16_328
        for channel in channels:
            started = time.monotonic()
            status, body = post(f"{wsd.api_url}/api/publish", json.dumps({"channel": channel, "data": data}).encode())
            assert status == 413, body
            assert "bytes" in body["error"]
            assert time.monotonic() - started < 2
        for channel in channels:
            assert wsd.publish(channel, {"ok": channel}) == 1
        got = sorted((m["ch"], m["off"]) for m in (json.loads(ws.recv(timeout=5)) for _ in channels))
        assert got == sorted((channel, 1) for channel in channels)
    workers = wsd.status()["workers"]
    assert all(w["bad_entries"] == 0 for w in workers)


def test_status_shows_each_rings_history_horizon_and_warns_when_it_is_below_the_ttl(wsd_factory):
    wsd = wsd_factory("--ring-size", "65536", "--max-message-size", "15000", "--history-ttl", "300", workers=2)
    status = wsd.status()
    for worker in status["workers"]:
        assert worker["history_horizon_s"] is None  # nothing written yet
        assert worker["table_size"] == 65536 and worker["table_used"] == 0
    # 300 KB through two 64 KiB rings: each laps several times within a second (a request body is
    # at most one ring entry, 16 KiB here: batches of 12).
    for first in range(0, 300, 12):
        batch = [{"channel": f"lap{n % 16}", "data": "y" * 1000} for n in range(first, first + 12)]
        status_code, body = post(f"{wsd.api_url}/api/publish_batch", json.dumps(batch).encode())
        assert status_code == 200, body
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        workers = wsd.status()["workers"]
        if "less than --history-ttl" in wsd.read_log() and all(w["history_horizon_s"] is not None for w in workers):
            break
        time.sleep(0.2)
    assert "less than --history-ttl" in wsd.read_log()
    for worker in workers:
        assert 0 <= worker["history_horizon_s"] < 300
        assert 0 <= worker["table_used"] <= 16
    assert sum(w["table_used"] for w in workers) == 16
    text = wsd.ctl("status").stdout
    assert "HISTORY" in text and "TABLE" in text


def test_a_million_distinct_channels_never_fill_the_table_and_live_channels_still_resume(wsd_factory):
    """Issue 9, item 1. 4,096 table slots per worker instead of 65,536 keep the run short: the point
    is many times more channels than the table holds (1,000,000 over 2 x 3,686 usable entries, so
    each table fills and is cycled through ~135 times), which 65,536 slots would show only ~8 times
    for four times the run time; nothing in eviction depends on the table's size."""
    wsd = wsd_factory("--channel-table-slots", "4096", "--ring-size", str(16 << 20), workers=2)
    live = [f"live:{n}" for n in range(10)]
    epochs: dict[str, int] = {}
    # max_queue=None: the subscriber reads only at the end; its frames (and the server's pings) must
    # still be taken off the socket meanwhile, or the server times it out.
    with connect(wsd.url, ping_interval=None, max_queue=None) as subscriber:
        for n, channel in enumerate(live):
            subscriber.send(json.dumps({"op": "sub", "ch": channel, "id": n}))
            reply = json.loads(subscriber.recv(timeout=5))
            assert reply["op"] == "ok" and reply["off"] == 0
            epochs[channel] = reply["epoch"]

        def publish_batches(first: int) -> None:
            # Four connections, so that both workers parse and publish batches at once.
            connection = http.client.HTTPConnection("127.0.0.1", wsd.api_port, timeout=30)
            for batch in range(first, 1000, 4):
                items = [{"channel": f"user:{batch}:{n}", "data": n} for n in range(999)]
                items.append({"channel": live[batch % 10], "data": batch})
                connection.request(
                    "POST", "/api/publish_batch", orjson.dumps(items), {"Content-Type": "application/json"}
                )
                response = connection.getresponse()
                body = orjson.loads(response.read())
                assert response.status == 200, (batch, body)
                assert body["offsets"][:999] == [1] * 999  # every channel is new
            connection.close()

        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            for outcome in [pool.submit(publish_batches, first) for first in range(4)]:
                outcome.result()
        elapsed = time.monotonic() - started
        # The subscriber got every message of its channels, in order, none lost to eviction.
        got: dict[str, list[int]] = {channel: [] for channel in live}
        while sum(map(len, got.values())) < 1000:
            message = json.loads(subscriber.recv(timeout=10))
            got[message["ch"]].append(message["off"])
        assert all(offsets == list(range(1, 101)) for offsets in got.values()), got
        # A second connection resumes each live channel from 5 messages back: recovered, in order.
        with connect(wsd.url) as resumer:
            for n, channel in enumerate(live):
                since = {"off": 95, "epoch": epochs[channel]}
                resumer.send(json.dumps({"op": "sub", "ch": channel, "id": n, "since": since}))
                reply = json.loads(resumer.recv(timeout=5))
                assert reply["op"] == "ok" and reply["recovered"] is True, reply
                replayed = [json.loads(resumer.recv(timeout=5))["off"] for _ in range(5)]
                assert replayed == [96, 97, 98, 99, 100]
    # New channels still publish, and the tables show their fill.
    assert wsd.publish("brand-new", {"x": 1}) == 1
    workers = wsd.status()["workers"]
    assert all(w["table_size"] == 4096 and 0 < w["table_used"] <= 4096 * 9 // 10 for w in workers), workers
    # Every channel beyond what the two tables hold was forgotten (stats are written twice a second):
    # 1,000 batches of 999 new channels each, the 10 live ones and "brand-new".
    distinct = 1000 * 999 + len(live) + 1
    held = sum(w["table_used"] for w in workers)
    deadline = time.monotonic() + 5
    while sum(w["channels_forgotten"] for w in workers) < distinct - held and time.monotonic() < deadline:
        time.sleep(0.2)
        workers = wsd.status()["workers"]
    assert sum(w["channels_forgotten"] for w in workers) == distinct - held, (distinct, held, workers)
    print(f"1,000,000 channels published in {elapsed:.1f}s")


def test_no_message_is_sequenced_twice_across_sigkills_of_the_sequencing_workers(wsd_factory):
    """Issue 9, item 8: a sequencing worker SIGKILLed between appending messages and storing how far
    it read the publish requests must not leave its successor sequencing them again. Every message
    carries a unique id; afterwards each channel's whole history is replayed and checked."""
    wsd = wsd_factory("--ring-size", str(64 << 20), "--history-size", "1000000", workers=2)
    channels = [f"once{n}" for n in range(8)]
    stop = threading.Event()
    ids = itertools.count()

    def publish_batches() -> None:
        connection = None
        while not stop.is_set():
            items = [{"channel": channels[n % 8], "data": next(ids)} for n in range(1000)]
            try:
                connection = connection or http.client.HTTPConnection("127.0.0.1", wsd.api_port, timeout=10)
                connection.request(
                    "POST", "/api/publish_batch", orjson.dumps(items), {"Content-Type": "application/json"}
                )
                connection.getresponse().read()
            except (OSError, http.client.HTTPException):
                connection = None
                time.sleep(0.05)

    # Two publishers keep the sequencing workers busy, so most kills land inside a batch.
    publishers = [threading.Thread(target=publish_batches, daemon=True) for _ in range(2)]
    for publisher in publishers:
        publisher.start()
    try:
        for kill in range(4):
            time.sleep(0.7)
            os.kill(wsd.worker_pids()[kill % 2], signal.SIGKILL)  # each worker holds a role
            wsd.wait_ready(timeout=30)
    finally:
        stop.set()
        for publisher in publishers:
            publisher.join(30)
    time.sleep(2)  # the last requests are sequenced
    assert sum(w["restarts"] for w in wsd.status()["workers"]) >= 4
    with connect(wsd.url, ping_interval=None, max_size=None) as client:
        # Two of the channels are replayed (a batch sequenced twice repeats every channel's messages).
        for n, channel in enumerate(channels[:2]):
            client.send(json.dumps({"op": "sub", "ch": channel, "id": n}))
            position = json.loads(client.recv(timeout=5))
            client.send(json.dumps({"op": "unsub", "ch": channel, "id": 100 + n}))
            assert json.loads(client.recv(timeout=5))["op"] == "ok"
            since = {"off": 0, "epoch": position["epoch"]}
            client.send(json.dumps({"op": "sub", "ch": channel, "id": 200 + n, "since": since}))
            reply = json.loads(client.recv(timeout=10))
            assert reply["recovered"] is True, reply
            replayed = [json.loads(client.recv(timeout=10)) for _ in range(reply["off"])]
            assert [m["off"] for m in replayed] == list(range(1, reply["off"] + 1))
            published = [m["data"] for m in replayed]
            assert len(published) == len(set(published)), f"{channel}: a message was sequenced twice"
            client.send(json.dumps({"op": "unsub", "ch": channel, "id": 300 + n}))
            assert json.loads(client.recv(timeout=5))["op"] == "ok"


# -- shared memory (issue 9, item 9) --


def test_the_bus_is_in_memory_only_reserved_sealed_and_out_of_reach_of_other_users(wsd_factory):
    wsd = wsd_factory(workers=2)
    pid = wsd.proc.pid
    # No file anyone could open or pre-create (segments were /dev/shm/wsd-<pid><4 hex>-slot<n>).
    assert [name for name in os.listdir("/dev/shm") if name.startswith(f"wsd-{pid}")] == []
    with open("/proc/net/unix") as unix:
        assert f"@wsd-{pid}" not in unix.read()  # no doorbell bound to a name anyone could flood
    segments = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        target = os.readlink(f"/proc/{pid}/fd/{fd}")
        if target.startswith("/memfd:wsd-bus-slot"):
            segments[fd] = target
    assert len(set(segments.values())) == 4, segments  # 2 bus slots per worker (mmap holds a dup of each)
    for fd in segments:
        stat = os.stat(f"/proc/{pid}/fd/{fd}")
        assert stat.st_blocks * 512 >= stat.st_size > 64 << 20  # allocated at start, not sparse
        with open(f"/proc/{pid}/fd/{fd}", "rb") as segment:
            seals = fcntl.fcntl(segment.fileno(), fcntl.F_GET_SEALS)
        assert seals & fcntl.F_SEAL_SHRINK and seals & fcntl.F_SEAL_GROW
    fd = next(iter(segments))  # another local user (nobody) tries to open a segment
    probe = subprocess.run(
        ["/usr/bin/python3", "-c", f"open('/proc/{pid}/fd/{fd}', 'rb')"], user=65534, group=65534,
        capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    assert probe.returncode != 0 and "PermissionError" in probe.stderr, probe


def test_a_bus_that_does_not_fit_in_memory_fails_at_start_saying_how_much_it_needs(tmp_path):
    command = WsdProcess(tmp_path, workers=2, flags=["--ring-size", str(1 << 40)]).command()
    result = subprocess.run(command, capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert result.returncode != 0
    assert "the bus needs 4,194,3" in result.stderr and "MiB of shared memory" in result.stderr, result.stderr
    assert "--ring-size 1099511627776" in result.stderr and "available" in result.stderr
    assert "worker 0 started" not in result.stderr


class WsdInSmallDevShm(WsdProcess):
    """wsd in a mount namespace whose /dev/shm is a 64 MiB tmpfs, as in a Docker container."""

    def command(self) -> list[str]:
        script = 'mount -t tmpfs -o size=64m tmpfs /dev/shm && exec "$@"'
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *super().command()]


def test_a_small_dev_shm_as_in_docker_never_brings_sigbus_mid_traffic(tmp_path):
    wsd = WsdInSmallDevShm(tmp_path / "wsd", workers=2)
    wsd.start()
    try:
        payload = "z" * 60_000
        for batch in range(120):  # ~110 MB through the rings: sparse files in /dev/shm died at ~64
            items = [{"channel": f"big{n}", "data": payload} for n in range(16)]
            status, body = post(f"{wsd.api_url}/api/publish_batch", orjson.dumps(items), timeout=30)
            assert status == 200, (batch, body)
        workers = wsd.status()["workers"]
        assert all(w["restarts"] == 0 and w["state"] == "running" for w in workers), workers
        assert "SIGBUS" not in wsd.read_log()
    finally:
        wsd.kill()
