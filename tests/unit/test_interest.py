"""The interest map: one byte per bucket, the same layout in Cython and in the reference."""

import pytest

from wsd.ext import interest, interest_ref

IMPLEMENTATIONS = [interest.InterestMap, interest_ref.InterestMap]


@pytest.mark.parametrize("InterestMap", IMPLEMENTATIONS, ids=["cython", "ref"])
def test_mark_test_and_clear(InterestMap):
    buf = bytearray(8 + InterestMap.region_size(1000))
    interests = InterestMap(buf, 8, 1000)
    assert not interests.test(5)
    interests.mark(5, True)
    assert interests.test(5) and interests.test(1005)  # same bucket: a tolerated false positive
    assert not interests.test(6)
    assert buf[8 + 5] == 1 and sum(buf) == 1
    interests.mark(1005, False)
    assert not interests.test(5)
    for h in (1, 2, 2**64 - 1):
        interests.mark(h, True)
    interests.clear_all()
    assert not any(buf)


def test_region_size_keeps_the_next_region_aligned():
    assert interest.InterestMap.region_size() == 65536
    assert interest.InterestMap.region_size(1001) == interest_ref.InterestMap.region_size(1001) == 1008


def test_cython_and_reference_share_the_layout():
    buf = bytearray(65536)
    cython_map = interest.InterestMap(buf, 0)
    ref_map = interest_ref.InterestMap(buf, 0)
    hashes = [3, 70000, 2**64 - 1, 123456789]
    for h in hashes:
        cython_map.mark(h, True)
    assert all(ref_map.test(h) for h in hashes)
    ref_map.mark(3, False)
    assert not cython_map.test(3)


@pytest.mark.parametrize("InterestMap", IMPLEMENTATIONS, ids=["cython", "ref"])
def test_map_that_does_not_fit_is_refused(InterestMap):
    with pytest.raises(ValueError, match="does not fit"):
        InterestMap(bytearray(100), 0, 65536)


@pytest.mark.parametrize("InterestMap", IMPLEMENTATIONS, ids=["cython", "ref"])
def test_any_of_a_batch_of_hashes_is_one_call(InterestMap):
    interests = InterestMap(bytearray(InterestMap.region_size(1000)), 0, 1000)
    assert not interests.test_any(set()) and not interests.test_any({1, 2, 3})
    interests.mark(2002, True)
    assert interests.test_any({1, 2, 3}) and interests.test_any([999, 2])  # 2 shares 2002's bucket
    assert not interests.test_any((1, 3, 2**64 - 1))
