"""The channel hash: SipHash-2-4 keyed with a per-server secret, two independent 64-bit halves, the
same in Cython and in the reference."""

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wsd.ext import hashing, hashing_ref

IMPLEMENTATIONS = [hashing, hashing_ref]
KEY = bytes(range(16))
# SipHash-2-4 reference vectors (Aumasson & Bernstein, vectors.h): key 00..0f, message 00..n-1.
VECTORS = {
    0: 0x726FDB47DD0E0E31,
    1: 0x74F839C593DC67FD,
    2: 0x0D6C8009D9A94F5A,
    3: 0x85676696D7FB7E2D,
    15: 0xA129CA6149BE45E5,  # the example of the paper, appendix A
}


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS, ids=["cython", "ref"])
@pytest.mark.parametrize(("length", "expected"), sorted(VECTORS.items()))
def test_siphash24_matches_the_reference_vectors(implementation, length, expected):
    assert implementation.siphash24(KEY, bytes(range(length))) == expected


@given(key=st.binary(min_size=32, max_size=32), name=st.binary(max_size=300))
def test_cython_hasher_equals_the_reference_and_h1_is_never_zero(key, name):
    h1, h2 = hashing.ChannelHasher(key).hash(name)
    assert (h1, h2) == hashing_ref.ChannelHasher(key).hash(name)
    assert 0 < h1 < 2**64 and 0 <= h2 < 2**64
    assert h1 == (hashing_ref.siphash24(key[:16], name) or 1)
    assert h2 == hashing_ref.siphash24(key[16:], name)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS, ids=["cython", "ref"])
def test_the_hash_depends_on_the_server_secret(implementation):
    one, other = implementation.ChannelHasher(os.urandom(32)), implementation.ChannelHasher(os.urandom(32))
    names = [f"user:{n}".encode() for n in range(100)]
    assert all(one.hash(n) != other.hash(n) for n in names)
    assert len({one.hash(n)[0] for n in names}) == 100
    with pytest.raises(ValueError, match="32 bytes"):
        implementation.ChannelHasher(b"short")
