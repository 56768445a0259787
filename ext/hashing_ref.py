"""Pure-Python reference of wsd.ext.hashing: the keyed channel hash.

A channel's identity on the bus is two independent 64-bit SipHash-2-4 values of its name under a
per-server secret of 32 bytes (one 16-byte key each): `h1` picks its role, interest bucket and
channel-table probe start and is written in its records; `h2` tells two names with the same `h1`
apart in the channel table, which holds no names. Without the secret nobody can choose names that
collide or pile into one probe run. This module is the specification the Cython module is tested
against; the server imports wsd.ext.hashing.
"""

U64_MASK = 0xFFFFFFFFFFFFFFFF
SECRET_SIZE = 32


def _rotl(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & U64_MASK


def _round(v0: int, v1: int, v2: int, v3: int) -> tuple[int, int, int, int]:
    v0 = (v0 + v1) & U64_MASK
    v1 = _rotl(v1, 13) ^ v0
    v0 = _rotl(v0, 32)
    v2 = (v2 + v3) & U64_MASK
    v3 = _rotl(v3, 16) ^ v2
    v0 = (v0 + v3) & U64_MASK
    v3 = _rotl(v3, 21) ^ v0
    v2 = (v2 + v1) & U64_MASK
    v1 = _rotl(v1, 17) ^ v2
    v2 = _rotl(v2, 32)
    return v0, v1, v2, v3


def siphash24(key: bytes, message: bytes) -> int:
    """SipHash-2-4 of `message` under a 16-byte `key`, as a 64-bit integer."""
    if len(key) != 16:
        raise ValueError(f"a SipHash key is 16 bytes, got {len(key)}")
    k0 = int.from_bytes(key[:8], "little")
    k1 = int.from_bytes(key[8:], "little")
    v0 = k0 ^ 0x736F6D6570736575
    v1 = k1 ^ 0x646F72616E646F6D
    v2 = k0 ^ 0x6C7967656E657261
    v3 = k1 ^ 0x7465646279746573
    length = len(message)
    end = length - length % 8
    for i in range(0, end, 8):
        m = int.from_bytes(message[i : i + 8], "little")
        v3 ^= m
        v0, v1, v2, v3 = _round(v0, v1, v2, v3)
        v0, v1, v2, v3 = _round(v0, v1, v2, v3)
        v0 ^= m
    last = ((length & 0xFF) << 56) | int.from_bytes(message[end:], "little")
    v3 ^= last
    v0, v1, v2, v3 = _round(v0, v1, v2, v3)
    v0, v1, v2, v3 = _round(v0, v1, v2, v3)
    v0 ^= last
    v2 ^= 0xFF
    for _ in range(4):
        v0, v1, v2, v3 = _round(v0, v1, v2, v3)
    return v0 ^ v1 ^ v2 ^ v3


class ChannelHasher:
    """`hash(name) -> (h1, h2)` under one server's 32-byte secret; h1 is never 0 (0 marks an empty
    channel-table entry, so it maps to 1)."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) != SECRET_SIZE:
            raise ValueError(f"the channel hash secret is {SECRET_SIZE} bytes, got {len(secret)}")
        self._key1 = bytes(secret[:16])
        self._key2 = bytes(secret[16:])

    def hash(self, name: bytes) -> tuple[int, int]:
        return siphash24(self._key1, name) or 1, siphash24(self._key2, name)
