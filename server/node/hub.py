"""The hub: which local connections subscribe to which channel, and the fan-out of a message to them.

A message is encoded into its WebSocket frame once per worker (wsd.ext.frames.msg_frame). Frames are
queued per channel while a broker delivers a batch and written out when the batch ends (`flush`):
each subscriber gets one write holding all of its channel's new frames, so a burst costs one send()
per connection rather than one per message, and nothing waits for a later loop iteration. A
subscriber whose unsent bytes pass the write-buffer limit is a slow reader: it is reported to
`on_slow` instead of growing our memory.

The hub counts what it does into the worker's counters (wsd.server.stats): deliveries (one per
message per subscriber, added once per message), bytes written (once per channel per flush) and
the publish-to-delivery latency (once per message, measured when its batch has been written).

A subscriber can be *held* while its resume is being answered: live frames for it are kept, with
their offsets, instead of written, so that its replayed history goes out first (`hold`, `release`).

Subscribers that negotiated permessage-deflate (wsd.server.permessage_deflate) are also kept by the
window size they allow (`compressing`): a message is compressed once per window size in use (in
practice once: browsers allow the full window) and that frame is written to each of them; the
others get the plain frame. Messages under `compression_threshold` bytes, gap notices, and what a
held or resuming subscriber is sent go out plain: RSV1 is per message, so plain frames stay legal.
A channel without such a subscriber costs one dict look-up more per message.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable
from typing import Any

from wsd.ext.frames import msg_frame, write_frame_to_all
from wsd.server.permessage_deflate import compressed_frame_or_none
from wsd.server.stats import DELIVERIES, LATENCY_BOUNDS_NS, LATENCY_FIRST, LATENCY_SUM, SENT_BYTES, WorkerCounters

# The offset a held subscriber's kept `gap` notice carries (no message has it).
GAP_NOTICE = -1


class Hub:
    def __init__(
        self,
        write_buffer_limit: int,
        on_slow: Callable[[Any], None],
        counts: list[int] | None = None,
        compression_threshold: int = 0,
    ):
        self.write_buffer_limit = write_buffer_limit
        self.on_slow = on_slow
        # A channel_key is the channel's name (bytes, from the node), never a hash: two channels
        # may share a hash.
        # channel_key -> {raw transport: session}; the transports are what the fan-out writes to.
        self.by_channel: dict[bytes, dict[Any, Any]] = {}
        # channel_key -> frames fanned out since the last flush, in offset order.
        self.queued: dict[bytes, list[bytes]] = {}
        # (channel_key, transport) -> [(offset, frame)] kept for a held subscriber; channel_key -> holds.
        self.held: dict[tuple[bytes, Any], list[tuple[int, bytes]]] = {}
        self.held_channels: dict[bytes, int] = {}
        self.counts = WorkerCounters().counts if counts is None else counts
        # (publish time in ns, subscribers) of each message fanned out since the last flush.
        self._published: list[tuple[int, int]] = []
        # channel_key -> window bits -> {transport: None}: the channel's subscribers that take
        # compressed frames (a subset of by_channel), by the LZ77 window they allow.
        self.compressing: dict[bytes, dict[int, dict[Any, None]]] = {}
        # channel_key -> window bits -> frames since the last flush (compressed, or plain ones).
        self.queued_compressed: dict[bytes, dict[int, list[bytes]]] = {}
        self.compression_threshold = compression_threshold

    def add(self, channel_key: bytes, transport: Any, session: Any, window_bits: int = 0) -> bool:
        """Returns True when this is the channel's first local subscriber. `window_bits`: the
        subscriber negotiated permessage-deflate and takes frames compressed with that window."""
        if window_bits:
            self.compressing.setdefault(channel_key, {}).setdefault(window_bits, {})[transport] = None
        members = self.by_channel.get(channel_key)
        if members is None:
            self.by_channel[channel_key] = {transport: session}
            return True
        members[transport] = session
        return False

    def remove(self, channel_key: bytes, transport: Any) -> bool:
        """Returns True when the channel has no local subscriber left."""
        self.release(channel_key, transport)
        groups = self.compressing.get(channel_key)
        if groups is not None:
            self._stop_compressing(channel_key, groups, transport)
        members = self.by_channel.get(channel_key)
        if members is None or members.pop(transport, None) is None:
            return False
        if not members:
            del self.by_channel[channel_key]
            return True
        return False

    def _stop_compressing(self, channel_key: bytes, groups: dict[int, dict[Any, None]], transport: Any) -> None:
        for bits, group in groups.items():
            if group.pop(transport, 0) is None:
                if not group:
                    del groups[bits]
                    if not groups:
                        del self.compressing[channel_key]
                return

    def has_subscribers(self, channel_key: bytes) -> bool:
        return channel_key in self.by_channel

    # -- holding a resuming subscriber --

    def hold(self, channel_key: bytes, transport: Any) -> None:
        """Keep live frames for this subscriber instead of writing them, until `release`."""
        key = (channel_key, transport)
        if key not in self.held:
            self.held[key] = []
            self.held_channels[channel_key] = self.held_channels.get(channel_key, 0) + 1

    def release(self, channel_key: bytes, transport: Any) -> list[tuple[int, bytes]]:
        """Stop holding; returns the (offset, frame) pairs kept meanwhile, oldest first."""
        kept = self.held.pop((channel_key, transport), None)
        if kept is None:
            return []
        count = self.held_channels[channel_key] - 1
        if count:
            self.held_channels[channel_key] = count
        else:
            del self.held_channels[channel_key]
        return kept

    # -- fan-out --

    def fan_out(
        self, channel_key: bytes, channel: bytes, offset: int, data: bytes, from_json: bytes = b"", ts_ns: int = 0
    ) -> int:
        """Queue one message for the channel's current subscribers (`from_json`: the publishing
        user's id as JSON, b"" for none); `flush` writes it. `ts_ns` is its publish time
        (time.time_ns(); 0: unknown), for the latency histogram."""
        members = self.by_channel.get(channel_key)
        if not members:
            return 0
        frame = msg_frame(channel, offset, data, from_json)
        if channel_key in self.held_channels:
            for (held_key, _transport), kept in self.held.items():
                if held_key == channel_key:
                    kept.append((offset, frame))
        queued = self.queued.get(channel_key)
        if queued is None:
            self.queued[channel_key] = [frame]
        else:
            queued.append(frame)
        groups = self.compressing.get(channel_key)
        if groups is not None:
            self._queue_compressed(channel_key, groups, frame)
        count = len(members)
        self.counts[DELIVERIES] += count
        if ts_ns:
            self._published.append((ts_ns, count))
        return count

    def _queue_compressed(self, channel_key: bytes, groups: dict[int, dict[Any, None]], frame: bytes) -> None:
        """Compress the message once per window size its compressing subscribers use."""
        queues = self.queued_compressed.get(channel_key)
        if queues is None:
            queues = self.queued_compressed[channel_key] = {}
        for bits in groups:
            compressed = compressed_frame_or_none(frame, bits, self.compression_threshold)
            queues.setdefault(bits, []).append(frame if compressed is None else compressed)

    @property
    def deliveries(self) -> int:
        return self.counts[DELIVERIES]

    def fan_out_notice(self, channel_key: bytes, frame: bytes) -> int:
        """Queue a frame that is not a message (a `gap`) for the channel's subscribers, in order
        with its messages. A held subscriber keeps it with offset GAP_NOTICE: what follows it
        continues after it, whatever the offsets (see Node._answer)."""
        members = self.by_channel.get(channel_key)
        if not members:
            return 0
        if channel_key in self.held_channels:
            for (held_key, _transport), kept in self.held.items():
                if held_key == channel_key:
                    kept.append((GAP_NOTICE, frame))
        self.queued.setdefault(channel_key, []).append(frame)
        groups = self.compressing.get(channel_key)
        if groups is not None:
            queues = self.queued_compressed.setdefault(channel_key, {})
            for bits in groups:
                queues.setdefault(bits, []).append(frame)
        return len(members)

    def flush(self) -> None:
        """Write every queued frame: per channel, one write of all its frames to each subscriber.

        Called synchronously at the end of each delivery batch, so the subscribers a frame goes to
        are the ones it was fanned out to (nobody subscribes or unsubscribes during a batch).
        """
        if not self.queued:
            return
        queued, self.queued = self.queued, {}
        compressed = self.queued_compressed
        if compressed:
            self.queued_compressed = {}
        sent = 0
        for channel_key, frames in queued.items():
            members = self.by_channel.get(channel_key)
            if not members:
                continue  # every subscriber was cut off as a slow reader earlier in this flush
            payload = frames[0] if len(frames) == 1 else b"".join(frames)
            targets: Any = members
            groups = self.compressing.get(channel_key) if compressed else None
            if groups is not None:
                sent += self._write_compressed(channel_key, members, groups, compressed.get(channel_key, {}), payload)
                if sum(len(group) for group in groups.values()) == len(members):
                    continue  # every subscriber takes compressed frames (browsers: the usual case)
                targets = members.keys()
                for group in groups.values():
                    targets = targets - group.keys()
            sent += self._write(channel_key, members, payload, targets)
        counts = self.counts
        counts[SENT_BYTES] += sent
        if self._published:
            self._count_latency(counts)

    def _write(self, channel_key: bytes, members: dict[Any, Any], payload: bytes, targets: Any) -> int:
        """Write `payload` to `targets` (members of the channel) but held ones; the bytes sent."""
        targets = list(targets)
        if channel_key in self.held_channels:
            targets = [t for t in targets if (channel_key, t) not in self.held]
        slow = write_frame_to_all(payload, targets, self.write_buffer_limit)
        for transport in slow:
            session = members.get(transport)
            if session is not None:
                self.on_slow(session)
        return len(payload) * len(targets)

    def _write_compressed(
        self, channel_key: bytes, members: dict[Any, Any], groups: dict[int, dict[Any, None]],
        queues: dict[int, list[bytes]], plain: bytes,
    ) -> int:  # fmt: skip
        """Write each window size's frames to its group (the plain ones if it has none); the bytes sent."""
        sent = 0
        for bits, group in list(groups.items()):
            frames = queues.get(bits)
            payload = plain if not frames else frames[0] if len(frames) == 1 else b"".join(frames)
            sent += self._write(channel_key, members, payload, group)
        return sent

    def _count_latency(self, counts: list[int]) -> None:
        """Each message of the batch just written, in the histogram: now less its publish time,
        once per subscriber it went to."""
        published, self._published = self._published, []
        now = time.time_ns()
        total = 0
        for ts_ns, subscribers in published:
            latency = now - ts_ns
            if latency < 0:  # another process's clock a little ahead
                latency = 0
            counts[LATENCY_FIRST + bisect_left(LATENCY_BOUNDS_NS, latency)] += subscribers
            total += latency * subscribers
        counts[LATENCY_SUM] += total

    def write_to(self, session: Any, payload: bytes) -> None:
        """Write frames for one subscriber (a replay), under the same write-buffer limit as fan-out."""
        transport = session.raw
        transport.write(payload)
        self.counts[SENT_BYTES] += len(payload)
        if transport.get_write_buffer_size() > self.write_buffer_limit:
            self.on_slow(session)

    @property
    def channel_count(self) -> int:
        return len(self.by_channel)
