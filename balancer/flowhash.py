"""The kernel's flow hash, reproduced bit for bit, so `pick()` can say where nftables sends a flow.

nftables evaluates `jhash ip saddr . tcp sport mod M seed S` as (net/netfilter/nft_hash.c)

    reciprocal_scale(jhash(registers, len, S), M)

where `registers` is the concatenation with every field padded to a 32-bit register (the payload
expression zeroes the padding) and `jhash` is Bob Jenkins' lookup3 from include/linux/jhash.h.
"""

from __future__ import annotations

import ipaddress

JHASH_INITVAL = 0xDEADBEEF
MASK32 = 0xFFFFFFFF


def _rol32(word: int, shift: int) -> int:
    return ((word << shift) | (word >> (32 - shift))) & MASK32


def _jhash_mix(a: int, b: int, c: int) -> tuple[int, int, int]:
    a = (a - c) & MASK32; a ^= _rol32(c, 4); c = (c + b) & MASK32  # noqa: E702
    b = (b - a) & MASK32; b ^= _rol32(a, 6); a = (a + c) & MASK32  # noqa: E702
    c = (c - b) & MASK32; c ^= _rol32(b, 8); b = (b + a) & MASK32  # noqa: E702
    a = (a - c) & MASK32; a ^= _rol32(c, 16); c = (c + b) & MASK32  # noqa: E702
    b = (b - a) & MASK32; b ^= _rol32(a, 19); a = (a + c) & MASK32  # noqa: E702
    c = (c - b) & MASK32; c ^= _rol32(b, 4); b = (b + a) & MASK32  # noqa: E702
    return a, b, c


def _jhash_final(a: int, b: int, c: int) -> int:
    c ^= b; c = (c - _rol32(b, 14)) & MASK32  # noqa: E702
    a ^= c; a = (a - _rol32(c, 11)) & MASK32  # noqa: E702
    b ^= a; b = (b - _rol32(a, 25)) & MASK32  # noqa: E702
    c ^= b; c = (c - _rol32(b, 16)) & MASK32  # noqa: E702
    a ^= c; a = (a - _rol32(c, 4)) & MASK32  # noqa: E702
    b ^= a; b = (b - _rol32(a, 14)) & MASK32  # noqa: E702
    c ^= b; c = (c - _rol32(b, 24)) & MASK32  # noqa: E702
    return c


def jhash(key: bytes, initval: int) -> int:
    """Linux `jhash(key, len(key), initval)`: 32-bit words read little-endian, as on x86 and arm64."""
    length = len(key)
    a = b = c = (JHASH_INITVAL + length + initval) & MASK32
    position = 0
    while length > 12:
        a = (a + int.from_bytes(key[position : position + 4], "little")) & MASK32
        b = (b + int.from_bytes(key[position + 4 : position + 8], "little")) & MASK32
        c = (c + int.from_bytes(key[position + 8 : position + 12], "little")) & MASK32
        a, b, c = _jhash_mix(a, b, c)
        length -= 12
        position += 12
    if length == 0:
        return c
    # The tail: up to 12 bytes, zero-extended, added to a, b, c as little-endian words.
    tail = key[position:] + bytes(12 - length)
    a = (a + int.from_bytes(tail[0:4], "little")) & MASK32
    b = (b + int.from_bytes(tail[4:8], "little")) & MASK32
    c = (c + int.from_bytes(tail[8:12], "little")) & MASK32
    return _jhash_final(a, b, c)


def reciprocal_scale(value: int, modulus: int) -> int:
    """Linux `reciprocal_scale`: maps a 32-bit hash onto [0, modulus) with a multiply, not a `%`."""
    return (value * modulus) >> 32


def source_key(src_ip: str, src_port: int) -> bytes:
    """The register contents nftables hashes for `ip saddr . tcp sport`: 4 address bytes, then the
    port in network order zero-padded to its own 32-bit register."""
    return ipaddress.IPv4Address(src_ip).packed + src_port.to_bytes(2, "big") + b"\x00\x00"


def flow_bucket(src_ip: str, src_port: int, seed: int, buckets: int) -> int:
    """The bucket `jhash ip saddr . tcp sport mod <buckets> seed <seed>` yields for this flow."""
    return reciprocal_scale(jhash(source_key(src_ip, src_port), seed), buckets)


def key_bucket(key: str, seed: int, buckets: int) -> int:
    """The bucket for an application key (an L7 routing key such as a room name)."""
    return reciprocal_scale(jhash(key.encode(), seed), buckets)
