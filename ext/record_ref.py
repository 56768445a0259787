"""Pure-Python reference of wsd.ext.record: the bus record codec (payloads of ring entries).

A MSG is a sequenced message on a channel, written by the channel's owner; a PUBREQ is a publish
request from another slot to that owner. Both carry the publishing client's user id (`sender`,
UTF-8, empty for none). Layouts are in docs/bus.md ("Memory layouts"); decoding
checks every length against the payload, so a torn or foreign payload raises ValueError.
"""

import struct
from dataclasses import dataclass

TAG_MSG = 1
TAG_PUBREQ = 2
NO_SLOT = 0xFFFF
NO_POSITION = 0xFFFFFFFFFFFFFFFF
MAX_CHANNEL_LENGTH = 255
MAX_SENDER_LENGTH = 255

# MSG: off, prev_pos, ts_ns, token, chan_hash (u64), epoch, data_len (u32), origin_slot (u16),
# channel_len (u8), sender_len (u8), then channel bytes, sender bytes and data bytes.
MSG_HEADER = struct.Struct("<QQQQQIIHBB")
# PUBREQ: token, ts_ns, chan_hash (u64), data_len (u32), target_slot, origin_slot (u16),
# channel_len (u8), sender_len (u8), then channel bytes, sender bytes and data bytes.
PUBREQ_HEADER = struct.Struct("<QQQIHHBB")
MSG_HEADER_SIZE = MSG_HEADER.size  # 52
PUBREQ_HEADER_SIZE = PUBREQ_HEADER.size  # 34
MSG_CHAN_HASH_OFFSET = 32
PUBREQ_TARGET_OFFSET = 28

_U16_MAX = 0xFFFF
_U32_MAX = 0xFFFFFFFF
_U64_MAX = 0xFFFFFFFFFFFFFFFF


@dataclass(frozen=True, slots=True)
class Msg:
    epoch: int
    origin_slot: int
    off: int
    prev_pos: int
    ts_ns: int
    token: int
    chan_hash: int
    channel: bytes
    data: bytes
    sender: bytes = b""


@dataclass(frozen=True, slots=True)
class PubReq:
    target_slot: int
    origin_slot: int
    token: int
    ts_ns: int
    chan_hash: int
    channel: bytes
    data: bytes
    sender: bytes = b""


def _check_range(name: str, value: int, maximum: int) -> None:
    if not 0 <= value <= maximum:
        raise OverflowError(f"record field {name}={value} is out of range 0..{maximum}")


def _check_channel(channel: bytes) -> None:
    if not 1 <= len(channel) <= MAX_CHANNEL_LENGTH:
        raise ValueError(f"channel name must be 1..{MAX_CHANNEL_LENGTH} bytes, got {len(channel)}")


def _check_sender(sender: bytes) -> None:
    if len(sender) > MAX_SENDER_LENGTH:
        raise ValueError(f"sender must be at most {MAX_SENDER_LENGTH} bytes, got {len(sender)}")


def encode_msg(
    epoch: int,
    origin_slot: int,
    off: int,
    prev_pos: int,
    ts_ns: int,
    token: int,
    chan_hash: int,
    channel: bytes,
    data: bytes,
    sender: bytes = b"",
) -> bytes:
    """The payload of a MSG ring entry."""
    _check_channel(channel)
    _check_sender(sender)
    _check_range("epoch", epoch, _U32_MAX)
    _check_range("origin_slot", origin_slot, _U16_MAX)
    for name, value in (("off", off), ("prev_pos", prev_pos), ("ts_ns", ts_ns), ("token", token),
                        ("chan_hash", chan_hash)):
        _check_range(name, value, _U64_MAX)
    _check_range("len(data)", len(data), _U32_MAX)
    header = MSG_HEADER.pack(off, prev_pos, ts_ns, token, chan_hash, epoch, len(data), origin_slot,
                             len(channel), len(sender))
    return header + channel + sender + data


