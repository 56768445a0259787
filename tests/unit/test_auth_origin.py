"""Unit tests of wsd.server.auth.origin: the --allowed-origins check of the handshake."""

from __future__ import annotations

import pytest

from wsd.server.auth.origin import OriginPolicy, OriginSettingsError, normalize_origin, parse_origin_list


def test_no_list_allows_every_origin():
    policy = OriginPolicy(None)
    for origin in (None, "https://evil.example", "null", "garbage"):
        assert policy.allows(origin)


def test_listed_origin_is_allowed_others_refused():
    policy = OriginPolicy(["https://app.example", "http://localhost:3000"])
    assert policy.allows("https://app.example")
    assert policy.allows("http://localhost:3000")
    for origin in (
        "https://evil.example",
        "http://app.example",
        "https://app.example:8443",
        "https://sub.app.example",
        "https://app.example.evil",
        "http://localhost:3001",
        "http://localhost",
    ):
        assert not policy.allows(origin), origin


def test_no_origin_header_is_allowed():
    assert OriginPolicy(["https://app.example"]).allows(None)


def test_scheme_and_host_case_and_default_ports_are_normalised():
    policy = OriginPolicy(["HTTPS://App.Example:443", "http://b.example:80/"])
    assert policy.allowed == frozenset({"https://app.example", "http://b.example"})
    for origin in ("https://app.example", "https://APP.example", "HTTPS://app.example:443", "http://b.example:80"):
        assert policy.allows(origin), origin
    assert not policy.allows("https://b.example")  # another scheme is another origin
    assert not policy.allows("http://app.example:443")  # 443 is only https's default


def test_ipv6_and_idna_hosts():
    policy = OriginPolicy(["http://[::1]:8080", "https://bücher.example"])
    assert policy.allows("http://[::1]:8080")
    assert policy.allows("https://xn--bcher-kva.example")
    assert not policy.allows("http://[::1]")


def test_null_origin_is_refused_unless_listed():
    assert not OriginPolicy(["https://app.example"]).allows("null")
    assert OriginPolicy(["https://app.example", "null"]).allows("null")


@pytest.mark.parametrize(
    "origin",
    [
        "",
        "app.example",
        "https://",
        "https://app.example/path",
        "https://app.example?x=1",
        "https://user@app.example",
        "https://app.example:99999",
        "https://app.example:port",
        "https://a.example https://app.example",
        "https://a.example,https://app.example",
        "javascript:alert(1)",
    ],
)
def test_malformed_origin_headers_are_refused(origin):
    assert not OriginPolicy(["https://app.example"]).allows(origin)
    assert normalize_origin(origin) is None


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("https://*.example", "wildcards are not supported"),
        ("*", "wildcards are not supported"),
        ("app.example", "is not an origin: an origin is scheme://host"),
        ("https://app.example/app", "no path"),
        ("https://app.example:70000", "is not an origin"),
        ("https://user:pw@app.example", "no user info"),
        ("", "empty"),
    ],
)
def test_bad_list_entries_are_configuration_errors(entry, message):
    with pytest.raises(OriginSettingsError, match=message):
        OriginPolicy([entry])


def test_empty_list_is_an_error():
    with pytest.raises(OriginSettingsError, match="the list is empty"):
        OriginPolicy([])


def test_list_from_a_flag():
    assert parse_origin_list("https://a.example, http://b.example:8080,") == (
        "https://a.example",
        "http://b.example:8080",
    )


def test_refusal_text_is_short():
    policy = OriginPolicy(["https://app.example"])
    assert policy.refusal("https://evil.example") == "origin 'https://evil.example' is not allowed"
    assert len(policy.refusal("https://" + "a" * 5000)) < 120
