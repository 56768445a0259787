"""The sans-I/O parts of issue 12's wiring: the stats declaration as the worker and the supervisor
use it (counting, status fields, retiring an exited process under the sequence lock), the server
view readiness and /metrics read, the node's server-API operations over its sessions, the server
API's checks and combining, the intercom sockets, close codes."""

from __future__ import annotations

import asyncio
import os
import stat
import types

import pytest

from wsd.server.bus.segment import Segment, SegmentLayout
from wsd.server.logs import level_name, level_number
from wsd.server.node.broker import StreamPosition
from wsd.server.node.node import DISCONNECTED_BY_SERVER, Node
from wsd.server.readiness import RoleWatch, check
from wsd.server.server_view import ServerObserver, ServerView, read_view
from wsd.server.stats import (
    DELIVERIES,
    FIELD_INDEX,
    STATUS_NAMES,
    TOTALS,
    StatsBlock,
    WorkerCounters,
    status_values,
)
from wsd.server.worker.intercom import IntercomError, IntercomServer, ask, ask_all, ask_blocking
from wsd.server.worker.server_api import ApiInputError, ServerApi
from wsd.server.worker.session import close_code

S = 10**9

# -- the stats declaration --------------------------------------------------------------------------


def test_ctl_status_keeps_every_field_scripts_use_and_adds_new_ones():
    # The fields of `ctl --json status` before issue 12 (wsd.server.counters): extend, never rename.
    before = {"connections", "max_connections", "accepting", "channels", "msgs_in", "msgs_out", "overruns",
              "lost_bytes", "gaps", "slow_disconnects", "bus_lag", "draining", "drain_remaining",
              "handshakes_refused", "bad_entries"}  # fmt: skip
    assert before <= set(STATUS_NAMES)
    assert {"connections", "channels", "msgs_in", "msgs_out", "overruns", "slow_disconnects"} <= set(TOTALS)
    counters = WorkerCounters()
    counters.counts[FIELD_INDEX["requests"]] = 5
    counters.published("api")
    counters.published("client")
    counters.handshake("accepted")
    counters.handshake("draining")
    counters.handshake("unauthorized")
    counters.counts[DELIVERIES] += 7
    counters.set("accepting", 1)
    values = status_values(dict(zip(FIELD_INDEX, counters.counts, strict=True)))
    assert values["msgs_in"] == 6  # client requests and API publishes
    assert values["msgs_out"] == 7
    assert values["handshakes_refused"] == 2 and values["handshakes_accepted"] == 1
    assert values["accepting"] is True and values["draining"] is False


def test_counts_reach_the_block_and_the_latency_buckets():
    counters = WorkerCounters()
    counters.disconnect(1006)
    counters.disconnect(3001)
    counters.disconnect(None)
    counters.resume(True)
    counters.resume(False)
    counters.observe_latency(300_000, 10)
    counters.observe_latency(-5, 1)  # another process's clock a little ahead
    block = StatsBlock(bytearray(8 * len(counters.counts)))
    block.write(counters.counts)
    snapshot = block.snapshot()
    assert snapshot["disconnects.1006"] == snapshot["disconnects.other"] == snapshot["disconnects.1005"] == 1
    assert snapshot["resumes.true"] == snapshot["resumes.false"] == 1
    assert snapshot["publish_delivery.le.0.0005"] == 11
    assert snapshot["publish_delivery.sum_ns"] == 3_000_000


def segments(tmp_path, count: int = 4, workers: int = 2) -> list[Segment]:
    layout = SegmentLayout(1 << 16, 1024)
    return [Segment.create(i, workers, 99, layout, b"s" * 32) for i in range(count)]


def write_block(segment: Segment, **values: int) -> None:
    counters = WorkerCounters()
    for key, value in values.items():
        counters.set(key, value)
    segment.stats.write(counters.counts)


def retire(segs: list[Segment], bus_slot: int, slot: int) -> None:
    """What the supervisor does when it reaps a process (Supervisor._retire)."""
    lock = segs[0].supervisor
    lock.put("generation", lock.get("generation") + 1)
    segs[slot].supervisor.retire(segs[bus_slot].read_stats())
    segs[bus_slot].stats.reset()
    lock.put("generation", lock.get("generation") + 1)


