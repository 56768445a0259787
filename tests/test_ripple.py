"""Ripple restarts without loss: drain, rolling reload, history and resume (the acceptance tests)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
import urllib.error
import urllib.request

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.resume_client import ResumingClient

CHANNELS = [f"feed{n}" for n in range(5)]


async def _publish(wsd, channel: str, data: object) -> int:
    return await asyncio.to_thread(wsd.publish, channel, data)


async def _handshake_loop(wsd, stop: asyncio.Event, results: dict) -> None:
    """Open and close connections back to back; any refusal, reset or non-101 is a failure."""
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{wsd.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    while not stop.is_set():
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", wsd.port), 5)
            writer.write(request)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            status = int(head.split(b" ", 2)[1])
            if status == 101:
                results["ok"] += 1
            else:
                results["failed"].append(f"HTTP {status}")
            writer.close()
        except (TimeoutError, OSError, asyncio.IncompleteReadError) as exc:
            results["failed"].append(f"{type(exc).__name__}: {exc}")


async def _wait_reload_done(wsd, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = await asyncio.to_thread(wsd.status)
        workers = status["workers"]
        if status["supervisor"]["state"] == "running" and len(workers) == wsd.workers:
            if all(w["state"] == "running" and w["role"] is not None for w in workers):
                return status
        await asyncio.sleep(0.2)
    raise AssertionError(f"reload did not finish in {timeout}s: {status}")


def test_rolling_reload_loses_nothing_and_fails_no_handshake(wsd_factory):
    """1,000 resuming clients on 5 channels, 20 msgs/s on each channel, reload of every worker."""
    wsd = wsd_factory("--drain-window", "3", workers=2)
    old_pids = set(wsd.worker_pids())

    async def scenario():
        clients = [ResumingClient(wsd.url, [CHANNELS[n % 5]]) for n in range(1000)]
        for client in clients:
            client.start()
        await asyncio.wait_for(asyncio.gather(*(c.ready.wait() for c in clients)), 60)
        starts = {id(c): next(iter(c.channels.values())).offset for c in clients}
        published = {name: [] for name in CHANNELS}
        stop_publishing = asyncio.Event()

        async def publisher():
            n = 0
            while not stop_publishing.is_set():
                tick = time.monotonic()
                for name in CHANNELS:
                    offset = await _publish(wsd, name, {"n": n})
                    published[name].append((offset, {"n": n}))
                n += 1
                await asyncio.sleep(max(0.0, 0.05 - (time.monotonic() - tick)))

        handshakes = {"ok": 0, "failed": []}
        stop_handshakes = asyncio.Event()
        publishing = asyncio.create_task(publisher())
        connecting = asyncio.create_task(_handshake_loop(wsd, stop_handshakes, handshakes))
        await asyncio.sleep(1.0)
        assert "reloading" in (await asyncio.to_thread(wsd.ctl, "reload")).stdout
        status = await _wait_reload_done(wsd, 60)
        await asyncio.sleep(1.0)
        stop_handshakes.set()
        stop_publishing.set()
        await asyncio.gather(publishing, connecting)

        new_pids = {w["pid"] for w in status["workers"]}
        assert not new_pids & old_pids, "every worker was replaced"
        assert handshakes["failed"] == [], f"failed handshakes during the reload: {handshakes['failed'][:5]}"
        assert handshakes["ok"] > 50

        deadline = time.monotonic() + 30
        expected_counts = {name: len(published[name]) for name in CHANNELS}
        while time.monotonic() < deadline:
            if all(
                next(iter(c.channels.values())).offset == starts[id(c)] + expected_counts[next(iter(c.channels))]
                for c in clients
            ):
                break
            await asyncio.sleep(0.2)
        for client in clients:
            await client.stop()
        failures = []
        for client in clients:
            name, state = next(iter(client.channels.items()))
            start = starts[id(client)]
            expected = [(off, data) for off, data in published[name] if off > start]
            if state.messages != expected or state.duplicates or state.gaps:
                failures.append((name, len(state.messages), len(expected), state.duplicates, state.gaps[:3]))
        assert not failures, f"{len(failures)} clients lost or repeated messages, e.g. {failures[:3]}"
        assert all(c.failed_handshakes == [] for c in clients), [c.failed_handshakes for c in clients][:3]
        # Every client was closed by its draining worker and resumed elsewhere. A client that landed
        # on an old worker during the last instants of its window gets 1001 (window over), not 1012.
        unmoved = [(c.resumes, c.close_codes) for c in clients if not (c.resumes >= 1 and c.close_codes)]
        assert not unmoved, f"{len(unmoved)} clients were not moved and resumed, e.g. {unmoved[:5]}"
        assert sum(1012 in c.close_codes for c in clients) >= 0.9 * len(clients)
        assert sum(len(p) for p in published.values()) > 100

    asyncio.run(scenario())


def test_drain_spreads_closes_over_the_window_then_exits_zero(wsd_factory):
    wsd = wsd_factory("--lame-duck", "0", workers=2)  # new handshakes refused at once
    clients_count = 200

    async def scenario():
        clients = [await connect(wsd.url) for _ in range(clients_count)]
        closes: list[tuple[float, int | None]] = []

        async def wait_close(ws):
            try:
                async for _ in ws:
                    pass
            except ConnectionClosed:
                pass
            closes.append((time.monotonic(), ws.close_code))

        waiters = [asyncio.create_task(wait_close(ws)) for ws in clients]
        started = time.monotonic()
        result = await asyncio.to_thread(wsd.ctl, "drain", "--window", "5")
        assert result.returncode == 0
        # At once: /healthz fails and new handshakes are refused with Retry-After.
        assert (await asyncio.to_thread(wsd.http_get, "/healthz"))[0] == 503
        with pytest.raises(Exception) as refused:
            await connect(wsd.url)
        assert "503" in str(refused.value)
        status = await asyncio.to_thread(wsd.status)
        assert status["supervisor"]["state"] == "draining"
        assert all(w["draining"] for w in status["workers"])
        await asyncio.wait_for(asyncio.gather(*waiters), 15)
        return started, closes

    started, closes = asyncio.run(scenario())
    assert wsd.wait(20) == 0
    assert [code for _, code in closes] == [1012] * clients_count
    offsets = [t - started for t, _ in closes]
    assert max(offsets) <= 5.5
    tenths = [0] * 10
    for offset in offsets:
        tenths[min(9, int(offset / 0.5))] += 1
    even_share = clients_count / 10
    assert max(tenths) <= 2 * even_share, f"closes per tenth of the window: {tenths}"
    assert "drain" in wsd.read_log()


def test_drain_retry_after_header(wsd_factory):
    wsd = wsd_factory("--drain-window", "5", "--lame-duck", "0", workers=1)
    wsd.ctl("drain")
    request = urllib.request.Request(
        f"http://127.0.0.1:{wsd.port}/ws",
        headers={"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
                 "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode()},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5)
    assert refused.value.code == 503 and refused.value.headers["Retry-After"]


def test_second_sigterm_ends_the_drain_promptly_with_1001(wsd_factory):
    import signal

    wsd = wsd_factory(workers=1)

    async def scenario():
        clients = [await connect(wsd.url) for _ in range(20)]
        wsd.ctl("drain", "--window", "30")
        await asyncio.sleep(1.0)
        wsd.signal(signal.SIGTERM)
        codes = []
        for ws in clients:
            try:
                await asyncio.wait_for(ws.recv(), 10)
            except ConnectionClosed:
                codes.append(ws.close_code)
        return codes

    started = time.monotonic()
    codes = asyncio.run(scenario())
    assert wsd.wait(15) == 0
    assert time.monotonic() - started < 10
    assert set(codes) <= {1012, 1001} and 1001 in codes


async def _subscribe(ws, channel: str, since: dict | None = None) -> dict:
    request = {"op": "sub", "ch": channel, "id": 1}
    if since is not None:
        request["since"] = since
    await ws.send(json.dumps(request))
    return json.loads(await ws.recv())


def test_resume_gets_exactly_the_missed_messages(wsd_factory):
    wsd = wsd_factory(workers=2)

    async def scenario():
        async with connect(wsd.url) as ws:
            ok = await _subscribe(ws, "resume")
            for n in range(3):
                await _publish(wsd, "resume", n)
            seen = [json.loads(await ws.recv()) for _ in range(3)]
        last = {"off": seen[-1]["off"], "epoch": ok["epoch"]}
        for n in range(50):
            await _publish(wsd, "resume", 100 + n)
        async with connect(wsd.url) as ws:
            reply = await _subscribe(ws, "resume", last)
            assert reply["recovered"] is True and reply["off"] == last["off"] + 50
            replayed = [json.loads(await ws.recv()) for _ in range(50)]
            await _publish(wsd, "resume", "live")
            live = json.loads(await ws.recv())
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(ws.recv(), 0.5)  # nothing more: no duplicate
        assert [m["off"] for m in replayed] == list(range(last["off"] + 1, last["off"] + 51))
        assert [m["data"] for m in replayed] == [100 + n for n in range(50)]
        assert live["off"] == last["off"] + 51 and live["data"] == "live"

    asyncio.run(scenario())


def test_history_survives_the_restart_of_a_worker(wsd_factory):
    wsd = wsd_factory(workers=2)

    async def scenario():
        async with connect(wsd.url) as ws:
            ok = await _subscribe(ws, "durable")
        for n in range(10):
            await _publish(wsd, "durable", n)
        for pid in wsd.worker_pids():
            os.kill(pid, 9)
            await asyncio.sleep(0.1)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                status = await asyncio.to_thread(wsd.status)
                if all(w["accepting"] and w["restarts"] >= 1 for w in status["workers"]):
                    break
            except RuntimeError:
                pass
            await asyncio.sleep(0.2)
        async with connect(wsd.url) as ws:
            reply = await _subscribe(ws, "durable", {"off": ok["off"], "epoch": ok["epoch"]})
            assert reply["recovered"] is True and reply["epoch"] == ok["epoch"]
            replayed = [json.loads(await ws.recv())["data"] for _ in range(10)]
        assert replayed == list(range(10))

    asyncio.run(scenario())


@pytest.mark.parametrize("loss", ["size", "ttl", "epoch"])
def test_lost_history_is_reported_as_not_recovered(wsd_factory, loss):
    wsd = wsd_factory("--history-size", "20", "--history-ttl", "1", workers=2)

    async def scenario():
        async with connect(wsd.url) as ws:
            ok = await _subscribe(ws, "lossy")
        since = {"off": ok["off"], "epoch": ok["epoch"]}
        count = 30 if loss == "size" else 5
        for n in range(count):
            await _publish(wsd, "lossy", n)
        if loss == "ttl":
            await asyncio.sleep(1.5)
        if loss == "epoch":
            since["epoch"] += 1
        async with connect(wsd.url) as ws:
            reply = await _subscribe(ws, "lossy", since)
            assert reply["recovered"] is False
            assert reply["off"] == ok["off"] + count and reply["epoch"] == ok["epoch"]
            await _publish(wsd, "lossy", "next")
            assert json.loads(await ws.recv())["off"] == ok["off"] + count + 1  # live from the new offset

    asyncio.run(scenario())


def test_a_full_restart_changes_the_epoch(wsd_factory):
    first = wsd_factory(workers=1)

    async def subscribe_once(wsd):
        async with connect(wsd.url) as ws:
            return await _subscribe(ws, "e")

    before = asyncio.run(subscribe_once(first))
    first.publish("e", 1)
    first.kill()
    second = wsd_factory(workers=1)

    async def resume():
        async with connect(second.url) as ws:
            return await _subscribe(ws, "e", {"off": 1, "epoch": before["epoch"]})

    reply = asyncio.run(resume())
    assert reply["recovered"] is False and reply["epoch"] != before["epoch"] and reply["off"] == 0


def test_during_the_lame_duck_period_new_handshakes_succeed_and_are_moved_with_1012(wsd_factory):
    wsd = wsd_factory("--lame-duck", "1", workers=1)

    async def scenario():
        early = await connect(wsd.url)
        started = time.monotonic()
        await asyncio.to_thread(wsd.ctl, "drain", "--window", "4")
        assert (await asyncio.to_thread(wsd.http_get, "/healthz"))[0] == 503  # at once
        late = await connect(wsd.url)  # still accepted: the front has not removed us yet
        while time.monotonic() - started < 1.8:
            await asyncio.sleep(0.1)
        with pytest.raises(Exception) as refused:  # after the lame-duck period: 503
            await connect(wsd.url)
        assert "503" in str(refused.value)
        codes = []
        for ws in (early, late):
            try:
                await asyncio.wait_for(ws.recv(), 10)
            except ConnectionClosed as exc:
                codes.append(exc.rcvd.code if exc.rcvd else None)
        return codes

    assert asyncio.run(scenario()) == [1012, 1012]
    assert wsd.wait(20) == 0