def _split_body(kind: str, payload: bytes, header_size: int, channel_len: int, data_len: int,
                sender_len: int) -> tuple[bytes, bytes, bytes]:
    if channel_len == 0:
        raise ValueError(f"malformed {kind} record: empty channel name")
    expected = header_size + channel_len + sender_len + data_len
    if len(payload) != expected:
        raise ValueError(
            f"malformed {kind} record: {len(payload)} bytes, the header announces {expected} "
            "(truncated or not a record)"
        )
    sender_start = header_size + channel_len
    channel = bytes(payload[header_size:sender_start])
    sender = bytes(payload[sender_start : sender_start + sender_len])
    data = bytes(payload[sender_start + sender_len :])
    return channel, sender, data


def decode_msg(payload: bytes) -> Msg:
    """Decode a MSG payload; ValueError if it is truncated or malformed."""
    if len(payload) < MSG_HEADER.size:
        raise ValueError(f"malformed MSG record: {len(payload)} bytes, shorter than its header")
    (off, prev_pos, ts_ns, token, chan_hash, epoch, data_len, origin_slot, channel_len,
     sender_len) = MSG_HEADER.unpack_from(payload)
    channel, sender, data = _split_body("MSG", payload, MSG_HEADER.size, channel_len, data_len, sender_len)
    return Msg(epoch, origin_slot, off, prev_pos, ts_ns, token, chan_hash, channel, data, sender)


def encode_pubreq(
    target_slot: int,
    origin_slot: int,
    token: int,
    ts_ns: int,
    chan_hash: int,
    channel: bytes,
    data: bytes,
    sender: bytes = b"",
) -> bytes:
    """The payload of a PUBREQ ring entry."""
    _check_channel(channel)
    _check_sender(sender)
    _check_range("target_slot", target_slot, _U16_MAX)
    _check_range("origin_slot", origin_slot, _U16_MAX)
    for name, value in (("token", token), ("ts_ns", ts_ns), ("chan_hash", chan_hash)):
        _check_range(name, value, _U64_MAX)
    _check_range("len(data)", len(data), _U32_MAX)
    header = PUBREQ_HEADER.pack(token, ts_ns, chan_hash, len(data), target_slot, origin_slot,
                                len(channel), len(sender))
    return header + channel + sender + data


def decode_pubreq(payload: bytes) -> PubReq:
    """Decode a PUBREQ payload; ValueError if it is truncated or malformed."""
    if len(payload) < PUBREQ_HEADER.size:
        raise ValueError(f"malformed PUBREQ record: {len(payload)} bytes, shorter than its header")
    (token, ts_ns, chan_hash, data_len, target_slot, origin_slot, channel_len,
     sender_len) = PUBREQ_HEADER.unpack_from(payload)
    channel, sender, data = _split_body("PUBREQ", payload, PUBREQ_HEADER.size, channel_len, data_len, sender_len)
    return PubReq(target_slot, origin_slot, token, ts_ns, chan_hash, channel, data, sender)


def peek_msg_chan_hash(payload: bytes) -> int:
    """chan_hash of a MSG payload without decoding it (ValueError if shorter than the header)."""
    if len(payload) < MSG_HEADER.size:
        raise ValueError(f"malformed MSG record: {len(payload)} bytes, shorter than its header")
    return int.from_bytes(payload[MSG_CHAN_HASH_OFFSET : MSG_CHAN_HASH_OFFSET + 8], "little")


def peek_pubreq_target(payload: bytes) -> int:
    """target_slot of a PUBREQ payload without decoding it (ValueError if shorter than the header)."""
    if len(payload) < PUBREQ_HEADER.size:
        raise ValueError(f"malformed PUBREQ record: {len(payload)} bytes, shorter than its header")
    return int.from_bytes(payload[PUBREQ_TARGET_OFFSET : PUBREQ_TARGET_OFFSET + 2], "little")


def peek_ts_ns(tag: int, payload: bytes) -> int:
    """Publish time of a MSG or PUBREQ payload without decoding it (ValueError for another tag, or
    a payload shorter than its header)."""
    if tag == TAG_MSG and len(payload) >= MSG_HEADER.size:
        return int.from_bytes(payload[16:24], "little")
    if tag == TAG_PUBREQ and len(payload) >= PUBREQ_HEADER.size:
        return int.from_bytes(payload[8:16], "little")
    raise ValueError(f"no publish time in a {len(payload)}-byte payload of tag {tag}")
