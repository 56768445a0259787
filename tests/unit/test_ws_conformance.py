"""Unit tests of the sans-I/O RFC 6455 message layer (server/worker/ws_conformance.py), with plain calls."""

from __future__ import annotations

import codecs
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st
from picows import WSMsgType
from picows.picows import _make_test_ws_frame

from wsd.server.worker.ws_conformance import (
    CLOSE_INVALID_PAYLOAD,
    CLOSE_MESSAGE_TOO_BIG,
    CLOSE_NORMAL,
    CLOSE_PROTOCOL_ERROR,
    OPCODE_BINARY,
    OPCODE_CLOSE,
    OPCODE_CONTINUATION,
    OPCODE_PING,
    OPCODE_PONG,
    OPCODE_TEXT,
    EchoListener,
    Fail,
    Message,
    MessageAssembler,
    PeerClose,
    Ping,
    _utf8_prefix_is_valid,
    is_valid_close_code,
    picows_server_kwargs,
)

SURROGATE = b"\xed\xa0\x80"  # U+D800 encoded: not valid UTF-8


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return code.to_bytes(2, "big") + reason


def feed_fragments(assembler: MessageAssembler, opcode: int, fragments: list[bytes]) -> list:
    """Send `fragments` as one message (first frame `opcode`, then continuations); all decisions."""
    decisions = []
    for index, fragment in enumerate(fragments):
        frame_opcode = opcode if index == 0 else OPCODE_CONTINUATION
        decisions.append(assembler.feed(frame_opcode, index == len(fragments) - 1, fragment))
    return decisions


# --- whole messages ---


def test_unfragmented_text_and_binary_messages_are_delivered_as_is():
    assembler = MessageAssembler()
    assert assembler.feed(OPCODE_TEXT, True, "héllo".encode()) == Message(True, "héllo".encode())
    assert assembler.feed(OPCODE_BINARY, True, b"\xff\x00") == Message(False, b"\xff\x00")
    assert assembler.feed(OPCODE_TEXT, True, b"") == Message(True, b"")


def test_invalid_utf8_text_message_fails_with_1007():
    decision = MessageAssembler().feed(OPCODE_TEXT, True, b"ab" + SURROGATE)
    assert isinstance(decision, Fail) and decision.code == CLOSE_INVALID_PAYLOAD


def test_binary_message_is_not_utf8_checked():
    assert MessageAssembler().feed(OPCODE_BINARY, True, SURROGATE) == Message(False, SURROGATE)


# --- fragmentation ---


def test_fragments_are_reassembled_into_one_message():
    assembler = MessageAssembler()
    decisions = feed_fragments(assembler, OPCODE_TEXT, [b"He", b"", b"llo"])
    assert decisions == [None, None, Message(True, b"Hello")]
    assert not assembler.in_fragmented_message


def test_control_frames_may_interleave_with_fragments():
    assembler = MessageAssembler()
    assert assembler.feed(OPCODE_BINARY, False, b"a") is None
    assert assembler.feed(OPCODE_PING, True, b"p") == Ping(b"p")
    assert assembler.feed(OPCODE_PONG, True, b"") is None
    assert assembler.feed(OPCODE_CONTINUATION, True, b"b") == Message(False, b"ab")


def test_continuation_without_a_started_message_fails_with_1002():
    decision = MessageAssembler().feed(OPCODE_CONTINUATION, True, b"x")
    assert isinstance(decision, Fail) and decision.code == CLOSE_PROTOCOL_ERROR


@pytest.mark.parametrize("opcode", [OPCODE_TEXT, OPCODE_BINARY])
def test_new_data_frame_inside_a_fragmented_message_fails_with_1002(opcode):
    assembler = MessageAssembler()
    assert assembler.feed(OPCODE_TEXT, False, b"a") is None
    decision = assembler.feed(opcode, True, b"b")
    assert isinstance(decision, Fail) and decision.code == CLOSE_PROTOCOL_ERROR


def test_state_is_none_until_a_fragmented_message_starts_and_after_it_ends():
    assembler = MessageAssembler()
    assembler.feed(OPCODE_TEXT, True, b"whole")
    assert assembler._partial is None
    assembler.feed(OPCODE_TEXT, False, b"part")
    assert assembler._partial is not None
    assembler.feed(OPCODE_CONTINUATION, True, b"end")
    assert assembler._partial is None
    assert not hasattr(assembler, "__dict__")


# --- reserved bits and opcodes ---


