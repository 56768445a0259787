"""Unit tests of channel name validation (wsd.server.channel_names), shared by the API and the protocol."""

import pytest

from wsd.server.channel_names import channel_name_error


@pytest.mark.parametrize("name", ["a", "news", "user@example.com", "room:42.x-y_Z", "x" * 128])
def test_valid_channel_names_have_no_error(name: str) -> None:
    assert channel_name_error(name) is None


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("", "empty string"),
        ("a b", "' ' at position 1"),
        ("caf\u00e9", "'\u00e9' at position 3"),
        ("a\n", "'\\n' at position 1"),
        ("x" * 129, "129 characters long"),
        (None, "NoneType"),
        (b"bytes", "bytes"),
    ],
)
def test_invalid_channel_names_are_explained(name: object, fragment: str) -> None:
    error = channel_name_error(name)
    assert error is not None
    assert error.startswith("channel name must be 1-128 characters of A-Z a-z 0-9 _ : . - @, got ")
    assert fragment in error


def test_channel_name_error_truncates_long_names() -> None:
    error = channel_name_error("y" * 10_000 + " ")
    assert error is not None
    assert len(error) < 300
    assert "position 10000" in error
