"""permessage-deflate negotiation and compression (wsd.server.permessage_deflate), without sockets."""

from __future__ import annotations

import os
import zlib

import pytest

from wsd.server.permessage_deflate import (
    TAIL,
    ExtensionHeaderError,
    compress,
    compressed_frame_or_none,
    negotiate,
    parse_extensions,
)

BROWSER_OFFER = "permessage-deflate; client_max_window_bits"


def inflate(data: bytes, bits: int = 15) -> bytes:
    return zlib.decompressobj(-bits).decompress(data + TAIL)


# -- the header's grammar --


def test_parse_reads_several_extensions_with_parameters_in_order():
    value = 'x-webkit-deflate-frame, permessage-deflate ;client_max_window_bits; server_max_window_bits="10" , foo'
    assert parse_extensions(value) == [
        ("x-webkit-deflate-frame", []),
        ("permessage-deflate", [("client_max_window_bits", None), ("server_max_window_bits", "10")]),
        ("foo", []),
    ]


@pytest.mark.parametrize(
    "value",
    ["", ",", "permessage-deflate,", "permessage-deflate;", "permessage-deflate; a=", "permessage-deflate; a=\"x y\"",
     "permessage-deflate; a=\"unterminated", "per message-deflate", "permessage-deflate; =1"],
)  # fmt: skip
def test_parse_refuses_text_outside_the_grammar(value):
    with pytest.raises(ExtensionHeaderError):
        parse_extensions(value)


# -- negotiation --


def test_a_browser_offer_is_accepted_with_no_context_takeover_both_ways():
    agreement = negotiate((BROWSER_OFFER,))
    assert agreement.response == "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
    assert (agreement.server_window_bits, agreement.client_window_bits) == (15, 15)
    assert agreement.client_no_context_takeover


def test_the_client_may_keep_its_context_where_the_endpoint_allows_it():
    agreement = negotiate(("permessage-deflate",), client_no_context_takeover=False)
    assert agreement.response == "permessage-deflate; server_no_context_takeover"
    assert not agreement.client_no_context_takeover
    # The client's client_no_context_takeover is a hint; not answering it, we keep its context
    # (which is right whether it resets or not).
    hinted = negotiate(("permessage-deflate; client_no_context_takeover",), client_no_context_takeover=False)
    assert hinted.response == "permessage-deflate; server_no_context_takeover"
    assert not hinted.client_no_context_takeover


def test_window_sizes_are_honoured_and_answered():
    agreement = negotiate(("permessage-deflate; server_max_window_bits=10; client_max_window_bits=9",))
    assert agreement.server_window_bits == 10
    assert agreement.client_window_bits == 9
    assert "server_max_window_bits=10" in agreement.response
    assert "client_max_window_bits=9" in agreement.response


def test_a_server_window_of_8_is_promised_and_deflated_with_9():
    agreement = negotiate(("permessage-deflate; server_max_window_bits=8",))
    assert "server_max_window_bits=8" in agreement.response
    assert agreement.server_window_bits == 9
    # zlib's 9-bit deflate never reaches back more than 250 bytes: an 8-bit inflater reads it.
    text = os.urandom(200) * 40 + b"".join(os.urandom(30) * 20 for _ in range(50))
    assert inflate(compress(text, agreement.server_window_bits), bits=8) == text


def test_the_first_acceptable_of_several_offers_wins():
    header = "permessage-deflate; server_max_window_bits=10, permessage-deflate"
    assert negotiate((header,)).server_window_bits == 10
    # An invalid first offer is declined, the next one accepted; across header lines too.
    assert negotiate(("permessage-deflate; server_max_window_bits=16", "permessage-deflate")).server_window_bits == 15
    assert negotiate(("foo, permessage-deflate; bar, permessage-deflate; server_max_window_bits=12",)) is not None