@pytest.mark.parametrize("rsv", [(True, False, False), (False, True, False), (False, False, True)])
@pytest.mark.parametrize("opcode", [OPCODE_TEXT, OPCODE_BINARY, OPCODE_PING, OPCODE_CLOSE])
def test_any_reserved_bit_fails_with_1002(rsv, opcode):
    decision = MessageAssembler().feed(opcode, True, b"", *rsv)
    assert isinstance(decision, Fail) and decision.code == CLOSE_PROTOCOL_ERROR


@pytest.mark.parametrize("opcode", [3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF])
def test_reserved_opcodes_fail_with_1002(opcode):
    decision = MessageAssembler().feed(opcode, True, b"")
    assert isinstance(decision, Fail) and decision.code == CLOSE_PROTOCOL_ERROR


# --- control frames ---


def test_ping_is_answered_with_its_payload_and_pong_is_ignored():
    assembler = MessageAssembler()
    assert assembler.feed(OPCODE_PING, True, b"x" * 125) == Ping(b"x" * 125)
    assert assembler.feed(OPCODE_PONG, True, b"unsolicited") is None


@pytest.mark.parametrize("opcode", [OPCODE_PING, OPCODE_PONG, OPCODE_CLOSE])
def test_control_frame_over_125_bytes_fails_with_1002(opcode):
    decision = MessageAssembler().feed(opcode, True, close_payload(1000, b"x" * 124))
    assert isinstance(decision, Fail) and decision.code == CLOSE_PROTOCOL_ERROR


@pytest.mark.parametrize("opcode", [OPCODE_PING, OPCODE_PONG, OPCODE_CLOSE])
def test_fragmented_control_frame_fails_with_1002(opcode):
    decision = MessageAssembler().feed(opcode, False, b"")
    assert isinstance(decision, Fail) and decision.code == CLOSE_PROTOCOL_ERROR


# --- close frames ---


def test_empty_close_is_answered_with_1000():
    assert MessageAssembler().feed(OPCODE_CLOSE, True, b"") == PeerClose(None, "", CLOSE_NORMAL)


VALID_CLOSE_CODES_TESTED_BY_AUTOBAHN = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999]


@pytest.mark.parametrize("code", VALID_CLOSE_CODES_TESTED_BY_AUTOBAHN)
def test_valid_close_code_is_echoed_back(code):
    decision = MessageAssembler().feed(OPCODE_CLOSE, True, close_payload(code, "bye ✓".encode()))
    assert decision == PeerClose(code, "bye ✓", code)


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535])
def test_invalid_close_code_fails_with_1002(code):
    decision = MessageAssembler().feed(OPCODE_CLOSE, True, close_payload(code))
    assert isinstance(decision, Fail) and decision.code == CLOSE_PROTOCOL_ERROR


def test_close_code_table_matches_rfc_6455_and_iana_registry():
    valid = [code for code in range(0, 70000) if is_valid_close_code(code)]
    expected = [1000, 1001, 1002, 1003, *range(1007, 1015), *range(3000, 5000)]
    assert valid == expected


def test_close_with_one_byte_payload_fails_with_1002():
    decision = MessageAssembler().feed(OPCODE_CLOSE, True, b"\x03")
    assert isinstance(decision, Fail) and decision.code == CLOSE_PROTOCOL_ERROR


def test_close_with_invalid_utf8_reason_fails_with_1007():
    decision = MessageAssembler().feed(OPCODE_CLOSE, True, close_payload(1000, SURROGATE))
    assert isinstance(decision, Fail) and decision.code == CLOSE_INVALID_PAYLOAD


def test_close_during_a_fragmented_message_is_answered():
    assembler = MessageAssembler()
    assembler.feed(OPCODE_TEXT, False, b"half")
    assert assembler.feed(OPCODE_CLOSE, True, close_payload(1001)) == PeerClose(1001, "", 1001)
    # The half message is dropped when the close starts, not held until the connection is gone (fuzzing).
    assert not assembler.in_fragmented_message


def test_frames_after_a_close_or_failure_are_ignored():
    closed = MessageAssembler()
    closed.feed(OPCODE_CLOSE, True, b"")
    assert closed.feed(OPCODE_TEXT, True, b"late") is None
    failed = MessageAssembler()
    failed.feed(OPCODE_TEXT, False, b"half")
    assert isinstance(failed.feed(OPCODE_CONTINUATION, True, SURROGATE), Fail)
    assert failed._partial is None  # the half message is dropped at once
    assert failed.feed(OPCODE_PING, True, b"") is None


# --- message size ---


def test_message_at_the_limit_passes_and_one_byte_more_fails_with_1009():
    assert MessageAssembler(4).feed(OPCODE_BINARY, True, b"1234") == Message(False, b"1234")
    decision = MessageAssembler(4).feed(OPCODE_BINARY, True, b"12345")
    assert isinstance(decision, Fail) and decision.code == CLOSE_MESSAGE_TOO_BIG


