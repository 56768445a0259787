"""The bus record codec: MSG and PUBREQ round trips (with and without a sender, the publishing
client's user id), rejection of truncated or foreign payloads, and the Cython codec producing
exactly the reference's bytes."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsd.ext import record, record_ref

CODECS = [record, record_ref]
u16 = st.integers(0, 2**16 - 1)
u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
channels = st.binary(min_size=1, max_size=255)
datas = st.binary(max_size=2000)
senders = st.one_of(st.just(b""), st.text(max_size=60).map(str.encode).filter(lambda s: len(s) <= 255),
                    st.binary(max_size=255))  # fmt: skip


def msg_fields(msg) -> tuple:
    return (msg.epoch, msg.origin_slot, msg.off, msg.prev_pos, msg.ts_ns, msg.token, msg.chan_hash,
            msg.channel, msg.data, msg.sender)


def pubreq_fields(request) -> tuple:
    return (request.target_slot, request.origin_slot, request.token, request.ts_ns, request.chan_hash,
            request.channel, request.data, request.sender)


def test_constants_agree():
    for name in ("TAG_MSG", "TAG_PUBREQ", "NO_SLOT", "NO_POSITION", "MSG_HEADER_SIZE", "PUBREQ_HEADER_SIZE"):
        assert getattr(record, name) == getattr(record_ref, name)
    assert (record.TAG_MSG, record.TAG_PUBREQ) == (1, 2)


@settings(max_examples=200, deadline=None)
@given(fields=st.tuples(u32, u16, u64, u64, u64, u64, u64, channels, datas, senders))
def test_msg_round_trips_and_both_codecs_write_the_same_bytes(fields):
    payload = record.encode_msg(*fields)
    assert payload == record_ref.encode_msg(*fields)
    for codec in CODECS:
        assert msg_fields(codec.decode_msg(payload)) == fields
        assert codec.peek_msg_chan_hash(payload) == fields[6]


@settings(max_examples=200, deadline=None)
@given(fields=st.tuples(u16, u16, u64, u64, u64, channels, datas, senders))
def test_pubreq_round_trips_and_both_codecs_write_the_same_bytes(fields):
    payload = record.encode_pubreq(*fields)
    assert payload == record_ref.encode_pubreq(*fields)
    for codec in CODECS:
        assert pubreq_fields(codec.decode_pubreq(payload)) == fields
        assert codec.peek_pubreq_target(payload) == fields[0]


@pytest.mark.parametrize("codec", CODECS, ids=["cython", "ref"])
def test_every_truncation_and_extension_is_rejected(codec):
    msg = codec.encode_msg(3, 0xFFFF, 42, 2**64 - 1, 1, 0, 99, b"news:eu", b'{"a":[1,2]}', b"user-42")
    request = codec.encode_pubreq(1, 2, 3, 4, 5, b"news:eu", b'"hi"', b"user-42")
    for cut in range(len(msg)):
        with pytest.raises(ValueError):
            codec.decode_msg(msg[:cut])
    for cut in range(len(request)):
        with pytest.raises(ValueError):
            codec.decode_pubreq(request[:cut])
    with pytest.raises(ValueError):
        codec.decode_msg(msg + b" ")
    with pytest.raises(ValueError):
        codec.decode_pubreq(request + b" ")
    with pytest.raises(ValueError):
        codec.peek_msg_chan_hash(msg[:20])
    with pytest.raises(ValueError):
        codec.peek_pubreq_target(b"")


@pytest.mark.parametrize("codec", CODECS, ids=["cython", "ref"])
def test_encoding_rejects_bad_channel_lengths_and_out_of_range_fields(codec):
    with pytest.raises(ValueError, match="channel"):
        codec.encode_msg(1, 1, 1, 1, 1, 1, 1, b"", b"{}")
    with pytest.raises(ValueError, match="channel"):
        codec.encode_pubreq(1, 1, 1, 1, 1, b"c" * 256, b"{}")
    with pytest.raises(OverflowError):
        codec.encode_msg(2**32, 1, 1, 1, 1, 1, 1, b"c", b"{}")
    with pytest.raises(OverflowError):
        codec.encode_pubreq(2**16, 1, 1, 1, 1, b"c", b"{}")
    with pytest.raises(ValueError, match="sender"):
        codec.encode_msg(1, 1, 1, 1, 1, 1, 1, b"c", b"{}", b"u" * 256)
    with pytest.raises(ValueError, match="sender"):
        codec.encode_pubreq(1, 1, 1, 1, 1, b"c", b"{}", b"u" * 256)


@pytest.mark.parametrize("codec", CODECS, ids=["cython", "ref"])
def test_a_record_without_sender_is_the_layout_before_senders(codec):
    # The sender length took the place of a reserved zero byte: a record of an older process (or of
    # the API, which has no sender) is the same bytes, and decodes with an empty sender.
    msg = codec.encode_msg(3, 7, 42, 9, 1, 0, 99, b"news", b"{}")
    assert msg[51] == 0 and len(msg) == 52 + 4 + 2
    assert codec.decode_msg(msg).sender == b""
    with_sender = codec.encode_msg(3, 7, 42, 9, 1, 0, 99, b"news", b"{}", b"42")
    assert with_sender[51] == 2 and with_sender[52:] == b"news42{}"
    request = codec.encode_pubreq(1, 2, 3, 4, 5, b"news", b"{}", "zoë".encode())
    assert request[33] == 4 and request[34:] == b"news" + "zoë".encode() + b"{}"


def _decode_outcome(decode, fields, payload: bytes):
    try:
        return fields(decode(payload))
    except ValueError:
        return ValueError


@settings(max_examples=300, deadline=None)
@given(payload=st.binary(max_size=400))
def test_garbage_payloads_are_rejected_or_decoded_identically(payload):
    for decode, encode, fields in (
        ("decode_msg", "encode_msg", msg_fields),
        ("decode_pubreq", "encode_pubreq", pubreq_fields),
    ):
        outcome = _decode_outcome(getattr(record, decode), fields, payload)
        assert outcome == _decode_outcome(getattr(record_ref, decode), fields, payload)
        if outcome is not ValueError:
            # Anything accepted is a well-formed record: it re-encodes to the same bytes.
            assert getattr(record_ref, encode)(*outcome) == payload


@settings(max_examples=200, deadline=None)
@given(fields=st.tuples(u32, u16, u64, u64, u64, u64, u64, channels, datas, senders), data=st.data())
def test_corrupted_lengths_never_decode_out_of_bounds(fields, data):
    payload = bytearray(record.encode_msg(*fields))
    # Overwrite the length fields (data_len u32 at 44, channel_len and sender_len u8 at 50 and 51)
    # with arbitrary values.
    payload[44:48] = data.draw(st.binary(min_size=4, max_size=4))
    payload[50] = data.draw(st.integers(0, 255))
    payload[51] = data.draw(st.integers(0, 255))
    outcome = _decode_outcome(record.decode_msg, msg_fields, bytes(payload))
    assert outcome == _decode_outcome(record_ref.decode_msg, msg_fields, bytes(payload))
    if outcome is not ValueError:
        assert len(outcome[7]) + len(outcome[8]) + len(outcome[9]) == len(payload) - 52


def test_decoded_records_are_read_only():
    msg = record.decode_msg(record.encode_msg(1, 2, 3, 4, 5, 6, 7, b"c", b"1"))
    with pytest.raises(AttributeError):
        msg.off = 9
    ref_msg = record_ref.decode_msg(record_ref.encode_msg(1, 2, 3, 4, 5, 6, 7, b"c", b"1"))
    with pytest.raises(AttributeError):
        ref_msg.off = 9


@pytest.mark.parametrize("codec", CODECS, ids=["cython", "ref"])
def test_publish_time_is_read_without_decoding(codec):
    msg = record.encode_msg(1, 2, 3, 4, 5_000, 6, 7, b"ch", b"d")
    pubreq = record.encode_pubreq(1, 2, 3, 9_000, 7, b"ch", b"d")
    assert codec.peek_ts_ns(record.TAG_MSG, msg) == 5_000
    assert codec.peek_ts_ns(record.TAG_PUBREQ, pubreq) == 9_000
    with pytest.raises(ValueError):
        codec.peek_ts_ns(record.TAG_MSG, msg[:20])
    with pytest.raises(ValueError):
        codec.peek_ts_ns(9, msg)
