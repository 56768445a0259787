"""The pub/sub payload codec and the history answer rules (no Redis needed)."""

from __future__ import annotations

import pytest

from wsd.server.cluster.history import answer
from wsd.server.cluster.model import Publication, StreamPosition
from wsd.server.cluster.scripts import decode_payload

E = 77


def test_payload_decodes_every_field_and_keeps_data_verbatim():
    assert decode_payload(b'1:5:12:1700000000123456000::{"a": [1, ":"]}') == (
        5, 12, 1700000000123456000, None, b'{"a": [1, ":"]}')  # fmt: skip
    assert decode_payload(b"1:5:12:9:7:us:er:1[]") == (5, 12, 9, "us:er:1", b"[]")
    assert decode_payload(b"1:5:12:9:0:null") == (5, 12, 9, "", b"null")
    with pytest.raises(ValueError):
        decode_payload(b"2:5:12:9::null")
    with pytest.raises(ValueError):
        decode_payload(b"hello")


def pubs(first: int, last: int, ts: int = 1000) -> list[Publication]:
    return [Publication("c", E, offset, b"%d" % offset, ts) for offset in range(first, last + 1)]


def test_answer_rules():
    stream = pubs(3, 10)
    args = dict(limit=100, upto=None, ttl_ns=0, epoch=E, top=10, now_ns=2000, publications=stream)
    assert answer(None, **args).publications == []
    assert [p.offset for p in answer(StreamPosition(E, 5), **args).publications] == [6, 7, 8, 9, 10]
    assert answer(StreamPosition(E, 10), **args).publications == []
    assert answer(StreamPosition(E + 1, 5), **args).publications is None  # another epoch
    assert answer(StreamPosition(E, 11), **args).publications is None  # ahead of Redis
    assert answer(StreamPosition(E, 1), **args).publications is None  # 2 and 3 trimmed
    assert [p.offset for p in answer(StreamPosition(E, 2), **args).publications] == list(range(3, 11))
    assert answer(StreamPosition(E, 2), **{**args, "limit": 7}).publications is None  # 8 missing > limit 7
    upto = answer(StreamPosition(E, 5), **{**args, "upto": 7})
    assert [p.offset for p in upto.publications] == [6, 7] and upto.offset == 10
    assert answer(StreamPosition(E, 5), **{**args, "upto": 11}).publications is None
    assert answer(StreamPosition(E, 5), **{**args, "ttl_ns": 500}).publications is None  # expired
    assert answer(StreamPosition(E, 5), **{**args, "ttl_ns": 1000}).publications is not None
