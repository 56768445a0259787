"""The hub: frames fanned out during a bus poll reach each subscriber in one write, in order."""

from __future__ import annotations

from wsd.ext.frames import msg_frame
from wsd.server.node.hub import Hub
from wsd.server.stats import SENT_BYTES


class RecordingTransport:
    """Stands in for a picows raw transport: records writes, reports a chosen buffer size."""

    def __init__(self, buffered: int = 0) -> None:
        self.writes: list[bytes] = []
        self.buffered = buffered

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def get_write_buffer_size(self) -> int:
        return self.buffered


def test_a_poll_worth_of_messages_is_one_write_per_subscriber_in_offset_order() -> None:
    index = Hub(write_buffer_limit=1 << 20, on_slow=lambda session: None)
    first, second = RecordingTransport(), RecordingTransport()
    index.add(7, first, "session 1")
    index.add(7, second, "session 2")
    for offset in (1, 2, 3):
        assert index.fan_out(7, b"news", offset, b'{"n":%d}' % offset) == 2
    assert first.writes == [] and second.writes == []  # nothing is written before the poll ends
    index.flush()
    expected = b"".join(msg_frame(b"news", offset, b'{"n":%d}' % offset) for offset in (1, 2, 3))
    assert first.writes == [expected] and second.writes == [expected]
    assert index.deliveries == 6
    index.flush()  # nothing queued: nothing written again
    assert len(first.writes) == 1


def test_each_channel_is_written_separately_and_only_to_its_subscribers() -> None:
    index = Hub(write_buffer_limit=1 << 20, on_slow=lambda session: None)
    both, only_a = RecordingTransport(), RecordingTransport()
    index.add(1, both, "both")
    index.add(2, both, "both")
    index.add(1, only_a, "only a")
    index.fan_out(1, b"a", 5, b"1")
    index.fan_out(2, b"b", 9, b"2")
    index.flush()
    assert both.writes == [msg_frame(b"a", 5, b"1"), msg_frame(b"b", 9, b"2")]
    assert only_a.writes == [msg_frame(b"a", 5, b"1")]


def test_a_subscriber_over_the_write_buffer_limit_is_reported_slow_once_per_channel_write() -> None:
    slow: list[str] = []
    index = Hub(write_buffer_limit=100, on_slow=slow.append)
    index.add(3, RecordingTransport(buffered=101), "slow reader")
    index.add(3, RecordingTransport(buffered=100), "keeps up")
    index.fan_out(3, b"c", 1, b"0")
    index.fan_out(3, b"c", 2, b"0")
    index.flush()
    assert slow == ["slow reader"]


# -- permessage-deflate: one compressed frame per message per window size --


def test_compressing_subscribers_get_one_compressed_frame_per_message_and_others_plain(monkeypatch):
    import zlib

    from wsd.server.node import hub as hub_module

    calls = []
    real = hub_module.compressed_frame_or_none
    monkeypatch.setattr(hub_module, "compressed_frame_or_none", lambda *a: calls.append(a[1]) or real(*a))
    index = Hub(write_buffer_limit=1 << 20, on_slow=lambda session: None, compression_threshold=256)
    plain, deflating, also_deflating, small_window = (RecordingTransport() for _ in range(4))
    index.add(b"feed", plain, "plain")
    index.add(b"feed", deflating, "deflate", 15)
    index.add(b"feed", also_deflating, "deflate too", 15)
    index.add(b"feed", small_window, "9 bits", 9)
    big = b'{"kind":"like","post":12345,"from":{"id":7,"name":"alice"}}' * 20
    index.fan_out(b"feed", b"feed", 1, big)
    index.fan_out(b"feed", b"feed", 2, b'{"small":true}')  # under the threshold: plain everywhere
    index.flush()
    assert sorted(calls) == [9, 9, 15, 15]  # once per message per window size, not per subscriber
    expected_plain = msg_frame(b"feed", 1, big) + msg_frame(b"feed", 2, b'{"small":true}')
    assert plain.writes == [expected_plain]
    assert deflating.writes == also_deflating.writes
    (written,) = deflating.writes
    assert written[0] == 0xC1 and len(written) < len(expected_plain) // 3
    length = int.from_bytes(written[2:4], "big") if written[1] & 0x7F == 126 else written[1] & 0x7F
    start = 4 if written[1] & 0x7F == 126 else 2
    inflated = zlib.decompressobj(-15).decompress(written[start : start + length] + b"\x00\x00\xff\xff")
    assert inflated == msg_frame(b"feed", 1, big)[4:]
    assert written[start + length :] == msg_frame(b"feed", 2, b'{"small":true}')
    assert small_window.writes[0][0] == 0xC1
    # Bytes counted as written: each subscriber's own.
    assert index.counts[SENT_BYTES] == sum(len(t.writes[0]) for t in (plain, deflating, also_deflating, small_window))


def test_a_compressing_subscriber_that_leaves_gets_nothing_more():
    index = Hub(write_buffer_limit=1 << 20, on_slow=lambda session: None)
    deflating, plain = RecordingTransport(), RecordingTransport()
    index.add(b"c", deflating, "d", 15)
    index.add(b"c", plain, "p")
    assert index.remove(b"c", deflating) is False
    assert index.compressing == {}
    index.fan_out(b"c", b"c", 1, b"x" * 1000)
    index.flush()
    assert deflating.writes == [] and plain.writes == [msg_frame(b"c", 1, b"x" * 1000)]
    assert index.remove(b"c", plain) is True