def test_fragmented_message_over_the_limit_fails_with_1009_on_the_frame_that_crosses_it():
    assembler = MessageAssembler(4)
    assert feed_fragments(assembler, OPCODE_TEXT, [b"12", b"34"])[-1] == Message(True, b"1234")
    assert assembler.feed(OPCODE_TEXT, False, b"12") is None
    assert assembler.feed(OPCODE_CONTINUATION, False, b"34") is None
    decision = assembler.feed(OPCODE_CONTINUATION, False, b"5")
    assert isinstance(decision, Fail) and decision.code == CLOSE_MESSAGE_TOO_BIG


# --- UTF-8 across fragments ---


def test_invalid_utf8_fails_on_the_fragment_that_breaks_it_not_at_the_end():
    # Autobahn 6.4.1/6.4.2: the second of three fragments makes the text invalid.
    assembler = MessageAssembler()
    assert assembler.feed(OPCODE_TEXT, False, "κόσμε".encode()) is None
    decision = assembler.feed(OPCODE_CONTINUATION, False, b"\xf4\x90\x80\x80")
    assert isinstance(decision, Fail) and decision.code == CLOSE_INVALID_PAYLOAD


def test_surrogate_prefix_fails_fast_although_cpython_would_wait_for_the_third_byte():
    assembler = MessageAssembler()
    assert assembler.feed(OPCODE_TEXT, False, b"ok\xed") is None  # ED 80..9F is still possible
    decision = assembler.feed(OPCODE_CONTINUATION, False, b"\xa0")
    assert isinstance(decision, Fail) and decision.code == CLOSE_INVALID_PAYLOAD


def test_character_split_across_fragments_is_valid():
    euro = "€".encode()
    assert feed_fragments(MessageAssembler(), OPCODE_TEXT, [euro[:1], euro[1:2], euro[2:]])[-1] == Message(
        True, euro
    )


def test_message_ending_inside_a_character_fails_with_1007():
    decision = feed_fragments(MessageAssembler(), OPCODE_TEXT, [b"a", "€".encode()[:2]])[-1]
    assert isinstance(decision, Fail) and decision.code == CLOSE_INVALID_PAYLOAD


def _prefixes_of_valid_utf8() -> set[bytes]:
    """Every byte string that some valid UTF-8 text (one multi-byte character) starts with."""
    prefixes = set()
    # Up to 3 bytes matter; 4-byte characters differing only in the low 6 bits share those 3 bytes.
    four_byte_starts = range(0x10000, 0x110000, 64)
    for code_point in itertools.chain(range(0x80, 0xD800), range(0xE000, 0x10000), four_byte_starts):
        encoded = chr(code_point).encode("utf-8")
        prefixes.update(encoded[:length] for length in range(1, min(len(encoded), 3) + 1))
    return prefixes


def test_every_incomplete_prefix_is_accepted_exactly_when_some_continuation_makes_it_valid():
    # Exhaustive over lead byte + up to two continuation bytes: the fail-fast check is exact.
    # A rejected prefix is not extended (the decoder has already failed), which keeps this fast.
    valid_prefixes = _prefixes_of_valid_utf8()
    frontier = [bytes([lead]) for lead in range(0xC0, 0x100)]
    while frontier:
        accepted_prefixes = []
        for prefix in frontier:
            accepted = _utf8_prefix_is_valid(codecs.getincrementaldecoder("utf-8")(), prefix)
            assert accepted == (prefix in valid_prefixes), prefix.hex()
            if accepted and len(prefix) < 3:
                accepted_prefixes.append(prefix)
        frontier = [prefix + bytes([byte]) for prefix in accepted_prefixes for byte in range(0x80, 0xC0)]


def _split(data: bytes, cut_points: list[int]) -> list[bytes]:
    cuts = sorted({min(point, len(data)) for point in cut_points})
    bounds = [0, *cuts, len(data)]
    return [data[start:end] for start, end in itertools.pairwise(bounds)]


UTF8_ISH_BYTES = st.lists(
    st.one_of(
        st.text(max_size=4).map(lambda text: text.encode("utf-8")),
        st.sampled_from([b"\xed\xa0\x80", b"\xf4\x90", b"\xc0\xaf", b"\xff", b"\x80", b"\xe2\x82", b"\xf0"]),
    ),
    max_size=12,
).map(b"".join)
CUT_POINTS = st.lists(st.integers(min_value=0, max_value=64), max_size=8)


