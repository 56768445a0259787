"""Validation of channel names, shared by the publish HTTP API and the WebSocket protocol.

A channel name is 1-128 characters of ``A-Z a-z 0-9 _ : . - @``. The set is ASCII-only, so characters
and bytes are the same count. Valid names are checked with one precompiled regex; the slower code that
explains *what* is wrong only runs for invalid names.
"""

import re
import reprlib

MAX_CHANNEL_NAME_LENGTH = 128
ALLOWED_CHARACTERS_DESCRIPTION = "A-Z a-z 0-9 _ : . - @"

# Explicit ASCII ranges rather than \w, which would also accept non-ASCII letters and digits.
_VALID_CHANNEL_NAME = re.compile(rf"[A-Za-z0-9_:.@-]{{1,{MAX_CHANNEL_NAME_LENGTH}}}")
_DISALLOWED_CHARACTER = re.compile(r"[^A-Za-z0-9_:.@-]")

_REQUIREMENT = (
    f"channel name must be 1-{MAX_CHANNEL_NAME_LENGTH} characters of {ALLOWED_CHARACTERS_DESCRIPTION}"
)

# Names are echoed back in error messages; a multi-megabyte name must not become a multi-megabyte reply.
_MAX_ECHOED_CHARACTERS = 40


def _echo(name: str) -> str:
    """repr() of a name, cut short so that error messages stay readable."""
    if len(name) <= _MAX_ECHOED_CHARACTERS:
        return repr(name)
    return f"{name[:_MAX_ECHOED_CHARACTERS]!r}..."


def channel_name_error(name: object) -> str | None:
    """Return None if `name` is a valid channel name, else a message saying what is wrong with it."""
    if isinstance(name, str) and _VALID_CHANNEL_NAME.fullmatch(name) is not None:
        return None
    if not isinstance(name, str):
        return f"{_REQUIREMENT}, got {type(name).__name__} {reprlib.repr(name)}, not a string"
    if not name:
        return f"{_REQUIREMENT}, got an empty string"
    disallowed = _DISALLOWED_CHARACTER.search(name)
    if disallowed is not None:
        return (
            f"{_REQUIREMENT}, got {_echo(name)}: "
            f"{disallowed.group()!r} at position {disallowed.start()} is not allowed"
        )
    return f"{_REQUIREMENT}, got a name {len(name)} characters long: {_echo(name)}"
