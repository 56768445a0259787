"""Pure-Python reference of wsd.ext.frames: server-to-client WebSocket text frames, encoded once per worker.

A message is framed once and the same bytes are written to every subscriber's transport.
"""

from collections.abc import Iterable

OPCODE_TEXT = 0x1
FIN = 0x80


def frame_header(payload_length: int) -> bytes:
    """Header of an unmasked FIN text frame (RFC 6455 section 5.2) for a payload of that length."""
    if payload_length < 126:
        return bytes((FIN | OPCODE_TEXT, payload_length))
    if payload_length < 65536:
        return bytes((FIN | OPCODE_TEXT, 126)) + payload_length.to_bytes(2, "big")
    return bytes((FIN | OPCODE_TEXT, 127)) + payload_length.to_bytes(8, "big")


def text_frame(payload: bytes) -> bytes:
    """An unmasked FIN=1 text frame carrying `payload`."""
    return frame_header(len(payload)) + payload


def msg_payload(channel: bytes, off: int, data: bytes, from_json: bytes = b"") -> bytes:
    """The JSON text of a `msg` event (channel names need no escaping; data is already JSON; so is
    `from_json`, the publishing user's id as a JSON string, left out when empty)."""
    head = b'{"op":"msg","ch":"' + channel + b'","off":' + str(off).encode() + b',"data":' + data
    if from_json:
        head += b',"from":' + from_json
    return head + b"}"


def msg_frame(channel: bytes, off: int, data: bytes, from_json: bytes = b"") -> bytes:
    """The text frame of a `msg` event for `channel` at offset `off` (published by `from_json`)."""
    return text_frame(msg_payload(channel, off, data, from_json))


def write_frame_to_all(frame: bytes, transports: Iterable, high_water: int) -> list:
    """Write `frame` to each transport; return those whose write buffer now exceeds `high_water`."""
    slow = []
    for transport in transports:
        transport.write(frame)
        if transport.get_write_buffer_size() > high_water:
            slow.append(transport)
    return slow