@given(data=UTF8_ISH_BYTES, cut_points=CUT_POINTS)
def test_random_fragmentation_gives_the_same_verdict_as_decoding_the_whole_message(data, cut_points):
    try:
        data.decode("utf-8")
        whole_is_valid = True
    except UnicodeDecodeError:
        whole_is_valid = False
    decisions = feed_fragments(MessageAssembler(), OPCODE_TEXT, _split(data, cut_points))
    final = next(decision for decision in decisions if decision is not None)
    if whole_is_valid:
        assert final == Message(True, data)
    else:
        assert isinstance(final, Fail) and final.code == CLOSE_INVALID_PAYLOAD


@given(payload=st.binary(max_size=64), cut_points=CUT_POINTS)
def test_random_fragmentation_of_binary_reassembles_the_exact_bytes(payload, cut_points):
    decisions = feed_fragments(MessageAssembler(), OPCODE_BINARY, _split(payload, cut_points))
    assert decisions[-1] == Message(False, payload)
    assert all(decision is None for decision in decisions[:-1])


# --- picows settings ---


def test_server_kwargs_disable_auto_pong_and_bound_frames_by_the_message_limit():
    kwargs = picows_server_kwargs(1 << 20)
    assert kwargs["enable_auto_pong"] is False
    assert kwargs["max_frame_size"] == 1 << 20


# --- ConformingListener wiring, with a recording stand-in for picows' WSTransport ---


class RecordingRawTransport:
    def __init__(self, sent: list[tuple]):
        self.sent = sent

    def abort(self):
        self.sent.append(("abort",))


class RecordingTransport:
    def __init__(self):
        self.sent: list[tuple] = []
        self.is_close_frame_sent = False
        self.is_disconnected = False
        self.underlying_transport = RecordingRawTransport(self.sent)

    def send(self, msg_type, message):
        self.sent.append(("send", int(msg_type), bytes(message)))

    def send_pong(self, message):
        self.sent.append(("pong", bytes(message)))

    def send_close(self, close_code, close_message):
        self.sent.append(("close", int(close_code), bytes(close_message)))
        self.is_close_frame_sent = True

    def disconnect(self):
        self.sent.append(("disconnect",))
        self.is_disconnected = True


def connected_echo(max_message_size: int = 1 << 20) -> tuple[EchoListener, RecordingTransport]:
    listener, transport = EchoListener(max_message_size), RecordingTransport()
    listener.on_ws_connected(transport)
    return listener, transport


def deliver(listener, transport, opcode, payload=b"", fin=True, rsv1=False):
    listener.on_ws_frame(transport, _make_test_ws_frame(WSMsgType(opcode), payload, fin, rsv1))


def test_echo_listener_echoes_reassembled_messages_with_their_type_and_answers_pings():
    listener, transport = connected_echo()
    deliver(listener, transport, OPCODE_TEXT, b"he", fin=False)
    deliver(listener, transport, OPCODE_PING, b"p")
    deliver(listener, transport, OPCODE_CONTINUATION, b"llo")
    deliver(listener, transport, OPCODE_BINARY, b"\x00")
    assert transport.sent == [("pong", b"p"), ("send", OPCODE_TEXT, b"hello"), ("send", OPCODE_BINARY, b"\x00")]


def test_listener_echoes_a_peer_close_code_then_disconnects_and_ignores_later_frames():
    listener, transport = connected_echo()
    deliver(listener, transport, OPCODE_CLOSE, close_payload(4000, b"bye"))
    deliver(listener, transport, OPCODE_TEXT, b"late")
    assert transport.sent == [("close", 4000, b""), ("disconnect",)]


def test_listener_fails_a_ping_with_a_reserved_bit_instead_of_answering_it():
    listener, transport = connected_echo()
    deliver(listener, transport, OPCODE_PING, b"p", rsv1=True)
    assert [entry[:2] for entry in transport.sent] == [("close", CLOSE_PROTOCOL_ERROR), ("disconnect",)]


def test_listener_close_sends_one_close_frame():
    listener, transport = connected_echo()
    listener.close(1003, "binary not supported")
    listener.close(1000)
    assert transport.sent == [("close", 1003, b"binary not supported"), ("disconnect",)]


def test_a_lingering_close_waits_for_the_peers_close_ignoring_its_data():
    listener, transport = connected_echo()
    listener.close(1008, "too many requests", linger=True)
    assert transport.sent == [("close", 1008, b"too many requests")]  # the connection stays open
    deliver(listener, transport, OPCODE_TEXT, b"still sending")  # ignored: not echoed
    assert transport.sent == [("close", 1008, b"too many requests")]
    deliver(listener, transport, OPCODE_CLOSE, close_payload(1008, b""))
    assert transport.sent == [("close", 1008, b"too many requests"), ("disconnect",)]
