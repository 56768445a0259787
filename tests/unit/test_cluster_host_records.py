"""Cluster mode inside one host, without sockets: the bus records the workers exchange (codec), what
a channel's owner writes to its ring after reading Redis (`plan_catch_up`), and the host's status
merged from its processes' reports."""

from __future__ import annotations

import pytest

from wsd.server.cluster.host import merge, read_statuses, status_path, write_status
from wsd.server.cluster.model import HistoryResult, Publication
from wsd.server.cluster.owner import plan_catch_up
from wsd.server.cluster.records import (
    RESYNC,
    SUBSCRIBE,
    UNSUBSCRIBE,
    decode_gap,
    decode_interest,
    decode_interest_reply,
    decode_owner,
    encode_gap,
    encode_interest,
    encode_interest_reply,
    encode_owner,
    peek_interest_role,
    peek_reply_origin,
)

# -- records ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [SUBSCRIBE, RESYNC, UNSUBSCRIBE])
def test_interest_records_round_trip_and_name_their_role(kind):
    payload = encode_interest(kind, 3, 17, 2**63 + 5, b"room:1")
    assert peek_interest_role(payload) == 3
    request = decode_interest(payload)
    assert (request.kind, request.role, request.origin, request.token, request.channel) == (
        kind, 3, 17, 2**63 + 5, b"room:1")  # fmt: skip


def test_replies_gaps_and_owner_records_round_trip():
    reply = encode_interest_reply(9, 42, "cluster unavailable: redis://h:1/0: refused")
    assert peek_reply_origin(reply) == 9
    assert decode_interest_reply(reply).error.startswith("cluster unavailable")
    assert decode_interest_reply(encode_interest_reply(9, 42)).error == ""
    gap = decode_gap(encode_gap(b"news", 2**31 - 1, 12345))
    assert (gap.channel, gap.epoch, gap.offset) == (b"news", 2**31 - 1, 12345)
    owner = decode_owner(encode_owner(5, 77))
    assert (owner.role, owner.incarnation) == (5, 77)


@pytest.mark.parametrize(
    "decode, payload",
    [
        (decode_interest, b""),
        (decode_interest, encode_interest(SUBSCRIBE, 0, 0, 1, b"abc")[:-1]),
        (decode_interest, encode_interest(SUBSCRIBE, 0, 0, 1, b"abc") + b"x"),
        (decode_interest_reply, encode_interest_reply(1, 2, "error")[:-2]),
        (decode_gap, encode_gap(b"ch", 1, 2)[:5]),
        (decode_gap, encode_gap(b"ch", 1, 2)[:-2]),
        (decode_owner, encode_owner(1, 2) + b"\0"),
    ],
)
def test_torn_or_foreign_records_are_refused(decode, payload):
    with pytest.raises(ValueError):
        decode(payload)


def test_a_record_never_carries_an_empty_or_oversized_channel():
    for name in (b"", b"x" * 256):
        with pytest.raises(ValueError):
            encode_interest(SUBSCRIBE, 0, 0, 1, name)
        with pytest.raises(ValueError):
            encode_gap(name, 1, 1)


# -- plan_catch_up ------------------------------------------------------------------------------


def publications(epoch: int, offsets: range) -> list[Publication]:
    # Odd offsets were published by a client (user "u7"), even ones by the API (no user).
    return [Publication("c", epoch, o, b"%d" % o, 1000 + o, f"u{o}" if o % 2 else None) for o in offsets]


def live(epoch: int, *offsets: int) -> list[tuple[int, int, bytes, int, bytes]]:
    return [(epoch, o, b"%d" % o, 1000 + o, b"u%d" % o if o % 2 else b"") for o in offsets]


def test_a_channel_new_to_the_ring_starts_at_redis_position_without_a_gap():
    plan = plan_catch_up(None, HistoryResult(7, 40, []), live(7, 40, 41, 42))
    assert plan.jump == (7, 40) and plan.gap is None
    assert [a[1] for a in plan.appends] == [41, 42] and not plan.again