def test_a_slot_counts_its_exited_processes_and_never_twice(tmp_path):
    segs = segments(tmp_path)
    write_block(segs[1], pid=11, slot=1, heartbeat_ns=5, deliveries=100, connections=40, role=2)
    write_block(segs[3], pid=12, slot=1, heartbeat_ns=6, deliveries=5, connections=3)  # its reload successor
    view = read_view(segs, 2)
    assert [bus for bus, _ in view.processes] == [1, 3]
    totals = view.slot_totals(1)
    assert totals["deliveries"] == 105 and totals["connections"] == 43
    assert view.role_holders() == {0: None, 1: 1}
    retire(segs, 1, 1)  # the old process exited
    view = read_view(segs, 2)
    assert [bus for bus, _ in view.processes] == [3]
    assert view.slot_totals(1)["deliveries"] == 105  # the old one's still count
    assert view.slot_totals(1)["connections"] == 3  # a gauge: the live ones only
    assert view.role_holders() == {0: None, 1: None}
    assert view.slot_totals(0)["deliveries"] == 0
    for segment in segs:
        segment.close()


def test_readiness_judges_a_slot_by_its_process_that_is_not_draining(tmp_path):
    segs = segments(tmp_path)
    write_block(segs[0], pid=10, slot=0, heartbeat_ns=1, role=1)
    write_block(segs[1], pid=11, slot=1, heartbeat_ns=5, draining=1, role=2)  # hands over to bus slot 3
    write_block(segs[3], pid=12, slot=1, heartbeat_ns=4)
    view = read_view(segs, 2)
    assert view.serving_stats(1)["pid"] == 12
    write_block(segs[3], pid=12, slot=1, heartbeat_ns=4, draining=1)
    assert read_view(segs, 2).serving_stats(1)["pid"] == 11  # all drain: the freshest
    assert read_view(segs, 2).serving_stats(1)["draining"] == 1
    for segment in segs:
        segment.close()


def test_a_reader_does_not_hang_on_a_supervisor_stopped_inside_its_lock(tmp_path):
    segs = segments(tmp_path)
    segs[0].supervisor.put("generation", 1)  # odd for good
    write_block(segs[2], pid=9, slot=0, heartbeat_ns=1)
    assert [bus for bus, _ in read_view(segs, 2).processes] == [2]
    for segment in segs:
        segment.close()


def test_a_role_handed_over_fails_readiness_only_when_it_stays_unheld():
    watch = RoleWatch(grace_s=1.0)
    workers = {0: {"heartbeat_ns": 10 * S}}
    assert check(workers, {0: None}, 10 * S, monotonic_ns=10 * S, role_watch=watch).ready
    assert check(workers, {0: None}, 10 * S, monotonic_ns=int(10.9 * S), role_watch=watch).ready
    failing = check(workers, {0: None}, 10 * S, monotonic_ns=11 * S, role_watch=watch).failing
    assert failing == ["role 0: no worker sequences it"]
    assert check(workers, {0: 3}, 10 * S, monotonic_ns=12 * S, role_watch=watch).ready
    assert check(workers, {0: None}, 10 * S, monotonic_ns=12 * S, role_watch=watch).ready  # a new grace
    draining = check({0: {"heartbeat_ns": 10 * S, "draining": 1}}, {}, 10 * S)
    assert draining.failing == ["worker 0: draining"]


def test_log_levels_pass_between_processes_as_numbers():
    assert [level_name(level_number(name)) for name in ("debug", "info", "warning", "error")] == [
        "debug", "info", "warning", "error"]  # fmt: skip
    assert level_name(0) is None and level_name(5) is None
    with pytest.raises(ValueError, match="log level must be one of"):
        level_number("loud")


# -- close codes ---------------------------------------------------------------------------------------


def close_info(code: int):
    return types.SimpleNamespace(code=code, reason="")


@pytest.mark.parametrize(
    "handshake, code",
    [
        (None, 1006),
        (types.SimpleNamespace(recv=None, sent=None, recv_then_sent=False), 1006),
        (types.SimpleNamespace(recv=close_info(1000), sent=close_info(1000), recv_then_sent=True), 1000),
        (types.SimpleNamespace(recv=close_info(3001), sent=close_info(1000), recv_then_sent=True), 3001),
        (types.SimpleNamespace(recv=close_info(1000), sent=close_info(4000), recv_then_sent=False), 4000),
        (types.SimpleNamespace(recv=None, sent=close_info(1013), recv_then_sent=False), 1013),
        (types.SimpleNamespace(recv=close_info(1005), sent=close_info(1000), recv_then_sent=True), None),
    ],
    ids=["no-handshake", "no-close-frame", "client-1000", "client-private", "server-4000", "server-1013-no-reply",
         "client-no-code"],
)
def test_the_close_code_counted_is_the_one_of_the_side_that_closed_first(handshake, code):
    assert close_code(types.SimpleNamespace(close_handshake=handshake)) == code


