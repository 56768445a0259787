"""`GET /metrics` of a real server: every family of issue 12 moves when its event happens, scraped
from the API port (whichever worker answers, it shows the whole server)."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time

import pytest

from harness.wsd_process import WsdProcess
from tests.operations.helpers import NO_PINGS, Client, Scrape, clients_on_every_worker, http, scrape, wait_for
from tests.raw_ws import RawWebSocket
from wsd.server.stats import HANDSHAKE_RESULTS, PUBLISH_SOURCES

WORKERS = 2


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # A small write-buffer limit: slow readers are cut off after little traffic.
    flags = ["--write-buffer-limit", "65536", *NO_PINGS]
    wsd = WsdProcess(tmp_path_factory.mktemp("metrics"), workers=WORKERS, flags=flags)
    wsd.start()
    yield wsd
    wsd.kill()


def grows(server, name: str, before: float, by: float = 1, **labels) -> Scrape:
    """Scrape until `name` has grown by at least `by` (stats blocks are written twice a second)."""
    return wait_for(lambda: (s := scrape(server)).value(name, **labels) >= before + by and s,
                    what=f"{name}{labels} >= {before + by}")  # fmt: skip


def publish_batch(server, messages: list[tuple[str, object]]) -> list[int]:
    body = json.dumps([{"channel": c, "data": d} for c, d in messages]).encode()
    status, _, answer = http(f"{server.api_url}/api/publish_batch", body, {"Content-Type": "application/json"})
    assert status == 200, answer
    return json.loads(answer)["offsets"]


def test_every_family_is_exported_zero_valued_with_its_labels_from_the_start(server):
    metrics = scrape(server)
    for result in HANDSHAKE_RESULTS:
        assert set(metrics.by_worker("wsd_handshakes_total", result=result)) == {"0", "1"}
    for result in ("limit", "unauthorized", "origin", "rate_limited"):  # refused by auth/limits: none yet
        assert metrics.value("wsd_handshakes_total", result=result) == 0
    for source in PUBLISH_SOURCES:
        assert set(metrics.by_worker("wsd_messages_published_total", source=source)) == {"0", "1"}
    assert metrics.value("wsd_messages_published_total", source="cluster") == 0
    for name in ("wsd_connections", "wsd_deliveries_total", "wsd_sent_bytes_total", "wsd_disconnects_total",
                 "wsd_slow_disconnects_total", "wsd_subscriptions", "wsd_channel_table_used",
                 "wsd_channel_table_size", "wsd_bus_lag_bytes", "wsd_bus_overruns_total", "wsd_bus_gaps_total",
                 "wsd_ring_history_seconds", "wsd_resumes_total", "wsd_publish_delivery_seconds_count",
                 "wsd_worker_restarts_total", "wsd_worker_resident_memory_bytes", "wsd_worker_cpu_seconds_total",
                 "wsd_bus_bad_entries_total", "wsd_bus_lost_bytes_total"):  # fmt: skip
        assert set(metrics.by_worker(name)) == {"0", "1"}, name
    assert {s.labels["code"] for s in metrics.families["wsd_disconnects"].samples} >= {"1000", "1006", "4000", "other"}
    assert not [name for name in metrics.families if name.startswith("wsd_cluster")]  # no --cluster


def test_connections_counts_open_websocket_connections_per_worker(server):
    before = scrape(server).by_worker("wsd_connections")
    clients = clients_on_every_worker(server, WORKERS, per_worker=2)
    expected = {str(w): before[str(w)] + sum(c.worker == w for c in clients) for w in range(WORKERS)}
    wait_for(lambda: scrape(server).by_worker("wsd_connections") == expected, what=f"connections {expected}")
    for client in clients:
        client.close()
    wait_for(lambda: scrape(server).by_worker("wsd_connections") == before, what="connections back")


def test_handshakes_count_each_accepted_connection(server):
    before = scrape(server).value("wsd_handshakes_total", result="accepted")
    clients = [Client(server) for _ in range(3)]
    grows(server, "wsd_handshakes_total", before, 3, result="accepted")
    for client in clients:
        client.close()


def test_connections_closed_before_a_whole_upgrade_request_count_incomplete_and_nothing_else(server):
    results = ("accepted", "draining", "limit", "unauthorized", "origin", "rate_limited", "incomplete")
    before = {result: scrape(server).value("wsd_handshakes_total", result=result) for result in results}
    address = ("127.0.0.1", server.port)
    socket.create_connection(address, timeout=10).close()  # a TCP health check: connects, sends nothing
    with socket.create_connection(address, timeout=10) as half:  # gives up half-way through its request
        half.sendall(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n")
    with socket.create_connection(address, timeout=15) as stalled:  # stalls: closed at the 5 s timeout
        stalled.sendall(b"GET /ws HTTP/1.1\r\n")
        started = time.monotonic()
        assert stalled.recv(1024) == b""  # nothing answered
        assert 3 < time.monotonic() - started < 12
    # Answered ones are not incomplete: a 404, an accepted session.
    assert http(f"http://127.0.0.1:{server.port}/no-such-page", None, {})[0] == 404
    Client(server).close()
    metrics = grows(server, "wsd_handshakes_total", before["accepted"], 1, result="accepted")
    metrics = grows(server, "wsd_handshakes_total", before["incomplete"], 3, result="incomplete")
    after = {result: metrics.value("wsd_handshakes_total", result=result) for result in results}
    assert after == {**before, "accepted": before["accepted"] + 1, "incomplete": before["incomplete"] + 3}


def test_published_messages_count_by_where_they_entered(server):
    metrics = scrape(server)
    client_before = metrics.value("wsd_messages_published_total", source="client")
    api_before = metrics.value("wsd_messages_published_total", source="api")
    client = Client(server)
    assert client.call(op="pub", ch="sources", data=1)["op"] == "ok"
    server.publish("sources", 2)
    publish_batch(server, [("sources", 3), ("sources", 4), ("sources", 5)])
    metrics = grows(server, "wsd_messages_published_total", api_before, 4, source="api")
    grows(server, "wsd_messages_published_total", client_before, 1, source="client")
    assert metrics.value("wsd_messages_published_total", source="cluster") == 0
    client.close()


def test_deliveries_count_one_per_message_per_subscriber(server):
    subscribers = clients_on_every_worker(server, WORKERS, per_worker=1) + [Client(server)]
    for client in subscribers:
        assert client.call(op="sub", ch="deliveries")["op"] == "ok"
    before = scrape(server).value("wsd_deliveries_total")
    publish_batch(server, [("deliveries", n) for n in range(4)])
    for client in subscribers:
        assert [client.message()["data"] for _ in range(4)] == [0, 1, 2, 3]
    metrics = grows(server, "wsd_deliveries_total", before, 4 * len(subscribers))
    time.sleep(0.6)  # nothing more is counted
    assert scrape(server).value("wsd_deliveries_total") == metrics.value("wsd_deliveries_total")
    for client in subscribers:
        client.close()


def test_publish_delivery_latency_is_a_histogram_of_every_delivery(server):
    subscribers = clients_on_every_worker(server, WORKERS, per_worker=1)
    for client in subscribers:
        client.call(op="sub", ch="latency")
    metrics = scrape(server)
    count = metrics.value("wsd_publish_delivery_seconds_count")
    total = metrics.value("wsd_publish_delivery_seconds_sum")
    publish_batch(server, [("latency", n) for n in range(5)])
    for client in subscribers:
        [client.message() for _ in range(5)]
    metrics = grows(server, "wsd_publish_delivery_seconds_count", count, 5 * len(subscribers))
    assert metrics.value("wsd_publish_delivery_seconds_count") == count + 10
    added = metrics.value("wsd_publish_delivery_seconds_sum") - total
    assert 0 < added < 10 * 5.0  # each took more than nothing, less than the top bucket
    buckets = [s for s in metrics.families["wsd_publish_delivery_seconds"].samples
               if s.name.endswith("_bucket") and s.labels["worker"] == "0"]  # fmt: skip
    assert [s.value for s in buckets] == sorted(s.value for s in buckets)  # cumulative
    assert buckets[-1].labels["le"] == "+Inf"
    for client in subscribers:
        client.close()


def test_sent_bytes_grow_by_the_frames_written_to_clients(server):
    client = Client(server)
    client.call(op="sub", ch="bytes")
    before = scrape(server).value("wsd_sent_bytes_total")
    server.publish("bytes", "x" * 5000)
    assert len(client.message()["data"]) == 5000
    grows(server, "wsd_sent_bytes_total", before, 5000)
    client.close()


def test_disconnects_count_by_close_code(server):
    before = scrape(server)
    codes = {"1000": 1, "1003": 1, "1006": 1, "1009": 1, "other": 1}
    normal = Client(server)
    normal.close(1000)
    private = Client(server)
    private.close(3001)  # an application's own code: "other", not a series of its own
    binary = RawWebSocket("127.0.0.1", server.port)
    binary.send_frame(0x2, b"\x00binary")
    assert binary.recv_close_code() == 1003
    binary.close()
    huge = RawWebSocket("127.0.0.1", server.port)
    huge.send_text(b"x" * 70000)  # over --max-message-size
    assert huge.recv_close_code() == 1009
    huge.close()
    dropped = RawWebSocket("127.0.0.1", server.port)
    dropped.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    dropped.close()  # a reset: no close frame
    for code, added in codes.items():
        grows(server, "wsd_disconnects_total", before.value("wsd_disconnects_total", code=code), added, code=code)


def test_slow_readers_cut_off_are_counted(server):
    slow = RawWebSocket("127.0.0.1", server.port, rcvbuf=4096)
    slow.send_text(json.dumps({"op": "sub", "ch": "firehose", "id": 1}))
    assert json.loads(slow.recv_frame()[1])["op"] == "ok"
    metrics = scrape(server)
    before = metrics.value("wsd_slow_disconnects_total")
    closed_1013 = metrics.value("wsd_disconnects_total", code="1013")
    for _ in range(8):  # far more than the 64 KiB write-buffer limit and the kernel's buffers, never read
        publish_batch(server, [("firehose", "z" * 3000)] * 250)
    grows(server, "wsd_slow_disconnects_total", before, 1)
    assert slow.recv_close_code() == 1013
    slow.close()
    grows(server, "wsd_disconnects_total", closed_1013, 1, code="1013")


def test_subscriptions_and_subscribed_channels_follow_sub_and_unsub(server):
    client = Client(server)
    worker = str(client.worker)
    metrics = scrape(server)
    subscriptions = metrics.by_worker("wsd_subscriptions")[worker]
    channels = metrics.by_worker("wsd_subscribed_channels")[worker]
    for name in ("gauge-a", "gauge-b", "gauge-c"):
        client.call(op="sub", ch=name)
    wait_for(lambda: scrape(server).by_worker("wsd_subscriptions")[worker] == subscriptions + 3)
    assert scrape(server).by_worker("wsd_subscribed_channels")[worker] == channels + 3
    client.call(op="unsub", ch="gauge-b")
    wait_for(lambda: scrape(server).by_worker("wsd_subscriptions")[worker] == subscriptions + 2)
    client.close()
    wait_for(lambda: scrape(server).by_worker("wsd_subscriptions")[worker] == subscriptions)
    assert scrape(server).by_worker("wsd_subscribed_channels")[worker] == channels


def test_channel_table_use_grows_with_channels_published_to(server):
    metrics = scrape(server)
    before = metrics.value("wsd_channel_table_used")
    assert metrics.by_worker("wsd_channel_table_size") == {"0": 65536, "1": 65536}
    publish_batch(server, [(f"table-{n}", n) for n in range(6)])
    grows(server, "wsd_channel_table_used", before, 6)


def test_resumes_count_by_whether_history_covered_them(server):
    metrics = scrape(server)
    recovered = metrics.value("wsd_resumes_total", recovered="true")
    lost = metrics.value("wsd_resumes_total", recovered="false")
    offset = server.publish("resume", 1)
    server.publish("resume", 2)
    epoch = Client(server).call(op="sub", ch="resume")["epoch"]
    client = Client(server)
    assert client.call(op="sub", ch="resume", since={"off": offset, "epoch": epoch})["recovered"] is True
    other = Client(server)
    assert other.call(op="sub", ch="resume", since={"off": offset, "epoch": epoch + 1})["recovered"] is False
    # The two resumes may be on different workers: each block is written on its own tick.
    wait_for(lambda: ((s := scrape(server)).value("wsd_resumes_total", recovered="true"),
                      s.value("wsd_resumes_total", recovered="false")) == (recovered + 1, lost + 1))  # fmt: skip
    client.close()
    other.close()


def test_ring_history_and_bytes_read_follow_the_bus(server):
    metrics = scrape(server)
    read = metrics.by_worker("wsd_bus_read_bytes_total")
    server.publish("ring", "y" * 1000)
    # Every worker reads every ring.
    wait_for(lambda: all(v >= read[w] + 1000 for w, v in scrape(server).by_worker("wsd_bus_read_bytes_total").items()))
    history = max(scrape(server).by_worker("wsd_ring_history_seconds").values())
    assert history > 0
    time.sleep(1.1)  # the oldest message grows older
    assert max(scrape(server).by_worker("wsd_ring_history_seconds").values()) >= history + 0.5
    idle = scrape(server)
    assert idle.value("wsd_bus_lag_bytes") >= 0
    for name in ("wsd_bus_overruns_total", "wsd_bus_lost_bytes_total", "wsd_bus_gaps_total",
                 "wsd_bus_bad_entries_total"):  # fmt: skip
        assert idle.value(name) == 0, name


def test_memory_cpu_heartbeat_ready_and_build_info(server):
    metrics = scrape(server)
    for worker, rss in metrics.by_worker("wsd_worker_resident_memory_bytes").items():
        assert rss > 10 * 2**20, worker
    cpu = metrics.by_worker("wsd_worker_cpu_seconds_total")
    assert all(value > 0 for value in cpu.values())
    assert all(age < 3 for age in metrics.by_worker("wsd_worker_heartbeat_age_seconds").values())
    assert metrics.value("wsd_ready") == 1
    version = subprocess.run([sys.executable, "-m", "wsd.server", "--version"], capture_output=True, text=True)
    [build] = metrics.families["wsd_build_info"].samples
    assert build.name == "wsd_build_info" and build.value == 1
    assert f"wsd {build.labels['version']}" == version.stdout.strip()
    started = metrics.value("wsd_start_time_seconds")
    assert abs(started + server.status()["supervisor"]["uptime_s"] - time.time()) < 5


def test_any_worker_answers_for_the_whole_server_and_openmetrics_on_request(server):
    previous = 0.0
    for _ in range(12):  # new connections: the kernel spreads them over the workers
        status, headers, body = http(f"{server.api_url}/metrics")
        assert status == 200
        metrics = Scrape(body.decode())
        assert set(metrics.by_worker("wsd_handshakes_total")) == {"0", "1"}
        accepted = metrics.value("wsd_handshakes_total", result="accepted")
        assert accepted >= previous  # the same server's counters, whoever answers
        previous = accepted
    status, headers, body = http(f"{server.api_url}/metrics",
                                 headers={"Accept": "application/openmetrics-text; version=1.0.0"})  # fmt: skip
    assert status == 200 and headers["Content-Type"].startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")


def test_a_killed_worker_is_counted_as_a_restart_and_its_counts_are_kept(server):
    before = scrape(server)
    deliveries = before.by_worker("wsd_deliveries_total")
    restarts = before.by_worker("wsd_worker_restarts_total")
    pid = next(w["pid"] for w in server.status()["workers"] if w["slot"] == 1)
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: scrape(server).by_worker("wsd_worker_restarts_total")["1"] == restarts["1"] + 1, timeout=15)
    server.wait_ready()
    after = scrape(server)
    assert after.by_worker("wsd_deliveries_total")["1"] >= deliveries["1"]  # a counter never goes back
    assert after.by_worker("wsd_worker_restarts_total")["0"] == restarts["0"]


# -- families that need a server of their own --------------------------------------------------------


def test_a_reader_lapped_on_the_bus_counts_an_overrun_lost_bytes_and_a_gap(tmp_path):
    # The smallest ring (64 KiB): a stopped worker is lapped by 160 KiB of messages.
    wsd = WsdProcess(tmp_path, workers=2, flags=["--ring-size", "65536", "--max-message-size", "8192", *NO_PINGS])
    wsd.start()
    try:
        [writer, reader] = sorted(clients_on_every_worker(wsd, 2), key=lambda c: c.worker)
        channels = [f"lap-{n}" for n in range(12)]
        for name in channels:
            reader.call(op="sub", ch=name)
        pid = next(w["pid"] for w in wsd.status()["workers"] if w["slot"] == 1)
        os.kill(pid, signal.SIGSTOP)
        try:
            # Channels worker 0 sequences answer at once; the others wait for the stopped worker.
            ids = {writer.send(op="pub", ch=name, data=0): name for name in channels}
            writer.ws.sock.settimeout(1.0)
            owned = []
            try:
                while len(owned) < len(channels):
                    reply = writer.receive()
                    if reply.get("op") == "ok" and reply.get("id") in ids:
                        owned.append(ids[reply["id"]])
            except TimeoutError:
                pass
            assert owned, "no channel sequenced by worker 0"
            writer.ws.sock.settimeout(10)
            for _ in range(40):
                writer.send(op="pub", ch=owned[0], data="w" * 4000)
            time.sleep(0.5)
        finally:
            os.kill(pid, signal.SIGCONT)
        metrics = wait_for(lambda: (s := scrape(wsd)).by_worker("wsd_bus_overruns_total")["1"] >= 1 and s)
        assert metrics.by_worker("wsd_bus_lost_bytes_total")["1"] > 0
        wait_for(lambda: scrape(wsd).by_worker("wsd_bus_gaps_total")["1"] >= 1)
        assert scrape(wsd).by_worker("wsd_bus_overruns_total")["0"] == 0
    finally:
        wsd.kill()


def test_handshakes_refused_while_draining_are_counted(tmp_path):
    wsd = WsdProcess(tmp_path, workers=1, flags=["--lame-duck", "0"])  # refused at once, not after 5 s
    wsd.start()
    try:
        wsd.ctl("drain", "--window", "30")
        wait_for(lambda: wsd.http_get("/healthz")[0] == 503)
        refused = RawWebSocket("127.0.0.1", wsd.port)
        assert refused.status == 503
        refused.close()
        grows(wsd, "wsd_handshakes_total", 0, 1, result="draining")
        assert wsd.status()["totals"]["handshakes_refused"] == 1  # ctl status says the same
    finally:
        wsd.kill()