@pytest.mark.parametrize(
    "offer",
    [
        "permessage-deflate; bar",  # unknown parameter
        "permessage-deflate; server_no_context_takeover; server_no_context_takeover",  # repeated
        "permessage-deflate; client_max_window_bits; client_max_window_bits=10",
        "permessage-deflate; server_no_context_takeover=1",  # a value where none belongs
        "permessage-deflate; client_no_context_takeover=true",
        "permessage-deflate; server_max_window_bits",  # a value is required
        "permessage-deflate; server_max_window_bits=7",
        "permessage-deflate; server_max_window_bits=16",
        "permessage-deflate; server_max_window_bits=010",  # leading zero
        "permessage-deflate; client_max_window_bits=0x9",
        "permessage-deflate; client_max_window_bits=20",
        "x-webkit-deflate-frame",  # another extension only
    ],
)
def test_an_invalid_offer_is_declined_not_failed(offer):
    assert negotiate((offer,)) is None


def test_an_unreadable_header_declines_everything():
    assert negotiate(('permessage-deflate; a="x y", permessage-deflate',)) is None
    assert negotiate(()) is None


def test_a_quoted_window_value_is_read_as_its_token():
    assert negotiate(('permessage-deflate; client_max_window_bits="10"',)).client_window_bits == 10


def test_agreements_are_shared_between_connections():
    assert negotiate((BROWSER_OFFER,)) is negotiate((BROWSER_OFFER,))


# -- compression --


def test_a_message_compresses_on_its_own_and_inflates_back():
    message = b'{"op":"msg","ch":"user:42","off":7,"data":' + b'{"kind":"like","from":"alice"},' * 30 + b"1}"
    compressed = compress(message)
    assert not compressed.endswith(TAIL)
    assert len(compressed) < len(message) // 3
    assert inflate(compressed) == message
    assert inflate(compress(message, 9), bits=9) == message


def test_frames_below_the_threshold_or_incompressible_stay_plain():
    from wsd.ext.frames import text_frame

    small = text_frame(b"x" * 100)
    assert compressed_frame_or_none(small, 15, threshold=256) is None
    noise = text_frame(os.urandom(1000).hex().encode()[:1000])
    big = text_frame(b"y" * 1000)
    frame = compressed_frame_or_none(big, 15, threshold=256)
    assert frame[0] == 0xC1  # FIN, RSV1, text
    assert inflate(frame[2:]) == b"y" * 1000
    hexed = compressed_frame_or_none(noise, 15, threshold=256)
    assert hexed is None or len(hexed) < len(noise)  # hex digits still compress a little
    assert compressed_frame_or_none(text_frame(os.urandom(1000)), 15, threshold=256) is None


