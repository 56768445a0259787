"""WebSocket frames: checked by an independent parser, and msg_frame's payload is valid JSON."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wsd.ext import frames, frames_ref

IMPLEMENTATIONS = [frames, frames_ref]
CHANNEL_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_:.-@"


def parse_frame(frame: bytes) -> tuple[bool, int, bytes]:
    """(fin, opcode, payload) of one unmasked frame that must span exactly `frame` (RFC 6455 5.2)."""
    fin, opcode = bool(frame[0] & 0x80), frame[0] & 0x0F
    assert frame[0] & 0x70 == 0, "reserved bits set"
    assert frame[1] & 0x80 == 0, "server frames must not be masked"
    length, at = frame[1] & 0x7F, 2
    if length == 126:
        length, at = int.from_bytes(frame[2:4], "big"), 4
        assert length >= 126, "16-bit form used for a short length"
    elif length == 127:
        length, at = int.from_bytes(frame[2:10], "big"), 10
        assert length >= 65536, "64-bit form used for a 16-bit length"
    assert len(frame) == at + length
    return fin, opcode, frame[at:]


@pytest.mark.parametrize("module", IMPLEMENTATIONS, ids=["cython", "ref"])
@pytest.mark.parametrize(("length", "header_size"), [(0, 2), (125, 2), (126, 4), (65535, 4), (65536, 10),
                                                     (70000, 10)])
def test_text_frame_uses_the_shortest_length_form(module, length, header_size):
    payload = bytes(i % 256 for i in range(length))
    frame = module.text_frame(payload)
    assert len(frame) == header_size + length
    assert parse_frame(frame) == (True, 0x1, payload)


@pytest.mark.parametrize("module", IMPLEMENTATIONS, ids=["cython", "ref"])
@pytest.mark.parametrize("data_size", [0, 50, 200, 70000])
def test_msg_frame_payload_is_the_json_event(module, data_size):
    data = json.dumps({"text": "x" * data_size, "n": [1, 2.5, None]}).encode()
    frame = module.msg_frame(b"room:42.a-b@c_d", 2**64 - 1, data)
    fin, opcode, payload = parse_frame(frame)
    assert (fin, opcode) == (True, 0x1)
    assert json.loads(payload) == {"op": "msg", "ch": "room:42.a-b@c_d", "off": 2**64 - 1,
                                   "data": json.loads(data)}
    assert payload == (b'{"op":"msg","ch":"room:42.a-b@c_d","off":18446744073709551615,"data":'
                       + data + b"}")


@pytest.mark.parametrize("module", IMPLEMENTATIONS, ids=["cython", "ref"])
@pytest.mark.parametrize("sub", ["42", 'quote" back\\slash', "zoë ☃", "u" * 255])
def test_msg_frame_of_a_client_publish_carries_from(module, sub):
    from_json = json.dumps(sub, ensure_ascii=False).encode()
    data = b'{"t":"hi"}'
    frame = module.msg_frame(b"room:1", 7, data, from_json)
    fin, opcode, payload = parse_frame(frame)
    assert (fin, opcode) == (True, 0x1)
    assert json.loads(payload) == {"op": "msg", "ch": "room:1", "off": 7, "data": {"t": "hi"}, "from": sub}
    assert module.msg_frame(b"room:1", 7, data, b"") == module.msg_frame(b"room:1", 7, data)  # API: no from


@given(channel=st.text(CHANNEL_ALPHABET, min_size=1, max_size=64), off=st.integers(0, 2**64 - 1),
       data=st.binary(max_size=300), sub=st.text(max_size=40))
def test_cython_frames_equal_the_reference(channel, off, data, sub):
    assert frames.msg_frame(channel.encode(), off, data) == frames_ref.msg_frame(channel.encode(), off, data)
    from_json = json.dumps(sub).encode()
    assert frames.msg_frame(channel.encode(), off, data, from_json) == frames_ref.msg_frame(
        channel.encode(), off, data, from_json
    )
    assert frames.text_frame(data) == frames_ref.text_frame(data)


class FakeTransport:
    def __init__(self, backlog: int) -> None:
        self.backlog = backlog
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)
        self.backlog += len(data)

    def get_write_buffer_size(self) -> int:
        return self.backlog


@pytest.mark.parametrize("module", IMPLEMENTATIONS, ids=["cython", "ref"])
def test_write_frame_to_all_writes_everywhere_and_returns_the_slow_readers(module):
    frame = module.text_frame(b"hello")  # 7 bytes
    fast, edge, slow = FakeTransport(0), FakeTransport(93), FakeTransport(94)
    assert module.write_frame_to_all(frame, [fast, edge, slow], 100) == [slow]
    assert fast.written == edge.written == slow.written == [frame]
    assert module.write_frame_to_all(frame, [], 100) == []