# -- the node's server-API operations ------------------------------------------------------------------


class FakeTransport:
    def __init__(self):
        self.closing = False
        self.written: list[bytes] = []

    def is_closing(self):
        return self.closing

    def write(self, data):
        self.written.append(data)

    def get_write_buffer_size(self):
        return 0


class FakeSession:
    def __init__(self, user=None):
        self.user = user
        self.raw = FakeTransport()
        self.channels: set[str] | None = None
        self.sent: list[bytes] = []
        self.closed_with: tuple[int, str] | None = None

    def send_text(self, payload):
        self.sent.append(payload)

    def close(self, code, reason=""):
        self.closed_with = (code, reason)
        self.raw.closing = True

    def log_fields(self):
        return {"connection": id(self), "peer": None}

    def forget_channel(self, channel):
        if self.channels is None or channel not in self.channels:
            return False
        self.channels.discard(channel)
        return True

    def take_channels(self):
        channels, self.channels = self.channels or set(), None
        return channels


class FakeBroker:
    def __init__(self):
        self.unsubscribed: list[str] = []

    def subscribe(self, channel):
        return StreamPosition(0, 1)

    def unsubscribe(self, channel):
        self.unsubscribed.append(channel)

    def latest(self, channel):
        return StreamPosition(42, 7)


def node_with(sessions_channels: list[tuple[FakeSession, list[str]]]) -> Node:
    node = Node(WorkerCounters(), 0, 100, 1 << 20, 5.0, lambda s: None, lambda s: None)
    node.broker = FakeBroker()
    for session, channels in sessions_channels:
        node.session_opened(session)
        if session.user is not None:
            node.set_user(session, session.user)  # as the session does once auth identified it
        session.channels = set(channels)
        for name in channels:
            node.hub.add(name.encode(), session.raw, session)  # the hub keys channels by name
            node.subscriptions += 1
    return node


def test_disconnect_closes_every_connection_of_the_user_with_4000():
    alice1, alice2, bob, anonymous = FakeSession("alice"), FakeSession("alice"), FakeSession("bob"), FakeSession()
    node = node_with([(alice1, ["a"]), (alice2, []), (bob, ["a"]), (anonymous, [])])
    assert node.disconnect_user("alice") == 2
    assert alice1.closed_with == alice2.closed_with == (DISCONNECTED_BY_SERVER, "disconnected by the server")
    assert bob.closed_with is None and anonymous.closed_with is None
    assert node.disconnect_user("alice") == 0  # closing already: not counted twice
    assert node.disconnect_user("nobody") == 0
    node.session_closed(alice1)
    node.session_closed(alice2)
    assert node.users.sessions_of("alice") == []


def test_a_user_identified_after_the_handshake_is_indexed():
    session = FakeSession()
    node = node_with([(session, [])])
    node.set_user(session, "carol")
    assert node.disconnect_user("carol") == 1


def test_unsubscribe_ends_the_users_subscriptions_and_tells_each_connection():
    alice, bob = FakeSession("alice"), FakeSession("bob")
    node = node_with([(alice, ["news", "sports"]), (bob, ["news"])])
    assert node.channel_subscribers() == {"news": 2, "sports": 1}
    assert node.unsubscribe_user("alice", "news") == 1
    assert node.subscriptions == 2
    assert alice.sent == [b'{"op":"unsub","ch":"news"}']
    assert alice.channels == {"sports"}
    assert node.channel_subscribers() == {"news": 1, "sports": 1}
    assert node.channel_subscribers("news") == {"news": 1}
    assert node.broker.unsubscribed == []  # bob still holds the channel
    assert node.unsubscribe_user("bob", "news") == 1
    assert node.broker.unsubscribed == ["news"]
    assert node.channel_subscribers("news") == {}
    assert node.unsubscribe_user("alice", "news") == 0


# -- the server API: checks and combining ------------------------------------------------------------


class SoloObserver:
    """A server of one worker process (bus slot 0): nobody else to ask."""

    def view(self):
        return ServerView(1, [(0, {"slot": 0, "pid": 1})], [{}])


def server_api(node, users_known=True) -> ServerApi:
    return ServerApi(node, SoloObserver(), "/nonexistent", 0, lambda: users_known)


