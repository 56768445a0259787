"""Unit tests of wsd.server.auth.apikey (the publish API's bearer key) and exposure (loopback checks)."""

from __future__ import annotations

import json

import pytest

from tests.auth_material import write
from wsd.server.auth.apikey import UNAUTHORIZED_BODY, ApiKeySettingsError, bearer_matches, load_api_key
from wsd.server.auth.exposure import api_protection_error, is_loopback, open_access_warning

KEY = "api-key-0123456789abcdef"


def test_no_key_means_an_open_api():
    assert load_api_key() is None


def test_key_from_flag_and_from_file(tmp_path):
    assert load_api_key(KEY) == KEY.encode()
    assert load_api_key(key_file=write(tmp_path / "k", KEY + "\n")) == KEY.encode()


def test_key_problems(tmp_path):
    with pytest.raises(ApiKeySettingsError, match="not both"):
        load_api_key(KEY, str(tmp_path / "k"))
    with pytest.raises(ApiKeySettingsError, match="does not exist"):
        load_api_key(key_file=str(tmp_path / "missing"))
    with pytest.raises(ApiKeySettingsError, match="the key is 5 bytes; use at least 16"):
        load_api_key("short")
    with pytest.raises(ApiKeySettingsError, match="spaces or control characters"):
        load_api_key("a key with spaces in it")


def test_bearer_header_is_checked():
    key = KEY.encode()
    assert bearer_matches(f"Bearer {KEY}".encode(), key)
    assert bearer_matches(f"bearer {KEY}", key)
    assert bearer_matches(f"  Bearer   {KEY}  ".encode(), key)
    for header in (
        None,
        b"",
        KEY.encode(),
        f"Basic {KEY}".encode(),
        f"Bearer {KEY}x".encode(),
        b"Bearer ",
        f"Bearer {KEY[:-1]}".encode(),
        "Bearer é",
    ):
        assert not bearer_matches(header, key), header
    assert json.loads(UNAUTHORIZED_BODY)["error"].startswith("unauthorized")


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost", "LOCALHOST", "::ffff:127.0.0.1"]
)
def test_loopback_hosts(host):
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.1", "192.168.1.2", "example.com", "localhost.example", ""])
def test_other_hosts_are_not_loopback(host):
    assert not is_loopback(host)


def test_open_access_warning_only_off_loopback_without_auth():
    assert open_access_warning("127.0.0.1", auth_enabled=False) is None
    assert open_access_warning("0.0.0.0", auth_enabled=True) is None
    warning = open_access_warning("0.0.0.0", auth_enabled=False)
    assert "anyone may subscribe to and publish on any channel" in warning


def test_protected_mode_refuses_an_open_api_off_loopback():
    assert api_protection_error("127.0.0.1", api_key_set=False) is None
    assert api_protection_error("0.0.0.0", api_key_set=True) is None
    message = api_protection_error("0.0.0.0", api_key_set=False)
    assert message.startswith("refusing to start: --api-host 0.0.0.0") and "--api-key-file" in message
