"""Unit tests of wsd.server.auth.permissions: channel patterns and the subscribe/publish decisions."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wsd.server.auth.permissions import (
    NO_CHANNELS,
    AccessPolicy,
    ChannelPatterns,
    PatternError,
    compile_patterns,
    parse_pattern_list,
    pattern_error,
)
from wsd.server.auth.tokens import Identity


def test_exact_names_match_only_themselves():
    patterns = compile_patterns(["news", "user:42"])
    assert patterns.matches("news") and patterns.matches("user:42")
    assert not patterns.matches("news2") and not patterns.matches("user:4") and not patterns.matches("user:420")


def test_prefix_patterns_match_names_that_start_with_the_prefix():
    patterns = compile_patterns(["room:*"])
    assert patterns.matches("room:1") and patterns.matches("room:") and patterns.matches("room:a:b")
    assert not patterns.matches("room") and not patterns.matches("rooms:1") and not patterns.matches("xroom:1")


def test_star_alone_matches_every_channel():
    patterns = compile_patterns(["*"])
    assert patterns.matches("anything") and patterns.matches("a")


def test_empty_set_matches_nothing():
    assert not NO_CHANNELS.matches("news")
    assert compile_patterns([]) is NO_CHANNELS
    assert not compile_patterns([])


def test_covered_prefixes_are_dropped():
    patterns = compile_patterns(["room:*", "room:vip:*", "r*", "zoo:*", "zoo:a:*"])
    assert patterns._prefixes == ("r", "zoo:")
    assert patterns.matches("room:vip:1") and patterns.matches("rx") and patterns.matches("zoo:a:1")


def test_compiled_sets_are_shared():
    assert compile_patterns(["a", "b:*"]) is compile_patterns(("a", "b:*"))
    assert compile_patterns(["a"]) == ChannelPatterns(("a",))


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("", "must not be empty"),
        ("room:*:x", r"\* may only end a pattern"),
        ("*room", r"\* may only end a pattern"),
        ("room:**", r"\* may only end a pattern"),
        ("bad channel", "a channel name"),
        ("é", "a channel name"),
        ("a" * 129, "longer than a channel name"),
        (5, "must be a string"),
    ],
)
def test_invalid_patterns_are_refused_with_a_reason(pattern, message):
    assert pattern_error(pattern) is not None
    with pytest.raises(PatternError, match=message):
        compile_patterns([pattern])


def test_longest_valid_patterns():
    assert pattern_error("a" * 128) is None
    assert pattern_error("a" * 128 + "*") is None


def test_pattern_list_from_a_flag():
    assert parse_pattern_list("news, room:* ,user:1") == ("news", "room:*", "user:1")
    assert parse_pattern_list("") == ()
    with pytest.raises(PatternError, match=r"in the list 'news,,x'"):
        parse_pattern_list("news,,x")


def identity(subs=(), pubs=()) -> Identity:
    return Identity("u", 2e9, compile_patterns(subs), compile_patterns(pubs))


def test_subscribe_needs_the_tokens_subs_or_a_public_pattern():
    policy = AccessPolicy(compile_patterns(["public:*", "news"]))
    user = identity(subs=["user:1", "room:*"])
    for channel in ("user:1", "room:9", "public:x", "news"):
        assert policy.may_subscribe(user, channel), channel
    for channel in ("user:2", "newsroom", "admin"):
        assert not policy.may_subscribe(user, channel), channel
    assert not AccessPolicy().may_subscribe(identity(), "news")


def test_publish_needs_the_tokens_pubs_public_channels_do_not_count():
    policy = AccessPolicy(compile_patterns(["public:*"]))
    user = identity(subs=["room:*"], pubs=["room:1"])
    assert policy.may_publish(user, "room:1")
    assert not policy.may_publish(user, "room:2")  # may subscribe, not publish
    assert not policy.may_publish(user, "public:x")  # public is for subscribing


names = st.text(alphabet="ab:_", min_size=1, max_size=6)


@given(
    exact=st.lists(names, max_size=5),
    prefixes=st.lists(st.text(alphabet="ab:_", max_size=4), max_size=5),
    channel=names,
)
def test_matches_agrees_with_the_definition(exact, prefixes, channel):
    patterns = compile_patterns(exact + [p + "*" for p in prefixes])
    expected = channel in exact or any(channel.startswith(p) for p in prefixes)
    assert patterns.matches(channel) == expected
