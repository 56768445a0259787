"""permessage-deflate (RFC 7692), free of I/O: the negotiation of a handshake's offers, and the
compression of one outgoing message.

`negotiate(header_values)` reads a handshake's `Sec-WebSocket-Extensions` headers and returns the
`Deflate` agreement for the first acceptable permessage-deflate offer, or None (the connection
goes uncompressed). An offer that breaks RFC 7692 (an unknown or repeated parameter, a bad window
size, a value where none belongs) is declined, never a failed handshake: the next offer is tried,
and a header that cannot be parsed at all declines every offer.

wsd always answers `server_no_context_takeover`: every message is compressed on its own, so one
compressed frame, made once per worker (wsd.server.node.hub), serves every subscriber. `/ws` also
answers `client_no_context_takeover` (see `negotiate`), so a connection keeps no inflate state
between messages: a 32 KiB window per connection would be ten times its whole footprint.

zlib cannot deflate raw streams with an 8-bit (256-byte) window; wsd compresses with a 9-bit one
then, and may still promise 8: zlib's deflate never emits a distance beyond its window less
MIN_LOOKAHEAD (512 - 262 = 250 bytes), so such a stream never reaches back past 256 bytes.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from functools import lru_cache

EXTENSION = "permessage-deflate"
HEADER = "Sec-WebSocket-Extensions"

# RFC 7692 section 7.2.1: a message's compressed data ends with an empty stored block whose last
# four bytes (00 00 ff ff) are removed by the sender and put back by the receiver.
TAIL = b"\x00\x00\xff\xff"

MAX_WINDOW_BITS = 15
MIN_WINDOW_BITS = 8
# The smallest window zlib deflates raw data with (see the module docstring).
MIN_ZLIB_DEFLATE_BITS = 9
COMPRESSION_LEVEL = 6  # zlib's default: JSON gains little from more, and costs more CPU per message
# Every message gets a fresh compressor (no context takeover), so its set-up is paid per message, and
# most of that is clearing the hash table memLevel sizes (2**(memLevel + 7) entries). For a 1 KB JSON
# message memLevel 4 gives the same output as zlib's default 8 at ~2.5x less CPU (~15-20 us vs ~40-50
# us per message on this box, timeit of compressobj + compress + flush).
MEM_LEVEL = 4

_BOOLEAN_PARAMETERS = ("server_no_context_takeover", "client_no_context_takeover")
_WINDOW_PARAMETERS = ("server_max_window_bits", "client_max_window_bits")
# RFC 7692 section 7.1.2: 1*DIGIT, 8 to 15, no leading zero.
_WINDOW_VALUE = re.compile(r"(?:[89]|1[0-5])\Z")

# RFC 7230 section 3.2.6 tokens and quoted strings; RFC 6455 section 9.1 (the header's grammar).
_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED = r'"(?:[^"\\]|\\.)*"'
_OWS = r"[ \t]*"
_PARAMETER = re.compile(rf"{_OWS};{_OWS}({_TOKEN})(?:{_OWS}={_OWS}({_TOKEN}|{_QUOTED}))?")
_EXTENSION_NAME = re.compile(rf"{_OWS}({_TOKEN})")
_OWS_RE = re.compile(_OWS)


class ExtensionHeaderError(ValueError):
    """A Sec-WebSocket-Extensions value that does not follow RFC 6455's grammar."""


@dataclass(frozen=True, slots=True)
class Deflate:
    """What one connection agreed to. Shared: every connection with the same agreement holds the
    same object (negotiate is cached), so it costs a connection one pointer."""

    # LZ77 window the server compresses with (9-15; see MIN_ZLIB_DEFLATE_BITS).
    server_window_bits: int
    # Window the client compresses with at most: what its messages are inflated with.
    client_window_bits: int
    # The client resets its compression context after each message: nothing is kept to inflate.
    client_no_context_takeover: bool
    # The response header's value.
    response: str


def parse_extensions(value: str) -> list[tuple[str, list[tuple[str, str | None]]]]:
    """One Sec-WebSocket-Extensions value as [(extension, [(parameter, value or None)])], in order.

    Quoted values are unquoted (RFC 6455 section 9.1 allows them; the value must then be a token).
    Raises ExtensionHeaderError when the text does not follow the grammar."""
    extensions: list[tuple[str, list[tuple[str, str | None]]]] = []
    position = 0
    while True:
        name = _EXTENSION_NAME.match(value, position)
        if name is None:
            raise ExtensionHeaderError(f"expected an extension name at {position} in {value!r}")
        position = name.end()
        parameters: list[tuple[str, str | None]] = []
        while (parameter := _PARAMETER.match(value, position)) is not None:
            key, raw = parameter.group(1), parameter.group(2)
            if raw is not None and raw.startswith('"'):
                raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
                if not re.fullmatch(_TOKEN, raw):
                    raise ExtensionHeaderError(f"quoted value {raw!r} of {key} is not a token")
            parameters.append((key.lower(), raw))
            position = parameter.end()
        extensions.append((name.group(1).lower(), parameters))
        position = _OWS_RE.match(value, position).end()  # type: ignore[union-attr]
        if position == len(value):
            return extensions
        if value[position] != ",":
            raise ExtensionHeaderError(f"unexpected text at {position} in {value!r}")
        position += 1


