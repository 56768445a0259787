"""The hub: frames fanned out during a bus poll reach each subscriber in one write, in order."""

from __future__ import annotations

from wsd.ext.frames import msg_frame
from wsd.server.node.hub import Hub


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
