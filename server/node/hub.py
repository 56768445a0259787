"""The hub: which local connections subscribe to which channel, and the fan-out of a message to them.

A message is encoded into its WebSocket frame once per worker (wsd.ext.frames.msg_frame). Frames are
queued per channel while a broker delivers a batch and written out when the batch ends (`flush`):
each subscriber gets one write holding all of its channel's new frames, so a burst costs one send()
per connection rather than one per message, and nothing waits for a later loop iteration. A
subscriber whose unsent bytes pass the write-buffer limit is a slow reader: it is reported to
`on_slow` instead of growing our memory.

A subscriber can be *held* while its resume is being answered: live frames for it are kept, with
their offsets, instead of written, so that its replayed history goes out first (`hold`, `release`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from wsd.ext.frames import msg_frame, write_frame_to_all

# The offset a held subscriber's kept `gap` notice carries (no message has it).
GAP_NOTICE = -1


class Hub:
    def __init__(self, write_buffer_limit: int, on_slow: Callable[[Any], None]):
        self.write_buffer_limit = write_buffer_limit
        self.on_slow = on_slow
        # chan_hash -> {raw transport: session}; the keys are what the fan-out writes to.
        self.by_channel: dict[int, dict[Any, Any]] = {}
        # chan_hash -> frames fanned out since the last flush, in offset order.
        self.queued: dict[int, list[bytes]] = {}
        # (chan_hash, transport) -> [(offset, frame)] kept for a held subscriber; chan_hash -> holds.
        self.held: dict[tuple[int, Any], list[tuple[int, bytes]]] = {}
        self.held_channels: dict[int, int] = {}
        self.deliveries = 0

    def add(self, chan_hash: int, transport: Any, session: Any) -> bool:
        """Returns True when this is the channel's first local subscriber."""
        members = self.by_channel.get(chan_hash)
        if members is None:
            self.by_channel[chan_hash] = {transport: session}
            return True
        members[transport] = session
        return False

    def remove(self, chan_hash: int, transport: Any) -> bool:
        """Returns True when the channel has no local subscriber left."""
        self.release(chan_hash, transport)
        members = self.by_channel.get(chan_hash)
        if members is None or members.pop(transport, None) is None:
            return False
        if not members:
            del self.by_channel[chan_hash]
            return True
        return False

    def has_subscribers(self, chan_hash: int) -> bool:
        return chan_hash in self.by_channel

    # -- holding a resuming subscriber --

    def hold(self, chan_hash: int, transport: Any) -> None:
        """Keep live frames for this subscriber instead of writing them, until `release`."""
        key = (chan_hash, transport)
        if key not in self.held:
            self.held[key] = []
            self.held_channels[chan_hash] = self.held_channels.get(chan_hash, 0) + 1

    def release(self, chan_hash: int, transport: Any) -> list[tuple[int, bytes]]:
        """Stop holding; returns the (offset, frame) pairs kept meanwhile, oldest first."""
        kept = self.held.pop((chan_hash, transport), None)
        if kept is None:
            return []
        count = self.held_channels[chan_hash] - 1
        if count:
            self.held_channels[chan_hash] = count
        else:
            del self.held_channels[chan_hash]
        return kept

    # -- fan-out --

    def fan_out(self, chan_hash: int, channel: bytes, offset: int, data: bytes) -> int:
        """Queue one message for the channel's current subscribers; `flush` writes it."""
        members = self.by_channel.get(chan_hash)
        if not members:
            return 0
        frame = msg_frame(channel, offset, data)
        if chan_hash in self.held_channels:
            for (held_hash, _transport), kept in self.held.items():
                if held_hash == chan_hash:
                    kept.append((offset, frame))
        queued = self.queued.get(chan_hash)
        if queued is None:
            self.queued[chan_hash] = [frame]
        else:
            queued.append(frame)
        self.deliveries += len(members)
        return len(members)

    def fan_out_notice(self, chan_hash: int, frame: bytes) -> int:
        """Queue a frame that is not a message (a `gap`) for the channel's subscribers, in order
        with its messages. A held subscriber keeps it with offset GAP_NOTICE: what follows it
        continues after it, whatever the offsets (see Node._answer)."""
        members = self.by_channel.get(chan_hash)
        if not members:
            return 0
        if chan_hash in self.held_channels:
            for (held_hash, _transport), kept in self.held.items():
                if held_hash == chan_hash:
                    kept.append((GAP_NOTICE, frame))
        self.queued.setdefault(chan_hash, []).append(frame)
        return len(members)

    def flush(self) -> None:
        """Write every queued frame: per channel, one write of all its frames to each subscriber.

        Called synchronously at the end of each delivery batch, so the subscribers a frame goes to
        are the ones it was fanned out to (nobody subscribes or unsubscribes during a batch).
        """
        if not self.queued:
            return
        queued, self.queued = self.queued, {}
        for chan_hash, frames in queued.items():
            members = self.by_channel.get(chan_hash)
            if not members:
                continue  # every subscriber was cut off as a slow reader earlier in this flush
            payload = frames[0] if len(frames) == 1 else b"".join(frames)
            targets = list(members)
            if chan_hash in self.held_channels:
                targets = [t for t in targets if (chan_hash, t) not in self.held]
            slow = write_frame_to_all(payload, targets, self.write_buffer_limit)
            for transport in slow:
                session = members.get(transport)
                if session is not None:
                    self.on_slow(session)

    def write_to(self, session: Any, payload: bytes) -> None:
        """Write frames for one subscriber (a replay), under the same write-buffer limit as fan-out."""
        transport = session.raw
        transport.write(payload)
        if transport.get_write_buffer_size() > self.write_buffer_limit:
            self.on_slow(session)

    @property
    def channel_count(self) -> int:
        return len(self.by_channel)