def negotiate(header_values: tuple[str, ...], client_no_context_takeover: bool = True) -> Deflate | None:
    """The agreement for the first acceptable permessage-deflate offer in a handshake's
    Sec-WebSocket-Extensions values (in order), or None.

    `client_no_context_takeover`: True answers it whether the client offered it or not (RFC 7692
    section 7.1.1.2 allows that), so that no inflate state outlives a message. False never answers
    it (also allowed: an offer's `client_no_context_takeover` is only a hint) and the client's
    messages are inflated with its context kept: the echo endpoint does that, so that Autobahn,
    whose offers all carry the hint, tests that path too."""
    return _negotiate(tuple(header_values), client_no_context_takeover)


@lru_cache(maxsize=256)
def _negotiate(header_values: tuple[str, ...], force_client_no_context_takeover: bool) -> Deflate | None:
    # Browsers send one of a few strings: the cache makes negotiation a dict look-up per handshake.
    for value in header_values:
        try:
            extensions = parse_extensions(value)
        except ExtensionHeaderError:
            return None  # a header we cannot read: decline everything it offers
        for name, parameters in extensions:
            if name == EXTENSION:
                agreement = accept_offer(parameters, force_client_no_context_takeover)
                if agreement is not None:
                    return agreement
    return None


def accept_offer(
    parameters: list[tuple[str, str | None]], force_client_no_context_takeover: bool = True
) -> Deflate | None:
    """The agreement for one permessage-deflate offer, or None when it must be declined."""
    seen: dict[str, str | None] = {}
    for key, value in parameters:
        if key in seen:
            return None  # RFC 7692 section 7: a parameter given twice
        if key in _BOOLEAN_PARAMETERS:
            if value is not None:
                return None
        elif key == "server_max_window_bits":
            if value is None or not _WINDOW_VALUE.match(value):
                return None
        elif key == "client_max_window_bits":
            if value is not None and not _WINDOW_VALUE.match(value):
                return None
        else:
            return None  # an unknown parameter
        seen[key] = value
    answer = [EXTENSION, "server_no_context_takeover"]
    client_no_context_takeover = force_client_no_context_takeover
    if client_no_context_takeover:
        answer.append("client_no_context_takeover")
    server_bits = MAX_WINDOW_BITS
    if "server_max_window_bits" in seen:
        # The client limits our window: answer the same value (RFC 7692 section 7.1.2.1).
        server_bits = int(seen["server_max_window_bits"])  # type: ignore[arg-type]
        answer.append(f"server_max_window_bits={server_bits}")
    client_bits = MAX_WINDOW_BITS
    if seen.get("client_max_window_bits") is not None:
        # The client tells us its window: confirm it, and inflate with no larger one.
        client_bits = int(seen["client_max_window_bits"])  # type: ignore[arg-type]
        answer.append(f"client_max_window_bits={client_bits}")
    return Deflate(
        server_window_bits=max(server_bits, MIN_ZLIB_DEFLATE_BITS),
        client_window_bits=client_bits,
        client_no_context_takeover=client_no_context_takeover,
        response="; ".join(answer),
    )


def compress(payload: bytes | memoryview, window_bits: int = MAX_WINDOW_BITS) -> bytes:
    """One message's payload deflated on its own (no context taken over), the tail removed.

    The window is also no larger than the message needs (a smaller one compresses the same data
    identically and costs less to set up); never below MIN_ZLIB_DEFLATE_BITS."""
    bits = max(MIN_ZLIB_DEFLATE_BITS, min(window_bits, (len(payload) - 1).bit_length()))
    compressor = zlib.compressobj(COMPRESSION_LEVEL, zlib.DEFLATED, -bits, MEM_LEVEL)
    data = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
    return data[:-4] if data.endswith(TAIL) else data


def compressed_text_frame(compressed: bytes) -> bytes:
    """An unmasked FIN text frame with RSV1 set (the message is compressed) carrying `compressed`."""
    length = len(compressed)
    if length < 126:
        header = bytes((0xC1, length))
    elif length < 65536:
        header = bytes((0xC1, 126)) + length.to_bytes(2, "big")
    else:
        header = bytes((0xC1, 127)) + length.to_bytes(8, "big")
    return header + compressed


def frame_payload(frame: bytes) -> memoryview:
    """The payload of an unmasked server frame (wsd.ext.frames), without copying it."""
    length = frame[1] & 0x7F
    return memoryview(frame)[2 if length < 126 else 4 if length == 126 else 10 :]


def compressed_frame_or_none(frame: bytes, window_bits: int, threshold: int) -> bytes | None:
    """The compressed form of a plain text frame, or None when it is below `threshold` bytes or
    compression would not make it smaller (RSV1 is per message: plain frames stay legal)."""
    payload = frame_payload(frame)
    if len(payload) < threshold:
        return None
    compressed = compress(payload, window_bits)
    if len(compressed) >= len(payload):
        return None
    return compressed_text_frame(compressed)