def test_requests_are_checked_before_anything_is_done():
    api = server_api(node_with([]), users_known=False)
    with pytest.raises(ApiInputError, match="must be a non-empty string"):
        api.check("disconnect", {"user": ""})
    with pytest.raises(ApiInputError, match="channel name must be"):
        api.check("unsubscribe", {"user": "u", "channel": "a b"})
    with pytest.raises(ApiInputError, match="auth is off"):
        api.check("disconnect", {"user": "u"})
    with pytest.raises(ApiInputError, match="unknown operation"):
        api.check("explode", {})
    assert api.check("channel", {"channel": "news", "user": "ignored"}) == {"op": "channel", "channel": "news"}


def test_answers_are_combined_into_the_whole_servers():
    alice = FakeSession("alice")
    api = server_api(node_with([(alice, ["b", "a"]), (FakeSession("bob"), ["a"])]))
    combined = asyncio.run(api._combine({"op": "channels"}, [api.local({"op": "channels"}),
                                                             {"channels": {"a": 3, "z": 1}}]))  # fmt: skip
    assert combined == {"channels": [{"channel": "a", "subscribers": 5}, {"channel": "b", "subscribers": 1},
                                     {"channel": "z", "subscribers": 1}]}  # fmt: skip
    answer = asyncio.run(api.channel("a"))
    assert (answer.status, answer.body) == (200, b'{"channel":"a","subscribers":2,"offset":42,"epoch":7}')
    answer = asyncio.run(api.disconnect(b'{"user": "alice"}'))
    assert (answer.status, answer.body) == (200, b'{"disconnected":1}')
    answer = asyncio.run(api.unsubscribe(b'{"user": "alice", "channel": "c"}'))
    assert (answer.status, answer.body) == (200, b'{"unsubscribed":0}')
    answer = asyncio.run(api.disconnect(b'{"user": "alice", "x": 1}'))
    assert answer.status == 400 and b"unknown field" in answer.body


# -- the intercom sockets --------------------------------------------------------------------------


def test_workers_ask_each_other_over_private_sockets(tmp_path):
    async def scenario():
        async def slow(request):
            await asyncio.sleep(5)
            return {}

        def failing(request):
            raise RuntimeError("boom")

        servers = [IntercomServer(str(tmp_path), 0, lambda request: {"echo": request["op"], "from": 0}),
                   IntercomServer(str(tmp_path), 1, slow), IntercomServer(str(tmp_path), 2, failing)]  # fmt: skip
        for server in servers:
            await server.start()
        assert stat.S_IMODE(os.stat(servers[0].path).st_mode) == 0o600
        assert await ask(str(tmp_path), 0, {"op": "ping"}) == {"echo": "ping", "from": 0}
        answers = await ask_all(str(tmp_path), [0, 1, 2, 3], {"op": "ping"}, timeout=0.5)
        assert answers[0] == {"echo": "ping", "from": 0}
        assert isinstance(answers[1], IntercomError) and "no answer within 0.5 s" in str(answers[1])
        assert isinstance(answers[2], IntercomError) and "ping failed: RuntimeError('boom')" in str(answers[2])
        assert isinstance(answers[3], IntercomError) and "cannot reach it" in str(answers[3])
        with pytest.raises(IntercomError, match='a request is a JSON object with "op"'):
            await ask(str(tmp_path), 0, {"no": "op"})
        blocking = await asyncio.to_thread(ask_blocking, str(tmp_path), 0, {"op": "x"}, 2.0)
        assert blocking == {"echo": "x", "from": 0}
        for server in servers:
            server.close()
        assert not os.listdir(tmp_path)

    asyncio.run(scenario())


def test_the_observer_reads_the_server_from_shared_memory(tmp_path):
    segs = segments(tmp_path)
    write_block(segs[0], pid=10, slot=0, heartbeat_ns=1, role=1, deliveries=3)
    observer = ServerObserver(segs, 2, "1.0")
    readiness = observer.readiness()
    assert not readiness.ready
    assert readiness.failing[0].startswith("worker 0: no heartbeat for ")  # written at monotonic 1 ns
    assert readiness.failing[1:] == ["worker 1: no heartbeat yet"]  # roles: still within their grace
    snapshot = observer.metrics_snapshot()
    assert snapshot.workers[0]["deliveries"] == 3 and snapshot.workers[1]["deliveries"] == 0
    assert snapshot.ready is False and snapshot.version == "1.0"
    for segment in segs:
        segment.close()
