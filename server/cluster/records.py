"""The bus records of cluster mode (sans-I/O): how the workers of one host agree on who holds each
channel's Redis subscription, and how a lost stretch of a channel is announced.

With `--cluster`, a channel's Redis subscription is held by the worker holding its role on the
host (`h1 % workers`, h1 its keyed hash), which appends every publication Redis sends into its ring as the
channel's MSG. These records travel in the same rings, next to the MSGs (layouts in docs/bus.md):

- INTEREST (tag 16), from any worker to a role: `subscribe` (the worker's first local subscriber
  of the channel arrived: hold the Redis subscription, and answer when it is confirmed and the ring
  is at Redis's position), `resync` (the same for a channel the worker already delivers, after a
  new process took the role: no answer is awaited), `unsubscribe` (its last local subscriber left).
- INTEREST_REPLY (tag 17), from the role's holder to the asking worker: the `subscribe` of `token`
  is done (`error` empty) or failed (`error` says why: Redis unreachable).
- GAP (tag 18), from the role's holder: the channel's messages after the last one in the ring up to
  `offset` of `epoch` cannot be recovered (Redis lost them, or its stream no longer reaches back);
  deliveries continue after `offset`. Every worker sends its subscribers `{"op":"gap",...}`.
- OWNER (tag 19): a process now holds `role` (it started, or took the role over): every worker
  sends `resync` for the channels of that role it delivers, and `subscribe` again for the ones it
  still waits for, so the new holder subscribes them in Redis and catches them up.

Every decoder checks lengths against the payload: a torn or foreign payload raises ValueError.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

TAG_INTEREST = 16
TAG_INTEREST_REPLY = 17
TAG_GAP = 18
TAG_OWNER = 19
CLUSTER_TAGS = frozenset((TAG_INTEREST, TAG_INTEREST_REPLY, TAG_GAP, TAG_OWNER))

SUBSCRIBE, RESYNC, UNSUBSCRIBE = 1, 2, 3
_KINDS = (SUBSCRIBE, RESYNC, UNSUBSCRIBE)
MAX_ERROR_LENGTH = 1000

# INTEREST: token (u64), role, origin slot (u16), kind, channel length (u8), then the channel.
_INTEREST = struct.Struct("<QHHBB")
# INTEREST_REPLY: token (u64), origin slot (u16), error length (u16), then the error (UTF-8).
_REPLY = struct.Struct("<QHH")
# GAP: offset (u64), epoch (u32), channel length (u8), then the channel.
_GAP = struct.Struct("<QIB")
# OWNER: incarnation (u64, random per process), role (u16).
_OWNER = struct.Struct("<QH")


@dataclass(frozen=True, slots=True)
class Interest:
    kind: int
    role: int
    origin: int
    token: int
    channel: bytes


@dataclass(frozen=True, slots=True)
class InterestReply:
    origin: int
    token: int
    error: str  # empty: done


@dataclass(frozen=True, slots=True)
class Gap:
    channel: bytes
    epoch: int
    offset: int


@dataclass(frozen=True, slots=True)
class Owner:
    role: int
    incarnation: int


def _unpack(layout: struct.Struct, payload: bytes, what: str) -> tuple:
    if len(payload) < layout.size:
        raise ValueError(f"malformed {what} record: {len(payload)} bytes, its header alone is {layout.size}")
    return layout.unpack_from(payload)


def _channel(channel: bytes) -> bytes:
    if not 1 <= len(channel) <= 255:
        raise ValueError(f"channel name must be 1..255 bytes, got {len(channel)}")
    return channel


def encode_interest(kind: int, role: int, origin: int, token: int, channel: bytes) -> bytes:
    if kind not in _KINDS:
        raise ValueError(f"unknown interest kind {kind}")
    return _INTEREST.pack(token, role, origin, kind, len(_channel(channel))) + channel


def decode_interest(payload: bytes) -> Interest:
    token, role, origin, kind, length = _unpack(_INTEREST, payload, "INTEREST")
    channel = payload[_INTEREST.size :]
    if kind not in _KINDS or len(channel) != length or not length:
        raise ValueError(f"malformed INTEREST record ({len(payload)} bytes)")
    return Interest(kind, role, origin, token, channel)


def peek_interest_role(payload: bytes) -> int:
    """The role an INTEREST record is addressed to, without decoding the rest."""
    return struct.unpack_from("<H", payload, 8)[0]


def encode_interest_reply(origin: int, token: int, error: str = "") -> bytes:
    text = error.encode()[:MAX_ERROR_LENGTH]
    return _REPLY.pack(token, origin, len(text)) + text


def decode_interest_reply(payload: bytes) -> InterestReply:
    token, origin, length = _unpack(_REPLY, payload, "INTEREST_REPLY")
    text = payload[_REPLY.size :]
    if len(text) != length:
        raise ValueError(f"malformed INTEREST_REPLY record ({len(payload)} bytes)")
    return InterestReply(origin, token, text.decode(errors="replace"))


def peek_reply_origin(payload: bytes) -> int:
    return struct.unpack_from("<H", payload, 8)[0]


def encode_gap(channel: bytes, epoch: int, offset: int) -> bytes:
    return _GAP.pack(offset, epoch, len(_channel(channel))) + channel


def decode_gap(payload: bytes) -> Gap:
    offset, epoch, length = _unpack(_GAP, payload, "GAP")
    channel = payload[_GAP.size :]
    if len(channel) != length or not length:
        raise ValueError(f"malformed GAP record ({len(payload)} bytes)")
    return Gap(channel, epoch, offset)


def encode_owner(role: int, incarnation: int) -> bytes:
    return _OWNER.pack(incarnation, role)


def decode_owner(payload: bytes) -> Owner:
    if len(payload) != _OWNER.size:
        raise ValueError(f"malformed OWNER record ({len(payload)} bytes)")
    incarnation, role = _OWNER.unpack(payload)
    return Owner(role, incarnation)
