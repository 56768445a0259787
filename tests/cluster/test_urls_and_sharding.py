"""`--cluster` URL parsing and the consistent hash over independent instances (no Redis needed)."""

from __future__ import annotations

import pytest
from redis.crc import key_slot

from wsd.server.cluster import ClusterConfigError, parse_cluster_urls
from wsd.server.cluster.keys import channel_of, meta_key, probe_channel, pubsub_channel, slot_of, stream_key
from wsd.server.cluster.sharding import Rendezvous
from wsd.server.cluster.topology import parse_cluster_slots


def test_single_instance_url_with_credentials_db_and_default_port():
    spec = parse_cluster_urls("redis://app:s3cr%40t@redis.example:6380/2")
    (target,) = spec.targets
    assert spec.mode == "instances"
    assert (target.host, target.port, target.username, target.password, target.db, target.tls) == (
        "redis.example", 6380, "app", "s3cr@t", 2, False)  # fmt: skip
    assert target.shown == "redis://app:***@redis.example:6380/2"
    assert parse_cluster_urls(["redis://10.0.0.1"]).targets[0].port == 6379


def test_password_never_appears_in_shown_url_key_or_repr():
    (target,) = parse_cluster_urls("rediss://:hunter2@h:1/0").targets
    assert target.tls
    for text in (target.shown, target.key, repr(target), str(parse_cluster_urls("rediss://:hunter2@h:1/0"))):
        assert "hunter2" not in text
    assert target.key == "h:1/0"


def test_tls_options_only_on_rediss_and_known():
    (target,) = parse_cluster_urls("rediss://h:1?ssl_cert_reqs=none").targets
    assert target.tls_options == (("ssl_cert_reqs", "none"),)
    with pytest.raises(ClusterConfigError, match="need a rediss://"):
        parse_cluster_urls("redis://h:1?ssl_cert_reqs=none")
    with pytest.raises(ClusterConfigError, match="unknown option 'timeout'"):
        parse_cluster_urls("rediss://h:1?timeout=3")


def test_redis_cluster_url_with_seeds_and_ipv6():
    spec = parse_cluster_urls("redis+cluster://u:pw@10.0.0.1:7000,10.0.0.2:7001,[::1]:7002")
    assert spec.mode == "cluster"
    assert [(t.host, t.port) for t in spec.targets] == [("10.0.0.1", 7000), ("10.0.0.2", 7001), ("::1", 7002)]
    assert spec.shown[2] == "redis://u:***@[::1]:7002/0"
    assert parse_cluster_urls("rediss+cluster://h:1").targets[0].tls


@pytest.mark.parametrize(
    ("urls", "message"),
    [
        ("localhost:6379", "expected redis://"),
        ("http://h:1", "unknown scheme 'http'"),
        ("redis://h:0", "port must be a number 1-65535, got '0'"),
        ("redis://h:port", "port must be a number"),
        ("redis://h:1/x", "database number"),
        ("redis://", "no host given"),
        ("redis://h:1,g:2", "several hosts in one URL need redis\\+cluster://"),
        ("redis+cluster://h:1/3", "only database 0"),
        ("redis+cluster://h:1,h:1", "listed twice"),
        (["redis://h:1", "redis://h:1/0"], "listed twice"),
        (["redis+cluster://h:1", "redis://g:1"], "must be the only --cluster URL"),
        ([], "no Redis URL given"),
    ],
)
def test_bad_urls_have_clear_errors(urls, message):
    with pytest.raises(ClusterConfigError, match=message):
        parse_cluster_urls(urls)


def test_bad_url_error_does_not_echo_the_password():
    with pytest.raises(ClusterConfigError) as caught:
        parse_cluster_urls("redis://user:topsecret@h:notaport")
    assert "topsecret" not in str(caught.value)


def test_names_share_one_hash_tag_and_round_trip():
    assert pubsub_channel("chat:1") == "wsd:{chat:1}"
    names = (pubsub_channel("chat:1"), meta_key("chat:1"), stream_key("chat:1"))
    assert {key_slot(name.encode()) for name in names} == {slot_of("chat:1")}
    assert channel_of(b"wsd:{chat:1}") == "chat:1"
    assert channel_of(probe_channel("node.1").encode()) is None


def test_probe_channel_lands_in_the_given_slots():
    name = probe_channel("node.7", [(5000, 5460)])
    tag = name[name.index("{") + 1 : name.index("}")]
    assert 5000 <= key_slot(tag.encode()) <= 5460


def test_rendezvous_is_order_independent_and_spreads_evenly():
    keys = [f"10.0.0.{i}:6379/0" for i in range(4)]
    forward, backward = Rendezvous(keys), Rendezvous(list(reversed(keys)))
    channels = [f"channel-{i}" for i in range(20_000)]
    counts = [0] * 4
    for channel in channels:
        picked = forward.keys[forward.pick(channel)]
        assert backward.keys[backward.pick(channel)] == picked
        counts[forward.keys.index(picked)] += 1
    assert all(4000 < count < 6000 for count in counts), counts


def test_adding_an_instance_moves_about_one_in_n_plus_one_channels():
    keys = [f"10.0.0.{i}:6379/0" for i in range(4)]
    before, after = Rendezvous(keys), Rendezvous([*keys, "10.0.0.9:6379/0"])
    channels = [f"channel-{i}" for i in range(20_000)]
    moved = [c for c in channels if before.keys[before.pick(c)] != after.keys[after.pick(c)]]
    # Only channels the new instance wins move, and about 1/5 of all do.
    assert all(after.keys[after.pick(c)] == "10.0.0.9:6379/0" for c in moved)
    assert 0.17 < len(moved) / len(channels) < 0.23


def test_cluster_slots_reply_parsing_and_ranges():
    reply = [
        [0, 5460, [b"127.0.0.1", 7000, b"id0"]],
        [5461, 10922, [b"", 7001, b"id1"], [b"127.0.0.1", 7004, b"id4"]],
        [10923, 16383, [b"127.0.0.1", 7002, b"id2"]],
    ]
    slot_map = parse_cluster_slots(reply, "10.9.9.9")
    assert slot_map.masters == (("127.0.0.1", 7000), ("10.9.9.9", 7001), ("127.0.0.1", 7002))
    assert slot_map.ranges(1) == [(5461, 10922)]
    assert slot_map.owner[0] == 0 and slot_map.owner[16383] == 2
