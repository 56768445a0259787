"""Limits on the JSON that clients publish, shared by the publish HTTP API and the WebSocket protocol.

A message's ``data`` is parsed with orjson and re-serialized, and the re-serialized bytes are what is
stored and delivered. Two things must not pass through that silently:

- nesting: ``data`` may nest arrays and objects at most `MAX_DEPTH` levels deep (a scalar is 0 levels,
  ``[]`` is 1). orjson itself parses up to 1024 levels but re-serializes only 254, and subscribers'
  parsers have limits of their own;
- integers outside 64 bits (below -2**63 or above 2**64-1): orjson parses them into floats, so
  ``123456789012345678901234567890`` would be delivered as ``1.2345678901234568e+29``.

Both are checked without a second parse. Depth is counted on the re-serialized bytes, by bracket count
first (most data has fewer than 64 brackets in all) and exactly otherwise. A lost integer can only show
up in orjson's output as a float with an exponent of at least 18 (orjson writes every float from 1e16
up as ``...e+NN``), so the JSON text received is scanned for the integer literal only when the output
contains ``e+`` at all.

Usage: ``value = loads(text)``, then ``data_json = encode(value)`` for each value taken from it, then
``check_integers(text, data_json, ...)`` once per text. All raise `JsonLimitError` past a limit.
"""

from __future__ import annotations

import re

import orjson

MAX_DEPTH = 64

# JSON this short cannot nest past MAX_DEPTH: a level takes two bytes. (For callers that inline the
# fast path of `encode`.)
DEPTH_CHECK_ABOVE = 2 * MAX_DEPTH

# orjson's own integer range: what it parses exactly.
_INT_MIN = -(2**63)
_INT_MAX = 2**64 - 1

# A JSON string literal in valid JSON text (unrolled-loop form: no backtracking per character).
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
# An integer literal of 19 digits or more (every one outside 64 bits has at least 19), not part of a
# fraction or an exponent. Applied to text whose strings were removed.
_LONG_INTEGER = re.compile(rb"(?<![0-9.eE+-])-?[0-9]{19,}(?![0-9.eE])")

# Byte values, not one-byte bytes: `int in bytes` is a memchr, `bytes in bytes` costs several times more.
PLUS = ord("+")
_OPEN_ARRAY = ord("[")
_OPEN_OBJECT = ord("{")

# Nesting is counted exactly up to this depth, for the error message; deeper is "more than".
_COUNTED_DEPTH = 2 * MAX_DEPTH

_KEEP_BRACKETS = bytes.maketrans(b"[]{}", b"()()")
_NOT_BRACKETS = bytes(set(range(256)) - set(b"[]{}"))


class JsonLimitError(ValueError):
    """JSON that is valid but outside wsd's limits; the message says which limit and how to comply."""


def loads(text: bytes | bytearray | memoryview | str) -> object:
    """orjson.loads, except that nesting past orjson's own limit (1024) raises `JsonLimitError` like any
    nesting past `MAX_DEPTH` does in `encode`, instead of a syntax error. Other errors are orjson's."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as error:
        limit = decode_error_as_limit(error)
        if limit is not None:
            raise limit from None
        raise


def decode_error_as_limit(error: orjson.JSONDecodeError) -> JsonLimitError | None:
    """The `JsonLimitError` that an orjson decode error stands for (nesting past orjson's own limit), or None."""
    if str(error).startswith("depth limit exceeded"):
        return JsonLimitError(_depth_message("more than 1024"))
    return None


def encode(value: object) -> bytes:
    """orjson.dumps(value) for a value parsed from JSON; raises `JsonLimitError` if it nests deeper
    than `MAX_DEPTH`."""
    try:
        encoded = orjson.dumps(value)
    except orjson.JSONEncodeError:
        raise depth_error_of_encoding() from None
    if len(encoded) > DEPTH_CHECK_ABOVE:
        check_depth(encoded)
    return encoded


def depth_error_of_encoding() -> JsonLimitError:
    """What orjson.dumps failing on a value parsed from JSON means: parsed JSON holds nothing orjson
    cannot write, so it is orjson's recursion limit (254 levels)."""
    return JsonLimitError(_depth_message("more than 254"))


def check_depth(encoded: bytes) -> None:
    """Raise `JsonLimitError` if valid JSON `encoded` nests deeper than `MAX_DEPTH`. Only needed when
    ``len(encoded) > DEPTH_CHECK_ABOVE`` (each level takes two bytes)."""
    # Nesting cannot be deeper than the number of opening brackets: most data is done here.
    if encoded.count(_OPEN_ARRAY) + encoded.count(_OPEN_OBJECT) > MAX_DEPTH:
        depth = nesting_depth(encoded)
        if depth > MAX_DEPTH:
            shown = str(depth) if depth <= _COUNTED_DEPTH else f"more than {_COUNTED_DEPTH}"
            raise JsonLimitError(_depth_message(shown))


def check_integers(text: bytes | bytearray | memoryview | str, *encoded: bytes) -> None:
    """Raise `JsonLimitError` if `text` (the JSON text the values were parsed from) holds an integer
    outside 64 bits that orjson turned into a float in one of the `encoded` re-serializations."""
    for part in encoded:
        if PLUS in part and b"e+" in part:
            break
    else:
        return
    literal = out_of_range_integer(text)
    if literal is not None:
        shown = literal if len(literal) <= 40 else f"{literal[:20]}...{literal[-8:]} ({len(literal)} characters)"
        raise JsonLimitError(
            f"integer {shown} does not fit in 64 bits (-2**63 to 2**64-1); send it as a string, "
            "or as a float if precision may be lost"
        )


def out_of_range_integer(text: bytes | bytearray | memoryview | str) -> str | None:
    """The first integer literal in valid JSON `text` that lies outside 64 bits, or None."""
    if isinstance(text, str):
        text = text.encode()
    without_strings = _STRING.sub(b'""', text)
    for match in _LONG_INTEGER.finditer(without_strings):
        value = int(match.group())
        if value < _INT_MIN or value > _INT_MAX:
            return match.group().decode()
    return None


def nesting_depth(encoded: bytes, stop_above: int = _COUNTED_DEPTH) -> int:
    """How deep arrays and objects nest in valid JSON `encoded` (0 for a scalar); counting stops just
    above `stop_above`."""
    if b'\\"' in encoded:
        outside_strings = _STRING.sub(b"", encoded)
    else:
        # Without escaped quotes, every other piece between quotes is outside a string (split is C-fast).
        outside_strings = b"".join(encoded.split(b'"')[::2])
    brackets = outside_strings.translate(_KEEP_BRACKETS, _NOT_BRACKETS)
    # Removing every "()" (an innermost pair) lowers the deepest nesting by exactly one.
    depth = 0
    while brackets and depth <= stop_above:
        depth += 1
        shorter = brackets.replace(b"()", b"")
        if len(shorter) == len(brackets):
            raise ValueError("unbalanced brackets: not valid JSON")
        brackets = shorter
    return depth


def _depth_message(depth: str) -> str:
    return f"data nests arrays and objects {depth} levels deep, more than the limit of {MAX_DEPTH}; flatten it"
