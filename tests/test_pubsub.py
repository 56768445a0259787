"""Publish/subscribe across workers: every message reaches every subscriber once, in offset order."""

from __future__ import annotations

import asyncio
import json
import random
from collections import defaultdict

import pytest
from websockets.asyncio.client import connect

CLIENTS = 400
ROOMS = 20
MESSAGES_PER_ROOM = 15
GLOBAL_MESSAGES = 30


async def request(ws, pending: dict, payload: dict) -> dict:
    future = asyncio.get_running_loop().create_future()
    pending[payload["id"]] = future
    await ws.send(json.dumps(payload))
    return await asyncio.wait_for(future, 10)


class Client:
    def __init__(self, ws, worker: str):
        self.ws = ws
        self.worker = worker
        self.pending: dict[int, asyncio.Future] = {}
        self.received: dict[str, list[tuple[int, object]]] = defaultdict(list)
        self.start_offset: dict[str, int] = {}
        self.next_id = 0
        self.reader = asyncio.create_task(self.read())

    async def read(self) -> None:
        async for raw in self.ws:
            message = json.loads(raw)
            if message["op"] == "msg":
                self.received[message["ch"]].append((message["off"], message["data"]))
            else:
                self.pending.pop(message["id"]).set_result(message)

    async def call(self, **payload) -> dict:
        self.next_id += 1
        return await request(self.ws, self.pending, {"id": self.next_id, **payload})


async def run_fanout(wsd) -> None:
    clients: list[Client] = []
    for i in range(CLIENTS):
        ws = await connect(wsd.url, max_size=None)
        client = Client(ws, ws.response.headers["X-Wsd-Worker"])
        for channel in (f"room.{i % ROOMS}", "global"):
            reply = await client.call(op="sub", ch=channel)
            assert reply["op"] == "ok", reply
            client.start_offset[channel] = reply["off"]
        clients.append(client)
    workers = {c.worker for c in clients}
    assert len(workers) >= 3, f"connections landed on workers {workers} only"

    # Publish from clients on every worker and through the API, concurrently.
    published: dict[str, list[object]] = defaultdict(list)
    rng = random.Random(7)

    async def publish_from_clients(channel: str, count: int) -> None:
        for n in range(count):
            data = {"ch": channel, "n": n, "pad": "x" * rng.randrange(0, 300)}
            publisher = rng.choice(clients)
            if n % 5 == 4:
                await asyncio.to_thread(wsd.publish, channel, data)
            else:
                reply = await publisher.call(op="pub", ch=channel, data=data)
                assert reply["op"] == "ok" and isinstance(reply["off"], int), reply
            published[channel].append(data)

    jobs = [publish_from_clients(f"room.{r}", MESSAGES_PER_ROOM) for r in range(ROOMS)]
    jobs.append(publish_from_clients("global", GLOBAL_MESSAGES))
    await asyncio.gather(*jobs)

    def complete() -> bool:
        return all(
            len(c.received[ch]) >= len(published[ch]) for c in clients for ch in (c.start_offset)
        )

    for _ in range(200):
        if complete():
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)  # let any duplicate arrive before judging

    by_offset: dict[str, dict[int, object]] = defaultdict(dict)
    for client in clients:
        for channel, start in client.start_offset.items():
            got = client.received[channel]
            offsets = [off for off, _ in got]
            assert offsets == list(range(start + 1, start + 1 + len(published[channel]))), (
                f"client on worker {client.worker}, {channel}: offsets {offsets[:10]}... "
                f"expected {len(published[channel])} consecutive after {start}"
            )
            assert sorted(json.dumps(d, sort_keys=True) for _, d in got) == sorted(
                json.dumps(d, sort_keys=True) for d in published[channel]
            )
            for off, data in got:
                # Every subscriber sees the same message at the same offset.
                assert by_offset[channel].setdefault(off, data) == data
    # Per publisher stream, order is preserved: n increases with the offset.
    for channel, seen in by_offset.items():
        ns = [seen[off]["n"] for off in sorted(seen)]
        assert ns == sorted(ns), f"{channel}: publish order lost: {ns}"
    for client in clients:
        await client.ws.close()


def test_every_message_reaches_every_subscriber_on_every_worker_once_in_order(wsd):
    asyncio.run(run_fanout(wsd))


async def _sub_pub_roundtrip(wsd, channel: str) -> None:
    async with connect(wsd.url) as sub, connect(wsd.url) as pub:
        await sub.send(json.dumps({"op": "sub", "ch": channel, "id": 1}))
        ok = json.loads(await sub.recv())
        assert ok == {"op": "ok", "id": 1, "off": 0, "epoch": ok["epoch"], "worker": ok["worker"]}
        assert ok["worker"] == int(sub.response.headers["X-Wsd-Worker"])
        assert isinstance(ok["epoch"], int) and ok["epoch"] > 0
        await pub.send(json.dumps({"op": "pub", "ch": channel, "data": {"hello": [1, 2]}, "id": 7}))
        assert json.loads(await pub.recv()) == {"op": "ok", "id": 7, "off": 1}
        assert json.loads(await sub.recv()) == {"op": "msg", "ch": channel, "off": 1, "data": {"hello": [1, 2]}}
        await sub.send(json.dumps({"op": "unsub", "ch": channel, "id": 2}))
        assert json.loads(await sub.recv()) == {"op": "ok", "id": 2}
        await pub.send(json.dumps({"op": "pub", "ch": channel, "data": "after", "id": 8}))
        assert json.loads(await pub.recv()) == {"op": "ok", "id": 8, "off": 2}
        # Resubscribing reports the current offset, and later messages arrive.
        await sub.send(json.dumps({"op": "sub", "ch": channel, "id": 3}))
        assert json.loads(await sub.recv())["off"] == 2
        assert wsd.publish(channel, None) == 3
        assert json.loads(await sub.recv()) == {"op": "msg", "ch": channel, "off": 3, "data": None}


@pytest.mark.parametrize("channel", ["a", "user:42@example.com", "Z" * 128, "room-1_x.y"])
def test_protocol_round_trip_sub_pub_unsub(wsd_factory, channel):
    wsd = wsd_factory(workers=2)
    asyncio.run(_sub_pub_roundtrip(wsd, channel))