def test_compressed_frames_use_the_right_length_encoding():
    for size in (100, 200, 70000):
        frame = compressed_frame_or_none(b"\x81" + bytes([0]), 15, threshold=0)  # empty payload
        assert frame is None or frame[0] == 0xC1
        payload = os.urandom(size // 4).hex().encode()[: size // 2] * 2
        from wsd.ext.frames import text_frame

        compressed = compressed_frame_or_none(text_frame(payload), 15, threshold=0)
        length = compressed[1]
        body = compressed[2:] if length < 126 else compressed[4:] if length == 126 else compressed[10:]
        assert inflate(body) == payload


# -- inflating client messages (wsd.server.worker.ws_conformance.MessageAssembler) --

from wsd.server.worker.ws_conformance import (  # noqa: E402
    OPCODE_BINARY,
    OPCODE_CONTINUATION,
    OPCODE_PING,
    OPCODE_TEXT,
    Fail,
    Message,
    MessageAssembler,
)


def client_compress(message: bytes, compressor=None) -> bytes:
    """What a client sends: deflated (with its context if given), the tail removed."""
    compressor = compressor or zlib.compressobj(6, zlib.DEFLATED, -15)
    data = compressor.compress(message) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert data.endswith(TAIL)
    return data[:-4]


def negotiated(limit: int = 1 << 20, keep_context: bool = False) -> MessageAssembler:
    agreement = negotiate(("permessage-deflate",), client_no_context_takeover=not keep_context)
    return MessageAssembler(limit, agreement)


def test_a_compressed_message_is_inflated():
    message = b'{"op":"sub","ch":"news","id":1}' * 10
    assert negotiated().feed(OPCODE_TEXT, True, client_compress(message), rsv1=True) == Message(True, message)


def test_a_fragmented_compressed_message_has_rsv1_on_its_first_frame_only():
    message = os.urandom(3000).hex().encode()
    data = client_compress(message)
    assembler = negotiated()
    assert assembler.feed(OPCODE_TEXT, False, data[:100], rsv1=True) is None
    assert assembler.feed(OPCODE_PING, True, b"between") is not None  # control frames may interleave
    assert assembler.feed(OPCODE_CONTINUATION, False, data[100:200]) is None
    assert assembler.feed(OPCODE_CONTINUATION, True, data[200:]) == Message(True, message)
    again = negotiated()
    assert again.feed(OPCODE_TEXT, False, data[:100], rsv1=True) is None
    assert again.feed(OPCODE_CONTINUATION, True, data[100:], rsv1=True).code == 1002


def test_compressed_and_plain_messages_mix_on_one_connection():
    assembler = negotiated()
    assert assembler.feed(OPCODE_TEXT, True, b"plain") == Message(True, b"plain")
    assert assembler.feed(OPCODE_BINARY, True, client_compress(b"\x00\xff" * 50), rsv1=True) == Message(
        False, b"\x00\xff" * 50
    )


def test_the_client_context_is_kept_only_when_it_keeps_it():
    compressor = zlib.compressobj(6, zlib.DEFLATED, -15)
    first, second = b"the same words again and again " * 4, b"the same words again and again " * 5
    frames = [client_compress(first, compressor), client_compress(second, compressor)]
    keeping = negotiated(keep_context=True)
    assert [keeping.feed(OPCODE_TEXT, True, f, rsv1=True) for f in frames] == [
        Message(True, first),
        Message(True, second),
    ]
    # Without context takeover each message inflates alone: the second refers back to the first.
    resetting = negotiated(keep_context=False)
    assert resetting.feed(OPCODE_TEXT, True, frames[0], rsv1=True) == Message(True, first)
    assert type(resetting.feed(OPCODE_TEXT, True, frames[1], rsv1=True)) is Fail


def test_rsv1_without_negotiation_or_on_control_frames_is_1002():
    assert MessageAssembler(1000).feed(OPCODE_TEXT, True, client_compress(b"x"), rsv1=True).code == 1002
    assert negotiated().feed(OPCODE_PING, True, b"", rsv1=True).code == 1002
    assert negotiated().feed(OPCODE_TEXT, True, b"x", rsv2=True).code == 1002
    assert negotiated().feed(OPCODE_CONTINUATION, True, b"x", rsv1=True).code == 1002


def test_a_zip_bomb_is_1009_having_inflated_no_more_than_the_limit():
    bomb_compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    bomb = bomb_compressor.compress(bytes(100 << 20)) + bomb_compressor.flush(zlib.Z_SYNC_FLUSH)
    assert len(bomb) < 200_000  # 100 MB of zeros
    decision = negotiated(limit=65536).feed(OPCODE_BINARY, True, bomb[:-4], rsv1=True)
    assert decision.code == 1009
    # In fragments too: the limit counts what the fragments inflated to, not their own size.
    assembler = negotiated(limit=65536)
    chunks = [bomb[i : i + 16384] for i in range(0, len(bomb), 16384)]
    decisions = [assembler.feed(OPCODE_BINARY if i == 0 else OPCODE_CONTINUATION, False, chunk, rsv1=i == 0)
                 for i, chunk in enumerate(chunks[:3])]  # fmt: skip
    assert decisions[0] is None or decisions[0].code == 1009
    assert any(d is not None and d.code == 1009 for d in decisions)


def test_a_message_of_exactly_the_limit_inflates():
    message = b"a" * 65536
    assert negotiated(limit=65536).feed(OPCODE_TEXT, True, client_compress(message), rsv1=True) == Message(
        True, message
    )
    assert negotiated(limit=65535).feed(OPCODE_TEXT, True, client_compress(message), rsv1=True).code == 1009


def test_data_that_does_not_inflate_is_1007_and_so_is_bad_utf8():
    assert negotiated().feed(OPCODE_TEXT, True, b"\xff\xff\xff\xff", rsv1=True).code == 1007
    assert negotiated().feed(OPCODE_TEXT, True, client_compress(b"\xc3\x28"), rsv1=True).code == 1007
    data = client_compress(b"ok \xe2\x82")
    assembler = negotiated()
    assert assembler.feed(OPCODE_TEXT, False, data, rsv1=True) is None
    assert assembler.feed(OPCODE_CONTINUATION, True, b"").code == 1007
