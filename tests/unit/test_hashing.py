"""The channel hash: 64-bit FNV-1a, the same in Cython and in the reference."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wsd.ext import hashing, hashing_ref

# Published FNV-1a 64-bit test vectors (Fowler/Noll/Vo reference test suite).
KNOWN_VECTORS = [
    (b"", 0xCBF29CE484222325),
    (b"a", 0xAF63DC4C8601EC8C),
    (b"b", 0xAF63DF4C8601F1A5),
    (b"foobar", 0x85944171F73967E8),
    (b"chongo was here!\n", 0x46810940EFF5F915),
]


@pytest.mark.parametrize("implementation", [hashing, hashing_ref], ids=["cython", "ref"])
@pytest.mark.parametrize(("name", "expected"), KNOWN_VECTORS)
def test_channel_hash_matches_published_fnv1a_vectors(implementation, name, expected):
    assert implementation.channel_hash(name) == expected


@given(st.binary(max_size=300))
def test_cython_hash_equals_reference_and_is_never_zero(name):
    value = hashing.channel_hash(name)
    assert value == hashing_ref.channel_hash(name)
    assert 0 < value < 2**64