def test_missed_messages_are_appended_then_the_live_ones_that_follow():
    plan = plan_catch_up((7, 10), HistoryResult(7, 13, publications(7, range(11, 14))), live(7, 12, 13, 14, 15))
    assert plan.gap is None and plan.jump is None
    assert [a[1] for a in plan.appends] == [11, 12, 13, 14, 15]
    assert plan.appends[0][2] == b"11" and not plan.again
    # The publisher's user id travels with the message, from the stream and from pub/sub alike.
    assert [a[4] for a in plan.appends] == [b"u11", b"", b"u13", b"", b"u15"]


def test_a_lost_stretch_is_a_gap_at_redis_position_then_the_new_epoch_continues():
    plan = plan_catch_up((7, 10), HistoryResult(9, 3, None), live(9, 2, 3, 4))
    assert plan.gap == (9, 3) and plan.jump is None
    assert [a[1] for a in plan.appends] == [4] and not plan.again


def test_a_trimmed_stream_in_the_same_epoch_is_a_gap_too():
    plan = plan_catch_up((7, 10), HistoryResult(7, 500, None), [])
    assert plan.gap == (7, 500) and plan.appends == []


def test_nothing_new_appends_nothing():
    plan = plan_catch_up((7, 10), HistoryResult(7, 10, []), live(7, 9, 10))
    assert plan.gap is None and plan.jump is None and plan.appends == [] and not plan.again


def test_a_live_message_past_a_hole_is_left_for_another_read():
    plan = plan_catch_up((7, 10), HistoryResult(7, 11, publications(7, range(11, 12))), live(7, 13, 14))
    assert [a[1] for a in plan.appends] == [11] and plan.again


def test_a_live_message_of_another_epoch_is_left_for_another_read():
    plan = plan_catch_up((7, 10), HistoryResult(7, 10, []), live(8, 1))
    assert plan.appends == [] and plan.again


# -- the host's status --------------------------------------------------------------------------


def shard(url: str, state: str = "up", channels: int = 0, rtt: float | None = 0.2, catch_ups: int = 0) -> dict:
    return {"url": url, "state": state, "error": "" if state == "up" else "refused", "channels": channels,
            "publish_rtt_ms": rtt, "catch_ups": catch_ups, "round_trips": 1}  # fmt: skip


def test_the_host_status_sums_subscriptions_and_is_down_when_any_process_sees_a_shard_down(tmp_path):
    a, b = "redis://10.0.0.1:6379/0", "redis://10.0.0.2:6379/0"
    processes = [
        {"pid": 11, "mode": "instances", "shards": [shard(a, channels=3, rtt=0.1), shard(b, channels=1)],
         "owner": {"catch_ups": 2, "gaps": 1, "appended": 10}},
        {"pid": 12, "mode": "instances", "shards": [shard(a, channels=2, rtt=0.3), shard(b, "down", rtt=None)],
         "owner": {"catch_ups": 1, "gaps": 0, "appended": 5}},
    ]  # fmt: skip
    for slot, status in enumerate(processes):
        write_status(status_path(str(tmp_path), slot), status)
    read = read_statuses(str(tmp_path), [0, 1, 2], {0: 11, 1: 12, 2: 13})
    assert [s["pid"] for s in read] == [11, 12]
    assert read_statuses(str(tmp_path), [0, 1], {0: 11, 1: 99}) == [processes[0]]  # a stale file is not read
    document = merge("web1-0a0b", read)
    assert document["node_id"] == "web1-0a0b" and document["state"] == "down"
    assert document["channels"] == 6 and document["catch_ups"] == 3 and document["gaps"] == 1
    first, second = document["shards"]
    assert (first["url"], first["state"], first["channels"], first["publish_rtt_ms"]) == (a, "up", 5, 0.2)
    assert (second["state"], second["error"], second["publish_rtt_ms"]) == ("down", "refused", 0.2)
    assert merge("n", [])["state"] == "down"


def test_the_host_status_counts_the_processes_listening_for_the_other_hosts():
    listening = {"subscribed": True, "member": "web1 0 t0", "error": "", "requests_answered": 3}
    deaf = {"subscribed": False, "member": "web1 1 t1", "error": "Connection refused", "requests_answered": 1}
    document = merge("web1", [{"mode": "instances", "server_api": listening}, {"mode": "instances", "server_api": deaf},
                              {"mode": "instances"}])  # fmt: skip
    assert document["server_api"] == {"listening": 1, "processes": 2, "requests_answered": 4,
                                      "error": "Connection refused"}  # fmt: skip
